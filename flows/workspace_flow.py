"""The workspace flow: one Prefect flow run per workspace apply, named after the workspace.

    provision ──► pull dataset ──► tune ──► push adapter image ──► deploy inference
  (ResourceReady)              (JobStarted)    (image@digest)      (InferenceReady)
                                                                   └► WorkspaceReady / WorkspaceSucceeded

Tuning-only workspaces stop after the push (WorkspaceSucceeded); inference-only ones skip straight
to deploy; a workspace with both tunes and serves the fresh adapter. A failure at any step marks
its condition and WorkspaceReady False with the error's reason and message, and leaves whatever
was serving before untouched.
"""

from __future__ import annotations

import contextlib

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows import concurrency
from infra import platforms, records
from tasks import dataset as dataset_task
from tasks import deploy as deploy_task
from tasks import provision as provision_task
from tasks import push as push_task
from tasks import tune as tune_task
from tasks.common import artifact_key
from workspace import admission
from workspace import settings as kaiflow_settings
from workspace import spec, status
from workspace.errors import KaiflowError, SpecError


def _status_table(name: str) -> None:
    record = records.load(name) or records.WorkspaceRecord(name=name)
    rows = [{"condition": c["type"], "status": c["status"], "reason": c.get("reason", ""), "message": c.get("message", "")}
            for c in record.conditions]
    rows.append({"condition": "endpoint", "status": record.endpoint or "-", "reason": "", "message": ""})
    for a in (record.server.adapters if record.server else []):
        rows.append({"condition": f"adapter {a.name}", "status": a.digest[:19], "reason": "", "message": a.image})
    create_table_artifact(rows, key=artifact_key(name, "status"), description=f"status of workspace {name}")


def _admit(workspace: spec.Workspace, config_maps: dict[str, dict[str, str]], platform: str) -> None:
    """Kaito's admission rules (``workspace.admission``), for runs that did not come through a file
    (the Prefect UI's form, ``prefect deployment run``, a schedule): refused before anything runs."""
    s = kaiflow_settings.load()
    problems = admission.admit(workspace, config_maps, allow_private_urls=s.allow_private_urls, platform=platform,
                               provisioner=platforms.provisioner_for(platform, s))
    if problems:
        raise SpecError("\n".join(p.line(f"workspace {workspace.name}") for p in problems), problems=problems)


@flow(name="workspace", flow_run_name="{workspace.metadata.name}", log_prints=True, persist_result=False)
def workspace_flow(
    workspace: spec.Workspace,
    config_maps: dict[str, dict[str, str]] | None = None,
    platform: str | None = None,
    run_settings: dict[str, str] | None = None,
) -> dict:
    """Apply a Kaito workspace: provision, pull data, tune, push the adapter image, deploy inference.

    ``run_settings``: the caller's run-shaping ``KAIFLOW_*`` variables (``workspace.settings.RUN_SETTINGS``),
    applied for this run over the environment of the process that runs it (``apply --via-server``).
    """
    with kaiflow_settings.applied(run_settings):
        return _apply(workspace, config_maps, platform)


def _apply(workspace: spec.Workspace, config_maps: dict[str, dict[str, str]] | None, platform: str | None) -> dict:
    log = get_run_logger()
    config_maps = config_maps or {}
    where = platforms.get(platform)
    platform = where.name
    name = workspace.name
    _admit(workspace, config_maps, platform)
    report = where.reporter(workspace)
    sku = where.sku(workspace)
    slots = contextlib.ExitStack()  # overlapping runs of one workspace take turns (flows.concurrency)
    slots.enter_context(concurrency.workspace_slot(name))
    records.update(name, spec=workspace.to_dict(), platform=platform, last_flow_run=str(flow_run.get_id() or ""),
                   instance=workspace.instance_type or "local")
    result: dict = {"name": name}
    try:
        result["provision"] = provision_task.provision(workspace, platform, config_maps).model_dump()
        image = None
        if workspace.tuning:
            data = dataset_task.pull_dataset(workspace, platform)
            with concurrency.gpu_slots(sku, 1, f"tuning of {name}"):
                tuned = tune_task.tune(workspace, data, config_maps, platform)
            result["tuning"] = {**tuned.model_dump(), "dataset_digest": data.digest}
            image = push_task.push_adapter(workspace, tuned, platform)
            result["image"] = image.model_dump()
            records.update(name, adapter_image=image.reference, tuning_cache_key=tuned.cache_key, dataset_digest=data.digest)
        if workspace.inference:
            nodes = concurrency.nodes_for(where.plan(workspace, config_maps), workspace)
            with concurrency.gpu_slots(sku, nodes, f"inference of {name}"):
                result["inference"] = deploy_task.deploy(workspace, image, config_maps, platform).model_dump()
            report.condition(status.WORKSPACE_READY, True, "WorkspaceReady", "everything the workspace asked for is up")
        else:
            report.condition(status.WORKSPACE_SUCCEEDED, True, "TuningSucceeded", f"adapter at {result['image']['reference']}")
            report.condition(status.WORKSPACE_READY, True, "WorkspaceSucceeded", "tuning finished")
    except KaiflowError as exc:
        report.condition(status.WORKSPACE_READY, False, exc.reason, str(exc))
        report.event(exc.reason, str(exc), kind="Warning")
        log.error("workspace %s failed: %s", name, exc, extra={"kaiflow_final": True})  # the CLI prints it
        raise
    finally:
        _status_table(name)
        slots.close()
    return result
