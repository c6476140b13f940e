"""``kaiflow plan`` checks tuning dataset URLs before anything is provisioned: a 404 or an HTML page is an
error, a URL it cannot reach from here a warning (issue 15). Against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import datasets
from tests.support.fileserver import FileServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (tmp_path / "blob.html").write_text("<!DOCTYPE html><html><body>Sign in to see this file</body></html>")
    (tmp_path / "page").write_text("  <html><head></head></html>")  # no .html: the bytes give it away
    with FileServer(tmp_path) as srv:
        yield srv


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_data_file_passes(served):
    assert datasets.probe(served.url_for("qa.jsonl"), allow_private=True) is None


def test_a_404_is_an_error(served):
    level, message = datasets.probe(served.url_for("missing.jsonl"), allow_private=True)
    assert level == "error" and "answers 404" in message


@pytest.mark.parametrize("name", ["blob.html", "page"])
def test_an_html_page_is_an_error(served, name):
    level, message = datasets.probe(served.url_for(name), allow_private=True)
    assert level == "error" and "HTML page" in message


def test_an_unreachable_url_is_a_warning():
    level, message = datasets.probe(f"http://127.0.0.1:{_closed_port()}/qa.jsonl", allow_private=True)
    assert level == "warning" and "not reachable" in message


def test_a_host_that_resolves_to_loopback_is_an_error():
    level, message = datasets.probe("http://localhost:9/qa.jsonl", allow_private=False)
    assert level == "error" and "loopback" in message


def test_hf_datasets_are_not_probed():
    assert datasets.probe("hf://datasets/org/name", allow_private=False) is None


def test_plan_says_it_before_provisioning(served, tmp_path):
    ws = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "probe"},
          "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": "probe"}}},
          "tuning": {"preset": {"name": "phi-3-mini-4k-instruct"}, "method": "qlora",
                     "input": {"urls": [served.url_for("qa.jsonl"), served.url_for("gone.jsonl"), served.url_for("blob.html"),
                                        f"http://127.0.0.1:{_closed_port()}/x.jsonl"]},
                     "output": {"image": "myacr.azurecr.io/adapters/probe:1"}}}
    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(ws))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KAIFLOW_ALLOW_PRIVATE_URLS": "true"}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "-f", str(f)], capture_output=True, text=True,
                       cwd=REPO, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["error", "error", "warning"], r.stderr
    assert "gone.jsonl answers 404" in lines[0] and "blob.html answers an HTML page" in lines[1]
    assert "fits" in r.stdout  # the plan itself is still printed

    ws["tuning"]["input"]["urls"] = [served.url_for("qa.jsonl")]
    f.write_text(yaml.safe_dump(ws))
    r = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "-f", str(f)], capture_output=True, text=True,
                       cwd=REPO, timeout=120, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
