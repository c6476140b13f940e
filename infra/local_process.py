"""Detached local processes (inference servers, the Prefect server) that outlive the command.

A process is started in its own session with output to a log file and a small JSON pidfile that
records the PID, the command line and a marker; ``stop`` signals only a PID whose command line still
carries that marker, so a recycled PID is never killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(cmd: list[str], *, log_path: Path, pidfile: Path, env: dict[str, str] | None = None, cwd: str | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
    pidfile.write_text(json.dumps({"pid": proc.pid, "cmd": cmd}))
    _wait_exec(proc)
    return proc.pid


def _wait_exec(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Return once the child runs its own program. Between fork and the end of exec its
    ``/proc/PID/cmdline`` is the parent's or empty, and :func:`alive` would call it dead (seen under
    load: a worker started twice, a healthy server reported as exited)."""
    parent = _cmdline(os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        line = _cmdline(proc.pid)
        if line and line != parent:
            return
        time.sleep(0.005)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int | None, marker: str = "") -> bool:
    if not pid:
        return False
    line = _cmdline(pid)
    if not line:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            return False
    except OSError:
        return False
    return marker in line


def stop(pid: int | None, marker: str = "", timeout: float = 15.0) -> bool:
    """Stop ``pid`` (and its process group) if it still runs ``marker``; True if it was running."""
    if not alive(pid, marker):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and alive(pid, marker):
        time.sleep(0.2)
    if alive(pid, marker):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:  # reap if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def stop_recorded(state: Path, marker: str) -> bool:
    """Stop the process a JSON state file (``{"pid": ...}``) records and remove the file; True if it ran."""
    if not state.exists():
        return False
    info = json.loads(state.read_text())
    state.unlink()
    return stop(info.get("pid"), marker)


def wait_healthy(url: str, *, pid: int | None = None, marker: str = "", timeout: float = 300.0, log_path: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; raise RuntimeError (with the log's tail) if the process dies."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if pid and not alive(pid, marker):
            raise RuntimeError(f"process exited before {url} was healthy; log tail:\n{_tail(log_path)}")
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s; log tail:\n{_tail(log_path)}")


def _tail(log_path: Path | None) -> str:
    return log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""


def python() -> str:
    return sys.executable
