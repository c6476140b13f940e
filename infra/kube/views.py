"""What the command line shows of a workspace on a cluster, and what ``kaiflow delete`` removes.

- :func:`workspace_view`: the Workspace CR's instance, conditions, age and worker nodes — the
  columns of ``kubectl get workspace``, so ``kaiflow get`` and ``kubectl`` agree;
- :func:`logs`: the newest pod of a part (the server, or the tuning/evaluation program);
- :func:`delete_objects`: everything namespaced the workspace created, by its labels (the Jobs'
  pods too). Nodes are the node source's to release; the CR goes last (``crstatus.delete``).
"""

from __future__ import annotations

from typing import Any

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import crstatus, manifests, objects
from workspace import errors, spec

NAMESPACED_KINDS = (("apps/v1", "StatefulSet"), ("v1", "Service"), ("batch/v1", "Job"), ("v1", "Pod"),
                    ("v1", "ConfigMap"))


def workspace_view(kube: kclient.Kube, ws: spec.Workspace) -> dict[str, Any] | None:
    """The CR's ``instance``, ``conditions``, ``created`` and ``worker_nodes``; None when there is
    no CR (deleted outside kaiflow, or never created)."""
    cr = crstatus.get(kube, ws)
    if cr is None:
        return None
    st = cr.get("status") or {}
    return {"instance": (cr.get("resource") or {}).get("instanceType") or "-",
            "conditions": list(st.get("conditions") or []),
            "created": cr["metadata"].get("creationTimestamp"),
            "worker_nodes": list(st.get("workerNodes") or [])}


def logs(kube: kclient.Kube, ws: spec.Workspace, part: str = "inference", tail_lines: int | None = None) -> str:
    """Logs of the workspace's newest pod for ``part``: the server (inference) or the tuning program."""
    ns = kube.namespace_for(ws)
    pods = objects.pods(kube, ns, manifests.selector(ws, part))
    if part == "tuning":  # retrain's evaluation pods count as tuning runs: the newest of either
        pods = sorted(pods + objects.pods(kube, ns, manifests.selector(ws, "evaluation")),
                      key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if not pods:
        raise errors.KaiflowError(f"no {part} pod of workspace {ws.name} in namespace {ns} (not run yet, or removed "
                                  f"after the Job's TTL)")
    newest = pods[-1]
    pod = newest["metadata"]["name"]
    container = "inference" if part == "inference" else "tune"
    if (newest["metadata"].get("labels") or {}).get(manifests.PART_LABEL) == "evaluation":
        failed = [cs["name"] for cs in objects.container_statuses(newest)
                  if ((cs.get("state") or {}).get("terminated") or {}).get("exitCode", 0) != 0]
        container = failed[0] if failed else "evaluate"
    query: dict[str, Any] = {"container": container}
    if tail_lines:
        query["tailLines"] = tail_lines
    return kube.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod}/log", query=query, raw=True,
                        what=f"logs of pod {pod}")


def delete_objects(kube: kclient.Kube, ws: spec.Workspace) -> dict[str, list[str]]:
    """Delete the StatefulSet, Services, Jobs (and their pods) and ConfigMaps the workspace created
    (by its labels); returns their names by kind."""
    ns = kube.namespace_for(ws)
    mine = {manifests.WORKSPACE_LABEL: manifests.dns_label(ws.name), **manifests.MANAGED_BY}
    return {kind: kapply.delete_labelled(kube, av, kind, ns, mine) for av, kind in NAMESPACED_KINDS}
