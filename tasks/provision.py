"""Provision: make sure there is hardware for the plan (ResourceReady).

The platform does the work (``infra.platforms``): the local platform checks this machine against
the plan and fails fast with the reason; kubernetes/aks apply the Workspace resource and wait for
GPU nodes from their node source (Karpenter NodeClaims, your own labelled nodes, an AKS agent pool).
Where the plan departs from the workspace as written (``resource.count`` raised or lowered to what
the model needs, as Kaito's estimator does), a ``NodeCountAdjusted`` warning event says so first.
"""

from __future__ import annotations

from prefect import task

from infra.platforms.base import Provisioned
from tasks.common import on_platform, task_options
from workspace import plan, spec


@task(name="provision", **task_options())
def provision(workspace: spec.Workspace, platform: str,
              config_maps: dict[str, dict[str, str]] | None = None) -> Provisioned:
    with on_platform(platform) as where:
        report = where.reporter(workspace)
        for note in where.plan(workspace, config_maps).adjustments():
            report.event(plan.COUNT_ADJUSTED, note, "Warning")
        return where.provision(workspace, report, config_maps)
