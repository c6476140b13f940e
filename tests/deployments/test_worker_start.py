"""Starting the worker `kaiflow server` records: liveness of a just-spawned child, and a worker
that cannot reach its server is reported with its log, not retried into a second worker.

The old check read /proc/PID/cmdline, which is empty while the child is still inside exec, and took
a running worker for an exited one (the "flaky worker" of issue 9).
"""

from __future__ import annotations

import pytest

from flows import prefect_server, server
from infra import local_process
from workspace.errors import KaiflowError


def test_child_exited_is_false_while_the_child_runs_and_true_once_it_ended(tmp_path):
    import os
    import signal
    import sys
    import time

    pid = local_process.start([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "l.log",
                              pidfile=tmp_path / "p.json")
    try:
        assert prefect_server.child_exited(pid) is False  # at once, while exec may still be under way
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while not prefect_server.child_exited(pid):
        assert time.time() < deadline, "a killed child never read as exited"
        time.sleep(0.05)
    assert prefect_server.child_exited(pid) is True  # reaped: stays exited


@pytest.mark.slow
def test_a_worker_that_cannot_reach_its_server_fails_with_its_log_and_no_second_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    api = f"http://127.0.0.1:{local_process.free_port()}/api"  # nothing listens there
    with pytest.raises(KaiflowError) as err:
        server.start_worker(api, "kaiflow-nowhere")
    assert "the Prefect worker exited at start" in str(err.value) and "All connection attempts failed" in str(err.value)
    assert server.worker_running() is None
    assert (tmp_path / "home" / "prefect" / "worker.log").read_text().count("An exception occurred.") == 1  # one worker, one failure
