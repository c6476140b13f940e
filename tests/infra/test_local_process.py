"""Detached local processes: alive right after start (not mistaken for dead mid-exec), stopped by
marker only."""

from __future__ import annotations

import sys
from pathlib import Path

from infra import local_process


def test_a_started_process_is_alive_at_once_and_stop_right_after_start_stops_it(tmp_path: Path):
    for _ in range(20):  # under load the window between fork and exec was hit about 1 start in 40
        pid = local_process.start([sys.executable, "-c", "import time; time.sleep(30)"],
                                  log_path=tmp_path / "log", pidfile=tmp_path / "pid")
        assert local_process.alive(pid, "time.sleep")
        assert local_process.stop(pid, "time.sleep") is True
        assert not local_process.alive(pid, "time.sleep")


def test_stop_leaves_a_process_whose_command_line_lacks_the_marker(tmp_path: Path):
    pid = local_process.start([sys.executable, "-c", "import time; time.sleep(30)"],
                              log_path=tmp_path / "log", pidfile=tmp_path / "pid")
    try:
        assert local_process.stop(pid, "-m serving") is False  # a recycled PID is never killed
        assert local_process.alive(pid, "time.sleep")
    finally:
        local_process.stop(pid, "time.sleep")


def test_wait_healthy_returns_once_the_server_answers_and_names_a_process_that_died(tmp_path: Path):
    import pytest

    port = local_process.free_port()
    # answers only after a second, as a server loading a model would
    code = f"import time, http.server; time.sleep(1); http.server.test(http.server.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')"
    pid = local_process.start([sys.executable, "-c", code], log_path=tmp_path / "log", pidfile=tmp_path / "pid")
    try:
        local_process.wait_healthy(f"http://127.0.0.1:{port}/", pid=pid, marker="http.server", timeout=60)
        assert local_process.alive(pid, "http.server")
    finally:
        local_process.stop(pid, "http.server")
    dead = local_process.start([sys.executable, "-c", "print('no model here'); raise SystemExit(3)"],
                               log_path=tmp_path / "dead.log", pidfile=tmp_path / "dead.pid")
    with pytest.raises(RuntimeError, match="no model here"):
        local_process.wait_healthy(f"http://127.0.0.1:{local_process.free_port()}/", pid=dead, marker="no model",
                                   timeout=60, log_path=tmp_path / "dead.log")
