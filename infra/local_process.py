"""Detached local processes (inference servers, the Prefect server) that outlive the command.

A process is started in its own session with output to a log file and a small JSON pidfile that
records the PID, the command line and a marker; ``stop`` signals only a PID whose command line still
carries that marker, so a recycled PID is never killed. Command lines and process states come from
psutil.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``Popen(preexec_fn=...)`` that makes the child get ``sig`` when the thread that starts it
    exits (Linux's ``PR_SET_PDEATHSIG``, as ``serving.engines.lifeline`` does for vLLM's engine):
    a tuning run dies with its apply, a server with its supervisor, however they die. A parent that
    died before the call makes the child exit at once. Elsewhere than Linux it does nothing.

    The C function is looked up here, before the fork: the child only calls it.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


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
    """Return once the child runs its own program. Between fork and the end of exec its command
    line is the parent's or empty, and :func:`alive` would call it dead (seen under load: a worker
    started twice, a healthy server reported as exited)."""
    parent = _cmdline(os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        line = _cmdline(proc.pid)
        if line and line != parent:
            return
        time.sleep(0.005)


def _cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces; "" when it is gone or unreadable."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _running(pid: int | None, marker: str) -> psutil.Process | None:
    """The process ``pid`` if it runs (a zombie does not) a command line that carries ``marker``."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        line = " ".join(proc.cmdline())
        if not line or marker not in line or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:  # gone, a zombie, or not ours to read
        return None
    return proc


def _still_running(proc: psutil.Process) -> bool:
    """``proc`` (the very process, not a later one with its PID) has not exited."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _still_running(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_group(proc: psutil.Process, sig: signal.Signals) -> None:
    """``sig`` to the process group ``proc`` leads (``start`` makes one per process), else to ``proc``."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def alive(pid: int | None, marker: str = "") -> bool:
    """``pid`` runs, is not a zombie, and its command line carries ``marker``."""
    return _running(pid, marker) is not None


def stop(pid: int | None, marker: str = "", timeout: float = 15.0) -> bool:
    """Stop ``pid`` (and its process group) if it still runs ``marker``; True if it was running."""
    proc = _running(pid, marker)
    if proc is None:
        return False
    _signal_group(proc, signal.SIGTERM)
    if not _wait_gone(proc, timeout):
        _signal_group(proc, signal.SIGKILL)
        _wait_gone(proc, 5.0)
    try:  # reap if it is our child
        os.waitpid(proc.pid, os.WNOHANG)
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
    # one client for all polls: each httpx.get builds a client and its TLS context (~20 ms of CPU idle,
    # 0.3-0.5 s on a loaded 2-core box), which a server still loading its model on the same cores pays for
    with httpx.Client(timeout=2.0) as client:
        while time.time() < deadline:
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if pid and not alive(pid, marker):
                raise RuntimeError(f"process exited before {url} was healthy; log tail:\n{_tail(log_path)}")
            time.sleep(0.1)  # one cheap poll (one client): a server that just came up is seen within 0.1 s
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s; log tail:\n{_tail(log_path)}")


def _tail(log_path: Path | None) -> str:
    return log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""


def python() -> str:
    return sys.executable
