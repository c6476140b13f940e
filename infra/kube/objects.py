"""Reading what the cluster reports about objects: status conditions, a workspace's pods, their
containers' states. Shared by the node sources, the Job lifecycle, inference and the CLI views."""

from __future__ import annotations

from infra.kube import apply as kapply
from infra.kube import client as kclient


def condition_of(obj: dict, type_: str) -> dict | None:
    """The status condition ``type_`` of any object (NodeClaim, Node, Job, Pod), or None."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def is_true(obj: dict, type_: str) -> bool:
    return (condition_of(obj, type_) or {}).get("status") == "True"


def pods(kube: kclient.Kube, ns: str, labels: dict[str, str]) -> list[dict]:
    """The pods carrying ``labels``, oldest first."""
    items, _ = kapply.list_objects(kube, "v1", "Pod", ns, labels)
    return sorted(items, key=lambda p: p["metadata"].get("creationTimestamp") or "")


def container_statuses(pod: dict) -> list[dict]:
    """Init containers' statuses, then the containers'."""
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])
