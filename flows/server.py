"""`kaiflow server`: everything one machine needs to use kaiflow from the Prefect UI.

It starts (or reuses) the Prefect server — SQLite under KAIFLOW_HOME by default, PostgreSQL when
``--database-url``/``KAIFLOW_DATABASE_URL`` is given — registers the deployments in the process
work pool, and starts one process worker for that pool, detached like the server, recorded in
``KAIFLOW_HOME/prefect/worker.json`` and stopped by ``kaiflow server --stop``. The worker runs
every flow run as a child process with this environment (KAIFLOW_* settings included), in this
repository (the deployments' pull step).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from flows import prefect_server
from infra import local_process
from workspace import settings
from workspace.errors import KaiflowError

WORKER_MARKER = "prefect worker start"


def _worker_file() -> Path:
    return settings.load().home_dir / "prefect" / "worker.json"


def ui_url(api: str) -> str:
    """The UI lives beside the API: http://HOST:PORT/api -> http://HOST:PORT."""
    return api[: -len("/api")] if api.endswith("/api") else api


def worker_running() -> dict | None:
    path = _worker_file()
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info if local_process.alive(info.get("pid"), WORKER_MARKER) else None


def start_worker(api: str, pool: str) -> dict:
    """Start a process worker for ``pool`` against ``api`` unless one recorded for them runs."""
    info = worker_running()
    if info and info.get("api") == api and info.get("pool") == pool:
        return info
    if info:
        local_process.stop(info["pid"], WORKER_MARKER)
    s = settings.load()
    home = _worker_file().parent
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": str(s.worker_poll_s),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    if prefect_server.database() == "sqlite":  # it answers 500 "database is locked" under load: retry those
        env.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")
    env.pop("KAIFLOW_DATABASE_URL", None)  # flow runs never need the server's database password
    prefect_bin = str(Path(sys.executable).parent / "prefect")
    cmd = [prefect_bin, "worker", "start", "--pool", pool, "--type", "process", "--name", f"kaiflow-{pool}"]
    pid = local_process.start(cmd, log_path=home / "worker.log", pidfile=home / "worker.pid", env=env,
                              cwd=str(Path(__file__).resolve().parent.parent))
    _wait_worker_online(api, pool, pid, home / "worker.log")
    info = {"pid": pid, "api": api, "pool": pool, "log": str(home / "worker.log")}
    _worker_file().write_text(json.dumps(info))
    return info


def _wait_worker_online(api: str, pool: str, pid: int, log: Path, timeout: float = 60.0) -> None:
    """A worker that polled the server once shows up in the pool's worker list.

    Liveness is ``waitpid`` on our own child, not /proc/PID/cmdline: that is empty while the
    worker is still inside exec, and reading it as "exited" used to start a second worker and
    fail ``kaiflow server`` on a loaded machine. A slow answer (SQLite busy) is polled again.
    """
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if prefect_server.child_exited(pid):
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise KaiflowError(f"the Prefect worker exited at start (log: {log}):\n{tail}")
        try:
            r = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=5)
            if r.status_code == 200 and any(w.get("name") == f"kaiflow-{pool}" for w in r.json()):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    local_process.stop(pid, WORKER_MARKER)
    raise KaiflowError(f"the Prefect worker did not reach {api} within {timeout:.0f} s (log: {log})")


def stop_worker() -> bool:
    return local_process.stop_recorded(_worker_file(), WORKER_MARKER)


def start(database_url: str | None = None, pool: str | None = None) -> dict:
    """Server, deployments, worker; returns ``{"api", "ui", "database", "deployments", "worker"}``."""
    from flows import deployments

    s = settings.load()
    database_url = database_url or (s.database_url.get_secret_value() if s.database_url else None)
    if database_url and not database_url.startswith("postgresql+asyncpg://"):
        raise KaiflowError("--database-url / KAIFLOW_DATABASE_URL: use postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE "
                           "(or leave it unset for SQLite under KAIFLOW_HOME)")
    api = prefect_server.ensure(database_url)
    pool = pool or s.work_pool
    registered = deployments.register("process", pool)
    worker = start_worker(api, pool)
    return {"api": api, "ui": ui_url(api), "database": prefect_server.redacted_database(database_url),
            "deployments": registered, "worker": worker}


