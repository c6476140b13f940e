"""Provision: make sure there is hardware for the plan (ResourceReady).

On the local platform this checks this machine against the plan and fails fast with the reason
when a preset cannot run here (no GPU for a real model). On kubernetes/aks it applies the Workspace
CR and waits for GPU nodes (``infra.kube.platform.provision``: Karpenter NodeClaims, your own
labelled nodes, or an AKS agent pool).
"""

from __future__ import annotations

from prefect import get_run_logger, task

from infra import local_state
from tasks.common import task_options
from workspace import plan, spec, status
from workspace.errors import SizingError


@task(name="provision", **task_options())
def provision(workspace: spec.Workspace, platform: str) -> dict:
    log = get_run_logger()
    name = workspace.name
    if platform != "local":  # kubernetes / aks: NodeClaims, your own nodes or an AKS agent pool
        from infra.kube import platform as kube_platform

        return kube_platform.provision(workspace, platform)
    p = plan.plan_workspace(workspace, platform)
    for part in p.parts:
        log.info("plan %s: %s on %s: %s", part.part, part.model, p.instance_type, part.summary)
    if not p.fits:
        msg = "; ".join(p.problems())
        local_state.set_condition(name, status.RESOURCE_READY, False, SizingError.reason, msg)
        raise SizingError(f"workspace {name}: {msg}")
    local_state.set_condition(name, status.RESOURCE_READY, True, "LocalMachineReady", f"this machine can run the plan ({p.instance_type})")
    return {"instance": p.instance_type, "parts": [{"part": x.part, "model": x.model, "summary": x.summary} for x in p.parts]}
