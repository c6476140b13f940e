"""A Prefect API for the CLI: the configured one, or a local server kaiflow starts once and reuses.

Prefect's temporary per-process server costs ~10 s on every command; a CLI wants seconds. So with
no ``PREFECT_API_URL``, kaiflow starts ``prefect server start`` (SQLite under KAIFLOW_HOME/prefect)
detached in the background on first use, records its address, and later commands reuse it.
Call ``ensure()`` before importing prefect's client machinery.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx

from infra import local_process
from workspace import settings
from workspace.errors import KaiflowError

MARKER = "prefect server start"


def _state_file() -> Path:
    return settings.load().home_dir / "prefect" / "server.json"


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def redacted_database(database_url: str | None) -> str:
    """What the state file and messages may say about the database: never its password."""
    if not database_url:
        return "sqlite"
    return str(httpx.URL(database_url.replace("+asyncpg", "")).copy_with(password=None)).replace("postgresql://", "postgresql+asyncpg://", 1)


_settings_override = None  # Prefect's settings context entered by _use (kept for the process's life)


def _use(api: str) -> str:
    """Point this process (and its children) at ``api``. Prefect reads its settings once, at
    import: if it is already imported, its settings context is overridden too — else a client made
    later would start a temporary server on the same SQLite file ("database is locked")."""
    global _settings_override
    os.environ["PREFECT_API_URL"] = api
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        if PREFECT_API_URL.value() != api:
            _settings_override = temporary_settings(updates={PREFECT_API_URL: api})
            _settings_override.__enter__()
    return api


def ensure(database_url: str | None = None) -> str:
    """Return the Prefect API URL in use, starting the local background server if needed.

    ``database_url`` (postgresql+asyncpg://...) runs the server on PostgreSQL instead of SQLite; it
    reaches the server through its environment only, and a running server on another database
    is an error (stop it first), not silently reused.
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    state = _state_file()
    if state.exists():
        info = json.loads(state.read_text())
        if local_process.alive(info.get("pid"), MARKER) and _healthy(info["api"]):
            if info.get("database", "sqlite") != redacted_database(database_url):
                raise KaiflowError(f"the local Prefect server at {info['api']} runs on {info.get('database', 'sqlite')}, "
                                   f"not {redacted_database(database_url)}: stop it first (kaiflow server --stop)")
            return _use(info["api"])
        local_process.stop(info.get("pid"), MARKER)
    home = state.parent
    home.mkdir(parents=True, exist_ok=True)
    port = local_process.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false", "PREFECT_UI_API_URL": api,
           # concurrency leases on disk: a restarted server still knows (and expires) the leases of
           # runs that held slots, where in memory they were lost and their slots stayed taken for good
           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem"}
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    prefect_bin = str(Path(sys.executable).parent / "prefect")
    pid = local_process.start([prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              log_path=home / "server.log", pidfile=home / "server.pid", env=env)
    deadline = time.time() + 90
    while time.time() < deadline:
        if _healthy(api):
            state.write_text(json.dumps({"pid": pid, "api": api, "database": redacted_database(database_url)}))
            return _use(api)
        if child_exited(pid):
            break
        time.sleep(0.5)
    local_process.stop(pid, MARKER)
    tail = (home / "server.log").read_text(errors="replace")[-1500:] if (home / "server.log").exists() else ""
    raise KaiflowError(f"could not start a local Prefect server (log: {home / 'server.log'}):\n{tail}")


def running_api() -> str | None:
    """The Prefect API in use without starting anything: ``PREFECT_API_URL``, else the local
    background server's if it runs, else None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    state = _state_file()
    if not state.exists():
        return None
    info = json.loads(state.read_text())
    return info["api"] if local_process.alive(info.get("pid"), MARKER) and _healthy(info["api"]) else None


def database() -> str | None:
    """What the local background server runs on ("sqlite" or a password-free PostgreSQL URL), or
    None when kaiflow did not start the server in use."""
    state = _state_file()
    if not state.exists():
        return None
    return json.loads(state.read_text()).get("database", "sqlite")


def child_exited(pid: int) -> bool:
    """Whether a process this one started has exited (reaping it if so).

    ``local_process.alive`` reads /proc/PID/cmdline, which is still empty while a just-spawned
    child is inside exec: right after Popen it can read as "exited" for a process that runs.
    For our own children ``waitpid`` is exact (ChildProcessError: already reaped, so exited).
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def stop() -> bool:
    return local_process.stop_recorded(_state_file(), MARKER)
