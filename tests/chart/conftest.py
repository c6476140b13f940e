"""The Helm chart (deployments/chart) rendered by the real ``helm`` binary (tests/support/kubebins).

``render(*args)`` runs ``helm template kaiflow deployments/chart -n kaiflow-system ARGS`` once per
argument list (cached: helm takes ~0.1 s, the tests ask for the same renders many times) and
returns the objects; ``helm_run(*args)`` runs any helm command and returns the completed process.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import kubebins

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deployments" / "chart"
RELEASE = "kaiflow"
NAMESPACE = "kaiflow-system"

AKS = ("--set", "provisioner.type=aks", "--set", "provisioner.aks.subscriptionId=00000000-0000-0000-0000-000000000000",
       "--set", "provisioner.aks.resourceGroup=rg-gpu", "--set", "provisioner.aks.cluster=aks-gpu")
# default values, each provisioner, and every optional part switched on at least once
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "karpenter-worker-nodeclaim": ("--set", "worker.enabled=true", "--set", "crds.nodeClaim=true",
                                   "--set", "prefect.apiKeySecret.name=prefect-api-key",
                                   "--set", "gpuQuota.limits.Standard_NC6s_v3=2", "--set", "gpuQuota.limits.Standard_NC12s_v3=1"),
    "byo": ("--set", "provisioner.type=byo", "--set", "worker.enabled=true"),
    "aks": (*AKS, "--set", "worker.enabled=true", "--set", "prefect.apiUrl=https://prefect.example.com/api"),
    "namespaces": ("--set", "controller.namespaces={team-a,team-b}", "--set", "workspaceNamespaces={team-a,team-b}",
                   "--set", "controller.resyncSeconds=60"),
}


def helm_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([kubebins.helm(), *args], capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=None)
def _render(args: tuple[str, ...], namespace: str) -> tuple[dict[str, Any], ...]:
    r = helm_run("template", RELEASE, str(CHART), "-n", namespace, *args)
    assert r.returncode == 0, f"helm template {' '.join(args)} failed:\n{r.stderr}"
    return tuple(d for d in yaml.safe_load_all(r.stdout) if d)


def render(*args: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders (a fresh copy each call: tests may change them)."""
    return copy.deepcopy(list(_render(tuple(args), namespace)))


def find(objs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name
             and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"{kind} {name} ({namespace}): {len(found)} rendered"
    return found[0]


def container(objs: list[dict[str, Any]], deployment: str, name: str | None = None) -> dict[str, Any]:
    pod = find(objs, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if name is None or c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}
