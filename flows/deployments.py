"""Prefect deployments of kaiflow's flows, their work pools and retraining schedules.

``kaiflow deploy`` / ``kaiflow server`` call ``register()``: it creates the work pool (a process
pool for one machine, or a Kubernetes pool with the base job template under
``deployments/work-pools/`` that exposes GPU count, node selector, tolerations and image) and
upserts three deployments whose code is *this repository*, pulled by a
``set_working_directory`` step — the same shape ``prefect deploy`` makes from
``deployments/prefect.yaml``:

    workspace/workspace   apply a Workspace (the UI's run form is the Workspace schema)
    retrain/retrain       scheduled retraining; one schedule per workspace, parameters = that workspace
    teardown/teardown     delete a workspace

Parameter schemas are read from the entrypoints' source (Prefect's own
``parameter_schema_from_entrypoint``), so a flow is registered without importing it, and
``enforce_parameter_schema`` makes the server refuse malformed parameters when a run is created.
Re-registering a deployment is an upsert that would drop its schedules on the server, so
``register`` carries the existing schedules over.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

from workspace import spec
from workspace.errors import KaiflowError, SpecError

REPO_DIR = Path(__file__).resolve().parent.parent
K8S_TEMPLATE = REPO_DIR / "deployments" / "work-pools" / "kubernetes-base-job-template.json"
KUBERNETES_POOL = "kaiflow-kubernetes"
SCHEDULE_ANNOTATION = "kaiflow.io/retrain-schedule"
TIMEZONE_ANNOTATION = "kaiflow.io/retrain-timezone"
TAGS = ["kaiflow"]


@dataclasses.dataclass(frozen=True)
class DeploymentSpec:
    flow_name: str
    name: str
    entrypoint: str  # relative to the repository root
    description: str

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


DEPLOYMENTS = (
    DeploymentSpec("workspace", "workspace", "flows/workspace_flow.py:workspace_flow",
                   "Apply a Kaito workspace: provision, pull data, tune, push the adapter image, deploy inference."),
    DeploymentSpec("retrain", "retrain", "flows/retrain.py:retrain_flow",
                   "Retrain a workspace when its data changed; promote the adapter only if it is not worse. "
                   "One schedule per workspace (kaiflow schedule NAME --cron ...)."),
    DeploymentSpec("teardown", "teardown", "flows/teardown.py:teardown_flow",
                   "Delete a workspace: stop its inference server and forget its state."),
)
BY_FLOW = {d.flow_name: d for d in DEPLOYMENTS}


IMAGE_APP_DIR = "/app"   # where kaiflow's image keeps this repository (deployments/images/Dockerfile.*)


def pull_steps(pool_type: str = "process") -> list[dict[str, Any]]:
    """Where a run starts: on a process pool, in this repository (the code the deployment was registered
    from); on a Kubernetes pool, in the image's copy of it — the registering machine's path means
    nothing inside the flow run's pod."""
    directory = IMAGE_APP_DIR if pool_type == "kubernetes" else str(REPO_DIR)
    return [{"prefect.deployments.steps.set_working_directory": {"directory": directory}}]


def kubernetes_base_job_template() -> dict[str, Any]:
    return json.loads(K8S_TEMPLATE.read_text())


