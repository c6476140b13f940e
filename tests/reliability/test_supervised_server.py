"""The local inference server is supervised like a pod with ``restartPolicy``: a crash is seen by
``kaiflow get`` at once and the server comes back by itself; delete stops it for good; nothing is
left running.

Real processes throughout: the deploy of the local platform, ``python -m infra.supervisor``, the
transformers engine on tiny-phi-3, the ``kaiflow`` command line; crashes are ``kill -9``.
"""

from __future__ import annotations

import os
import signal

import httpx
import psutil

from infra import records
from infra.platforms import local
from tests.reliability.conftest import get_row, kaiflow, serve_only
from tests.support.waiting import wait_for
from workspace import status


def deploy(name: str) -> records.WorkspaceRecord:
    ws = serve_only(name)
    records.update(name, spec=ws.to_dict(), platform="local", instance="local")
    local.LocalPlatform().deploy(ws, None, {}, records.RecordSink(name))
    records.set_condition(name, status.RESOURCE_READY, True, "LocalMachineReady", "")  # as the flow does
    records.set_condition(name, status.WORKSPACE_READY, True, "WorkspaceReady", "up")
    rec = records.load(name)
    assert rec is not None and rec.server is not None
    return rec



def answers(endpoint: str) -> bool:
    try:
        return httpx.post(f"{endpoint}/chat", json={"prompt": "hi", "generate_kwargs": {"max_new_tokens": 4}},
                          timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def gone(pid: int | None) -> bool:
    try:
        return pid is None or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_server_shows_not_ready_at_once_serves_again_by_itself_and_delete_stops_it(local_env):
    name = "rel-sup-crash"
    server = deploy(name).server
    try:
        assert get_row(name)[2:5] == ["True", "True", "True"]
        os.kill(server.pid, signal.SIGKILL)
        # the very next `get`: not ready, with the reason and when it was seen down
        assert get_row(name)[3:5] == ["False", "False"]
        described = kaiflow("describe", "workspace", name, timeout=60).stdout
        line = next(x for x in described.splitlines() if x.strip().startswith("InferenceReady"))
        assert "False" in line and ("ServerNotRunning" in line or "ServerCrashed" in line), described
        assert f"server pid {server.pid}" in line and " at 20" in line  # when it was seen down

        # the supervisor restarts it on the same endpoint, with no command run
        wait_for(lambda: answers(server.endpoint), 120, "the restarted server answering")
        wait_for(lambda: get_row(name)[3:5] == ["True", "True"], 60, "get showing it ready again")
        after = records.load(name).server
        assert after.restarts == 1 and after.pid != server.pid and after.supervisor_pid == server.supervisor_pid
        assert after.last_exit == "killed by SIGKILL" and after.down_since is None
        described = kaiflow("describe", "workspace", name, timeout=60).stdout
        assert f"supervisor pid {server.supervisor_pid}, restarts 1, last exit: killed by SIGKILL" in described
        reasons = [e.reason for e in records.load(name).events]
        assert "ServerCrashed" in reasons and "ServerRestarted" in reasons
    finally:
        r = kaiflow("delete", "workspace", name, timeout=120)
    # delete stops it for good: the supervisor and the server it restarted, nothing left behind
    assert r.returncode == 0 and f"server pid {after.pid} stopped" in r.stdout, r.stdout + r.stderr
    assert gone(server.supervisor_pid) and gone(after.pid)


def test_a_server_stopped_on_purpose_stays_stopped(local_env):
    name = "rel-sup-term"
    server = deploy(name).server
    try:
        os.kill(server.pid, signal.SIGTERM)  # not a crash: stays stopped, and its supervisor leaves
        assert wait_for(lambda: gone(server.supervisor_pid), 60, "the supervisor leaving with its stopped server")
        cond = records.load(name).condition(status.INFERENCE_READY)
        assert cond["status"] == "False" and cond["reason"] == "ServerStopped", cond
        assert get_row(name)[3] == "False"
    finally:
        kaiflow("delete", "workspace", name, timeout=120)


def test_a_killed_supervisor_takes_its_server_and_get_says_to_reapply(local_env):
    name = "rel-sup-killed"
    server = deploy(name).server
    try:
        os.kill(server.supervisor_pid, signal.SIGKILL)
        assert wait_for(lambda: gone(server.pid), 30, "the server dying with its supervisor")  # PR_SET_PDEATHSIG
        assert get_row(name)[3] == "False"
        cond = records.load(name).condition(status.INFERENCE_READY)
        assert cond["reason"] == "ServerNotRunning" and "re-apply the workspace" in cond["message"]
    finally:
        kaiflow("delete", "workspace", name, timeout=120)
