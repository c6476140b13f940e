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