def _process_base_job_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_pool(client: Any, name: str, pool_type: str) -> Any:
    """Create the work pool if missing; a Kubernetes pool gets (and keeps) kaiflow's base job template."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = kubernetes_base_job_template() if pool_type == "kubernetes" else _process_base_job_template()
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        return client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template,
                                                      description=f"kaiflow {pool_type} pool"))
    if pool.type != pool_type:
        raise KaiflowError(f"work pool '{name}' exists with type '{pool.type}', not '{pool_type}': "
                           f"pass another --pool name or delete it (prefect work-pool delete {name})")
    if pool_type == "kubernetes" and pool.base_job_template != template:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
    return client.read_work_pool(name)


def parameter_schema(d: DeploymentSpec) -> dict[str, Any]:
    """The flow's parameter schema, read from its source without importing it.

    A deployment whose file has not landed yet (``retrain`` while it is being written) is
    registered with the workspace flow's parameters, which it shares by contract.
    """
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    path, func = d.entrypoint.split(":")
    if not (REPO_DIR / path).exists():
        path, func = BY_FLOW["workspace"].entrypoint.split(":")
    return parameter_schema_from_entrypoint(f"{REPO_DIR / path}:{func}").model_dump_for_openapi()


def _existing_schedules(client: Any, full_name: str) -> list[Any]:
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.exceptions import ObjectNotFound

    try:
        dep = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        return []
    return [DeploymentScheduleCreate(schedule=s.schedule, active=s.active, parameters=s.parameters, slug=s.slug)
            for s in dep.schedules]


def register_one(client: Any, d: DeploymentSpec, pool: str, pool_type: str = "process") -> dict[str, Any]:
    flow_id = client.create_flow_from_name(d.flow_name)
    deployment_id = client.create_deployment(
        flow_id=flow_id, name=d.name, entrypoint=d.entrypoint, description=d.description,
        work_pool_name=pool, pull_steps=pull_steps(pool_type), parameter_openapi_schema=parameter_schema(d),
        enforce_parameter_schema=True, tags=TAGS, schedules=_existing_schedules(client, d.full_name),
    )
    missing = not (REPO_DIR / d.entrypoint.split(":")[0]).exists()
    return {"name": d.full_name, "id": str(deployment_id), "pool": pool, "entrypoint": d.entrypoint,
            "entrypoint_missing": missing}


def _ensure_concurrency_limits() -> list[str]:
    """The retrain side defines the global concurrency limits; create them when that module exists."""
    if importlib.util.find_spec("flows.concurrency") is None:
        return []
    from flows import concurrency

    ensure = getattr(concurrency, "ensure_limits", None)
    return list(ensure() or []) if ensure else []


def register(pool_type: str = "process", pool: str | None = None) -> list[dict[str, Any]]:
    """Create the work pool and upsert the three deployments; returns one summary per deployment."""
    from prefect.client.orchestration import get_client

    from workspace import settings

    if pool_type not in ("process", "kubernetes"):
        raise KaiflowError(f"--pool-type '{pool_type}' is not known: use process or kubernetes")
    pool = pool or (KUBERNETES_POOL if pool_type == "kubernetes" else settings.load().work_pool)
    with get_client(sync_client=True) as client:
        ensure_pool(client, pool, pool_type)
        registered = [register_one(client, d, pool, pool_type) for d in DEPLOYMENTS]
    _ensure_concurrency_limits()
    return registered


# --- retraining schedules -------------------------------------------------------------------


def schedule_slug(name: str) -> str:
    return f"retrain-{name}"


def retrain_parameters(ws: spec.Workspace, config_maps: dict[str, dict[str, str]], platform: str | None) -> dict[str, Any]:
    """The workspace and only the ConfigMaps it names (never Secrets) as the run's parameters."""
    names = {ws.tuning.config if ws.tuning else None, ws.inference.config if ws.inference else None} - {None}
    params: dict[str, Any] = {"workspace": ws.to_parameters(), "config_maps": {k: v for k, v in config_maps.items() if k in names}}
    if platform:
        params["platform"] = platform
    return params


