"""What the workspace controller writes on a Workspace resource, and what it reads before letting go.

    metadata.finalizers          ``kaiflow.io/teardown``: set on the first sight of a workspace,
                                 removed only after the teardown run and once its nodes are gone
    metadata.annotations         ``kaiflow.io/accepted-spec``: the fields Kaito forbids changing, as
                                 they were in the last generation a run was started for (Kaito's
                                 webhook compares with the old object; a controller sees only the new)
    status.observedGeneration    the generation the conditions describe (field manager
                                 ``kaiflow-controller``, apart from the flow's ``kaiflow-status``)
    status.conditions            only to refuse a change (the flow writes them otherwise)

Metadata is changed by a JSON merge patch carrying the resourceVersion read, so a change made in
between answers 409 and is retried on the fresh object rather than overwritten.
"""

from __future__ import annotations

import json
from typing import Any

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import manifests
from workspace import errors, status

FINALIZER = "kaiflow.io/teardown"
ACCEPTED = "kaiflow.io/accepted-spec"
CONTROLLER_MANAGER = "kaiflow-controller"
MERGE = "application/merge-patch+json"


def _url(obj: dict, sub: str | None = None) -> str:
    m = obj["metadata"]
    return kclient.path(obj["apiVersion"], "Workspace", m.get("namespace"), m["name"], sub)


def patch_metadata(kube: kclient.Kube, obj: dict, *, finalizers: list[str] | None = None,
                   annotations: dict[str, str | None] | None = None) -> dict:
    """Merge-patch finalizers (the whole list) and/or annotations (None removes one) against the
    resourceVersion of ``obj``; returns the object the server stored."""
    meta: dict[str, Any] = {"resourceVersion": obj["metadata"].get("resourceVersion")}
    if finalizers is not None:
        meta["finalizers"] = finalizers
    if annotations:
        meta["annotations"] = annotations
    return kube.request("PATCH", _url(obj), body={"metadata": meta}, content_type=MERGE,
                        what=f"patch workspace {obj['metadata']['name']}", group="kaito.sh")


def has_finalizer(obj: dict) -> bool:
    return FINALIZER in (obj["metadata"].get("finalizers") or [])


def add_finalizer(kube: kclient.Kube, obj: dict, accepted: dict | None = None) -> dict:
    finalizers = [*(obj["metadata"].get("finalizers") or []), FINALIZER]
    notes = {ACCEPTED: json.dumps(accepted, sort_keys=True)} if accepted is not None else None
    return patch_metadata(kube, obj, finalizers=finalizers, annotations=notes)


def remove_finalizer(kube: kclient.Kube, obj: dict) -> dict | None:
    """Drop our finalizer; None when the object is gone (with it, when ours was the last)."""
    rest = [f for f in (obj["metadata"].get("finalizers") or []) if f != FINALIZER]
    try:
        return patch_metadata(kube, obj, finalizers=rest)
    except errors.KaiflowError as exc:
        if exc.reason == "NotFound":
            return None
        raise


def accepted_spec(obj: dict) -> dict | None:
    raw = (obj["metadata"].get("annotations") or {}).get(ACCEPTED)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def set_accepted(kube: kclient.Kube, obj: dict, accepted: dict) -> dict:
    return patch_metadata(kube, obj, annotations={ACCEPTED: json.dumps(accepted, sort_keys=True)})


def set_observed_generation(kube: kclient.Kube, obj: dict, generation: int) -> None:
    m = obj["metadata"]
    kapply.apply_status(kube, {"apiVersion": obj["apiVersion"], "kind": "Workspace",
                               "metadata": {"name": m["name"], "namespace": m.get("namespace")},
                               "status": {"observedGeneration": int(generation)}}, field_manager=CONTROLLER_MANAGER)


def set_condition(kube: kclient.Kube, obj: dict, type_: str, ok: bool | None, reason: str, message: str,
                  generation: int | None = None) -> None:
    """Put one condition among the ones the CR shows (the flow's list stays; this one replaced)."""
    m = obj["metadata"]
    current = [c for c in ((obj.get("status") or {}).get("conditions") or []) if c.get("type") != type_]
    cond = {"type": type_, "status": {True: "True", False: "False", None: "Unknown"}[ok], "reason": reason,
            "message": message, "lastTransitionTime": status.now()}
    if generation is not None:
        cond["observedGeneration"] = int(generation)
    kapply.apply_status(kube, {"apiVersion": obj["apiVersion"], "kind": "Workspace",
                               "metadata": {"name": m["name"], "namespace": m.get("namespace")},
                               "status": {"conditions": [*current, cond]}})


def nodeclaims_left(kube: kclient.Kube, obj: dict) -> list[str]:
    """The workspace's NodeClaims still on the cluster (none where Karpenter's CRD is not installed)."""
    m = obj["metadata"]
    labels = {manifests.WORKSPACE_LABEL: manifests.dns_label(m["name"]),
              manifests.WORKSPACE_NS_LABEL: m.get("namespace") or kube.default_namespace}
    try:
        items, _ = kapply.list_objects(kube, "karpenter.sh/v1", "NodeClaim", None, labels)
    except errors.KaiflowError as exc:
        if exc.reason in ("NotFound", "CRDNotInstalled"):
            return []
        raise
    return [i["metadata"]["name"] for i in items]
