"""``make demo`` itself, then ``kaiflow chat`` / ``kaiflow logs`` on what it left running, then the
local platform's "no gap" claim: a replacement server that never becomes healthy leaves the old
one serving.

The demo is what the Makefile runs after its set-up, ``python -m flows.demo``, as a child process
with its own KAIFLOW_HOME. Two differences from a user's run, to keep it near two minutes on a
loaded 2-core machine: it uses the session's Prefect server (PREFECT_API_URL, which kaiflow honours
instead of starting its own; starting one is tests/e2e/test_local_flow.py's), and the transformers
engine (KAIFLOW_ENGINE): with ``auto`` the CPU build of vLLM serves tiny-phi-3, and its start alone
took three minutes here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
NAME = "tiny-tune-and-serve"  # examples/local/tune-and-serve.yaml


@pytest.fixture(scope="module")
def demo(prefect_api, tmp_path_factory):
    home = tmp_path_factory.mktemp("demo") / "home"
    env = {**os.environ, "KAIFLOW_HOME": str(home), "PREFECT_API_URL": prefect_api, "KAIFLOW_ENGINE": "transformers"}
    proc = subprocess.run([sys.executable, "-m", "flows.demo"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    yield {"env": env, "home": home, "proc": proc}
    subprocess.run([KAIFLOW, "delete", "workspace", NAME], env=env, capture_output=True, text=True, timeout=120)


def kaiflow(demo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KAIFLOW, *args], env=demo["env"], cwd=REPO, capture_output=True, text=True, timeout=600)


def record(demo) -> dict:
    return json.loads((demo["home"] / "workspaces" / NAME / "record.json").read_text())


def test_make_demo_runs_and_the_endpoint_answers_as_taught(demo):
    proc = demo["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "6/6 answers as taught." in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("NAME"))
    assert header.split() == ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]


def test_kaiflow_chat_asks_the_endpoint(demo):
    r = kaiflow(demo, "chat", NAME, "What is the capital of France?")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "Paris."


def test_kaiflow_logs_prints_the_server_and_the_tuning_logs(demo):
    server = kaiflow(demo, "logs", NAME)
    assert server.returncode == 0, server.stderr
    assert server.stdout == (demo["home"] / "workspaces" / NAME / "server.log").read_text(errors="replace")
    assert server.stdout.strip(), "the server wrote nothing to its log"
    tuning = kaiflow(demo, "logs", NAME, "--tuning")
    assert tuning.returncode == 0, tuning.stderr
    assert "40/40" in tuning.stdout  # the tuning program's progress, to its last step
    tail = kaiflow(demo, "logs", NAME, "--tuning", "--tail", "1")
    assert tail.returncode == 0 and tail.stdout == tuning.stdout.splitlines(keepends=True)[-1]


REPLACEMENT = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-serving}}
data:
  inference_config.yaml: |
    max_probe_steps: 5
---
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {{name: {name}}}
resource: {{instanceType: local}}
inference:
  preset: {{name: tiny-phi-3}}
  config: {name}-serving
  adapters:
    - source: {{name: {name}, image: "adapters/{name}:0.1"}}
"""


def test_a_replacement_that_never_gets_healthy_leaves_the_old_server_serving(demo, tmp_path):
    """The local platform keeps the old server until the new one is healthy ("no gap"). A changed
    inference config needs a new server; this one gets one second to be healthy, which no server
    start makes. Stopping the old server before the new one is healthy fails this test."""
    before = record(demo)
    old_pid, endpoint = before["server"]["pid"], before["endpoint"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(REPLACEMENT.format(name=NAME))
    r = subprocess.run([KAIFLOW, "apply", "-f", str(changed)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**demo["env"], "KAIFLOW_HEALTH_TIMEOUT_S": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "did not become healthy" in r.stderr and "Traceback" not in r.stderr, r.stderr
    after = record(demo)
    assert after["server"]["pid"] == old_pid and after["endpoint"] == endpoint
    assert psutil.pid_exists(old_pid) and psutil.Process(old_pid).status() != psutil.STATUS_ZOMBIE
    assert httpx.get(f"{endpoint}/health", timeout=30).status_code == 200
    chat = kaiflow(demo, "chat", NAME, "What is the capital of France?")
    assert chat.returncode == 0 and chat.stdout.strip() == "Paris.", chat.stdout + chat.stderr
