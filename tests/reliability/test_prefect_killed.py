"""The background Prefect server killed in the middle of an apply: the next apply starts it again,
frees what the broken run held (its slots' leases survive the restart on disk), and succeeds.

The real ``kaiflow`` command line with no ``PREFECT_API_URL``, so it starts (and restarts) its own
``prefect server start`` under a KAIFLOW_HOME of this test; the server is SIGKILLed while the
apply deploys, then the apply itself (it would take minutes of client retries to fail). Without
leases on disk the restarted server forgot them while their slots stayed taken: the next apply
waited for good.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from tests.reliability.conftest import ENV, KAIFLOW, SERVE_ONLY
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]



def test_the_next_apply_restarts_a_killed_prefect_server_and_succeeds(tmp_path, tiny_model):
    home = tmp_path / "home"
    env = {**os.environ, **ENV, "KAIFLOW_HOME": str(home), "KAIFLOW_GPU_WAIT_S": "240"}
    env.pop("PREFECT_API_URL", None)
    name = "rel-prefect-killed"
    ws = tmp_path / "ws.yaml"
    ws.write_text(SERVE_ONLY.format(name=name))
    state = home / "prefect" / "server.json"
    wdir = home / "workspaces" / name
    try:
        with open(tmp_path / "first.log", "w") as out:
            first = subprocess.Popen([KAIFLOW, "apply", "-f", str(ws)], env=env, stdout=out, stderr=subprocess.STDOUT)
            wait_for(lambda: any(wdir.glob("server-*.json")) or first.poll() is not None, 300, "the deploy starting")
            prefect_pid = json.loads(state.read_text())["pid"]
            os.killpg(prefect_pid, signal.SIGKILL)  # the server and its process group (it was started in its own)
            # the run cannot report to a dead server: Prefect's client retries each call for about a
            # minute, so it would take minutes to fail; the user gives up on it (as the OOM killer would)
            wait_for(lambda: first.poll() is not None or "supervisor_pid" in (wdir / "record.json").read_text(), 300,
                     "the deploy recording its server")
            first.send_signal(signal.SIGKILL)
            first.wait(60)

        second = subprocess.run([KAIFLOW, "apply", "-f", str(ws)], env=env, capture_output=True, text=True, timeout=600)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
        assert json.loads(state.read_text())["pid"] != prefect_pid  # a new Prefect server
        assert f"released the concurrency limit 'workspace-{name}'" in out, out  # the broken run's slot, freed
        assert "waits for the concurrency limit" not in out  # nothing of the broken run was waited for
        got = subprocess.run([KAIFLOW, "get", "workspaces"], env=env, capture_output=True, text=True, timeout=60).stdout
        assert next(line.split() for line in got.splitlines() if line.startswith(name))[2:5] == ["True"] * 3
        supervisor_pid = json.loads((wdir / "record.json").read_text())["server"]["supervisor_pid"]
    finally:
        subprocess.run([KAIFLOW, "delete", "workspace", name], env=env, capture_output=True, timeout=120)
        subprocess.run([sys.executable, "-c", "from flows import prefect_server; prefect_server.stop()"], env=env,
                       timeout=60)
    assert not psutil.pid_exists(supervisor_pid) or psutil.Process(supervisor_pid).status() == psutil.STATUS_ZOMBIE
