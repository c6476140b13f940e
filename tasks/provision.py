"""Provision: make sure there is hardware for the plan (ResourceReady).

The platform does the work (``infra.platforms``): the local platform checks this machine against
the plan and fails fast with the reason; kubernetes/aks apply the Workspace resource and wait for
GPU nodes from their node source (Karpenter NodeClaims, your own labelled nodes, an AKS agent pool).
"""

from __future__ import annotations

from prefect import task

from infra.platforms.base import Provisioned
from tasks.common import on_platform, task_options
from workspace import spec


@task(name="provision", **task_options())
def provision(workspace: spec.Workspace, platform: str) -> Provisioned:
    with on_platform(platform) as where:
        return where.provision(workspace, where.reporter(workspace))
