"""`kaiflow get` / `describe` / `logs` as a kubectl user types them (issue 24 items 8 and 9): the real
entry point in a subprocess, over a workspace record and log files in a temporary KAIFLOW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import records

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def home(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    env = {**os.environ, "KAIFLOW_HOME": str(tmp_path / "home")}
    for name, port in (("alpha", 41001), ("beta", 41002)):
        records.update(name, platform="local", instance="local", endpoint=f"http://127.0.0.1:{port}", created="2026-12-01T00:00:00Z",
                       server={"endpoint": f"http://127.0.0.1:{port}", "model": "tiny-phi-3", "adapters": [
                           {"name": name, "digest": DIGEST, "strength": 1.0, "image": f"adapters/{name}:1@{DIGEST}"}]})
    log = records.workspace_dir("alpha") / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 11)))
    return {"env": env, "log": log}


def kaiflow(home: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KAIFLOW, *args], env=home["env"], capture_output=True, text=True, timeout=60)


def test_get_workspace_name_and_wide_output_with_the_endpoint(home):
    one = kaiflow(home, "get", "workspace", "alpha")
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].split() == ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["alpha"]
    wide = kaiflow(home, "get", "workspaces", "-o", "wide")
    assert wide.stdout.splitlines()[0].split()[-2:] == ["ENDPOINT", "RESTARTS"]
    assert "http://127.0.0.1:41002" in wide.stdout.splitlines()[2]
    missing = kaiflow(home, "get", "workspace", "gamma")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: workspace 'gamma' not found; known: alpha, beta"


def test_describe_says_an_adapters_digest_once(home):
    out = kaiflow(home, "describe", "workspace", "alpha")
    assert out.returncode == 0, out.stderr
    [line] = [x for x in out.stdout.splitlines() if x.startswith("Adapter:")]
    assert line.count(DIGEST) == 1 and "adapters/alpha:1@" in line and "strength 1.0" in line


def test_debug_is_accepted_after_the_subcommand(home):
    out = kaiflow(home, "describe", "workspace", "nope", "--debug")
    assert out.returncode == 1 and "Traceback" in out.stderr and "KaiflowError: workspace 'nope' not found" in out.stderr
    plain = kaiflow(home, "describe", "workspace", "nope")
    assert "Traceback" not in plain.stderr and plain.stderr.startswith("error: workspace 'nope' not found")


@pytest.mark.timeout(120)  # a `-f` that never prints would block readline: fail instead of hanging
def test_logs_tail_and_follow(home):
    tail = kaiflow(home, "logs", "alpha", "--tail", "3")
    assert tail.returncode == 0 and tail.stdout == "line 8\nline 9\nline 10\n"
    proc = subprocess.Popen([KAIFLOW, "logs", "alpha", "--tail", "1", "-f", "--interval", "0.2"], env=home["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "line 10\n"
        with home["log"].open("a") as f:
            f.write("line 11\n")
        assert proc.stdout.readline() == "line 11\n"  # blocks until `-f` prints it
        home["log"].write_text("restarted\n")  # a new log (a restarted server): printed from its start
        assert proc.stdout.readline() == "restarted\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode is not None