def cron_schedule(cron: str, timezone: str | None, source: str) -> Any:
    """A Prefect CronSchedule, or a SpecError naming ``source`` (the flag or annotation) to fix."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=timezone or "UTC")
    except ValueError as exc:
        detail = "; ".join(e.get("msg", "") for e in getattr(exc, "errors", lambda: [])()) or str(exc)
        raise SpecError(f"{source}: '{cron}' / timezone '{timezone or 'UTC'}' is not a valid schedule ({detail}); "
                        "write five cron fields like \"0 3 * * 0\" and an IANA timezone like Europe/Berlin") from None


def set_retrain_schedule(ws: spec.Workspace, cron: str, timezone: str | None = None,
                         config_maps: dict[str, dict[str, str]] | None = None, platform: str | None = None,
                         source: str = "--cron") -> dict[str, Any]:
    """Create or replace the workspace's schedule on the ``retrain`` deployment (registering it if needed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.exceptions import ObjectNotFound

    schedule = cron_schedule(cron, timezone, source)
    params = retrain_parameters(ws, config_maps or {}, platform)
    slug = schedule_slug(ws.name)
    d = BY_FLOW["retrain"]
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(d.full_name)
        except ObjectNotFound:
            register()
            dep = client.read_deployment_by_name(d.full_name)
        existing = next((s for s in dep.schedules if s.slug == slug), None)
        if existing:
            client.update_deployment_schedule(dep.id, existing.id, schedule=schedule, active=True, parameters=params)
        else:
            client.create_deployment_schedules(dep.id, [DeploymentScheduleCreate(schedule=schedule, active=True,
                                                                                 parameters=params, slug=slug)])
    return {"deployment": d.full_name, "slug": slug, "cron": cron, "timezone": schedule.timezone}


def schedules_from_annotations(workspaces: list[spec.Workspace], config_maps: dict[str, dict[str, str]],
                               platform: str | None = None) -> list[dict[str, Any]]:
    """Register the ``kaiflow.io/retrain-schedule`` annotation of each workspace that carries one."""
    done = []
    for ws in workspaces:
        notes = ws.metadata.annotations or {}
        if notes.get(SCHEDULE_ANNOTATION):
            done.append(set_retrain_schedule(ws, notes[SCHEDULE_ANNOTATION], notes.get(TIMEZONE_ANNOTATION), config_maps,
                                             platform, source=f"{ws.name}: metadata.annotations[{SCHEDULE_ANNOTATION}]"))
    return done


# --- commands -------------------------------------------------------------------------------


def cmd_deploy(args) -> int:
    """kaiflow deploy [--pool-type process|kubernetes] [--pool NAME] [-f FILE ...]"""
    from flows import prefect_server

    api = prefect_server.ensure()
    for d in register(args.pool_type, args.pool):
        note = "  (entrypoint not in this checkout yet: its runs fail until it lands)" if d["entrypoint_missing"] else ""
        print(f"deployment {d['name']}  pool {d['pool']}  entrypoint {d['entrypoint']}{note}")
    if args.filename:
        from workspace import loader

        bundle = loader.load_files(args.filename)
        for s in schedules_from_annotations(bundle.workspaces, bundle.config_maps):
            print(f"schedule {s['slug']} on {s['deployment']}: {s['cron']} ({s['timezone']})")
    print(f"Prefect API: {api}")
    return 0


def _workspace_for_schedule(name: str, filenames: list[str] | None) -> tuple[spec.Workspace, dict[str, dict[str, str]]]:
    """The named workspace from the files, else the spec `kaiflow apply` recorded for it."""
    if filenames:
        from workspace import loader

        bundle = loader.load_files(filenames)
        for ws in bundle.workspaces:
            if ws.name == name:
                return ws, bundle.config_maps
        raise SpecError(f"no workspace named '{name}' in {', '.join(filenames)} "
                        f"(found: {', '.join(w.name for w in bundle.workspaces) or 'none'})")
    from infra import records

    record = records.load(name)
    if not record or not record.spec:
        raise KaiflowError(f"workspace '{name}' is not applied here: pass its file with -f FILE")
    return spec.Workspace.model_validate(record.spec), {}


def cmd_schedule(args) -> int:
    """kaiflow schedule NAME --cron "0 3 * * 0" [--timezone Europe/Berlin] [-f FILE]"""
    from flows import prefect_server

    ws, config_maps = _workspace_for_schedule(args.name, args.filename)
    prefect_server.ensure()
    s = set_retrain_schedule(ws, args.cron, args.timezone, config_maps, args.platform)
    print(f"schedule {s['slug']} on {s['deployment']}: {s['cron']} ({s['timezone']})")
    return 0