def stop() -> dict:
    """Stop the worker, then the server (in that order: a worker outliving its server only logs errors)."""
    return {"worker": stop_worker(), "server": prefect_server.stop()}


def cmd_server(args) -> int:
    if args.stop:
        r = stop()
        print(f"worker {'stopped' if r['worker'] else 'was not running'}; "
              f"Prefect server {'stopped' if r['server'] else 'was not running'}")
        return 0
    r = start(args.database_url, args.pool)
    for d in r["deployments"]:
        note = "  (entrypoint not in this checkout yet: its runs fail until it lands)" if d["entrypoint_missing"] else ""
        print(f"deployment {d['name']}  pool {d['pool']}{note}")
    print(f"worker pid {r['worker']['pid']}  log {r['worker']['log']}")
    print(f"Prefect API: {r['api']}  (database: {r['database']})")
    print(f"Prefect UI:  {r['ui']}")
    print("stop with: kaiflow server --stop")
    return 0


def trigger_workspace(ws, config_maps: dict[str, dict[str, str]], platform: str | None, wait: bool = True,
                      poll_s: float = 1.0, timeout_s: float | None = None) -> dict:
    """Create a run of the ``workspace`` deployment with this workspace as its parameters.

    Prints the run's UI address at once; with ``wait`` polls it to a final state. Returns
    ``{"id", "url", "state"}``. The server validates the parameters against the Workspace schema.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from flows import deployments

    api = prefect_server.ensure()
    d = deployments.BY_FLOW["workspace"]
    params = deployments.retrain_parameters(ws, config_maps, platform)
    passed = settings.for_run()  # the worker does not see this shell's environment
    if passed:
        params["run_settings"] = passed
        print(f"passing with the run: {', '.join(f'{k}={v}' for k, v in sorted(passed.items()))}", file=sys.stderr)
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(d.full_name)
        except ObjectNotFound:
            deployments.register()
    if not worker_running():
        print("note: no kaiflow worker is running here; the run waits until one picks it up (kaiflow server)", file=sys.stderr)
    run = run_deployment(d.full_name, parameters=params, timeout=0, as_subflow=False)
    url = f"{ui_url(api)}/runs/flow-run/{run.id}"
    print(f"workspace {ws.name}: flow run {run.name} {url}", flush=True)
    if not wait:
        return {"id": str(run.id), "url": url, "state": run.state.name if run.state else "Scheduled"}
    deadline = None if timeout_s is None else time.time() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run.id)
            if run.state and run.state.is_final():
                break
            if deadline and time.time() > deadline:
                break
            time.sleep(poll_s)
    state = run.state
    return {"id": str(run.id), "url": url, "state": state.name if state else "Unknown",
            "message": (state.message or "") if state else "", "final": bool(state and state.is_final()),
            "completed": bool(state and state.is_completed())}


def apply_via_server(bundle, platform: str | None, wait: bool) -> int:
    """`kaiflow apply --via-server`: one deployment run per workspace; exit 1 if any did not complete."""
    from flows import deployments

    failed = 0
    for ws in bundle.workspaces:
        r = trigger_workspace(ws, bundle.config_maps, platform, wait=wait)
        if wait:
            print(f"workspace {ws.name}: {r['state']}" + (f" ({r['message']})" if r["message"] and not r["completed"] else ""))
            failed += not r["completed"]
    for s in deployments.schedules_from_annotations(bundle.workspaces, bundle.config_maps, platform):
        print(f"schedule {s['slug']} on {s['deployment']}: {s['cron']} ({s['timezone']})")
    return 1 if failed else 0
