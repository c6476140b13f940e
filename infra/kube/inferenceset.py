"""Kaito's InferenceSet (``kaito.sh/v1beta1``): N replicas of one inference Workspace.

``reconcile(kube, inferenceset)`` makes the cluster match the InferenceSet as Kaito v0.12's
controller does (``pkg/inferenceset/inferenceset_controller.go``), and writes its status:

- it lists the child Workspaces by the ``inferenceset.kaito.sh/created-by=<name>`` label, creates
  the missing ones from ``spec.template`` and deletes the surplus (not-ready ones first, then the
  highest index), so ``spec.replicas`` children exist;
- each child carries the template's labels plus ``created-by`` (which the inference pods inherit,
  and which makes the server's served-model-name the InferenceSet's name, as in Kaito), an owner
  reference to the InferenceSet (deleting it deletes them), ``resource.instanceType`` and
  ``resource.labelSelector`` from the set;
- status: ``replicas`` (children that exist), ``readyReplicas`` (children whose WorkspaceReady is
  True), ``selector`` (the scale subresource's labelSelectorPath: HPA and KEDA read it), a Ready
  condition and ``observedGeneration``.

Children are named ``<name>-<index>`` (Kaito uses generateName): a reconcile that is repeated,
or runs twice after a crash, finds the same children instead of making more. It creates and
deletes Workspace resources only; serving them is the Workspace controller's job (``kaiflow
controller``), or ``kaiflow apply``'s when it applied the set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import manifests, objects
from workspace import errors

log = logging.getLogger(__name__)

GROUP = "kaito.sh"
API_VERSION = "kaito.sh/v1beta1"
API_VERSIONS = ("kaito.sh/v1alpha1", "kaito.sh/v1beta1")
KIND = "InferenceSet"
CREATED_BY = manifests.INFERENCESET_LABEL
WORKSPACE_API = "kaito.sh/v1beta1"
FIELD_MANAGER = "kaiflow-inferenceset"  # apart from the workspace flow's "kaiflow": its applies keep our fields
MAX_NAME = 63


@dataclass
class Result:
    """What one reconcile did and found."""

    name: str
    desired: int
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    children: list[dict] = field(default_factory=list)  # the children that exist afterwards, by index
    ready: int = 0


def is_inferenceset(doc: dict) -> bool:
    return doc.get("kind") == KIND and doc.get("apiVersion") in API_VERSIONS


def desired_replicas(iset: dict) -> int:
    value = (iset.get("spec") or {}).get("replicas", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.SpecError(f"InferenceSet {name_of(iset)}: spec.replicas: {value!r} is not a whole number ≥ 0")
    return value


def name_of(iset: dict) -> str:
    return str((iset.get("metadata") or {}).get("name") or "")


def selector(iset: dict) -> dict[str, str]:
    return {CREATED_BY: name_of(iset)}


def child_name(iset: dict, index: int) -> str:
    base = name_of(iset)
    suffix = f"-{index}"
    return base[:MAX_NAME - len(suffix)].rstrip("-") + suffix


def check(iset: dict) -> None:
    """Refuse what cannot become child Workspaces, naming the field."""
    name = name_of(iset)
    if not name:
        raise errors.SpecError("InferenceSet: metadata.name: required")
    spec = iset.get("spec")
    if not isinstance(spec, dict):
        raise errors.SpecError(f"InferenceSet {name}: spec: required (replicas, labelSelector, template)")
    template = spec.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("inference"), dict):
        raise errors.SpecError(f"InferenceSet {name}: spec.template.inference: required (the inference each replica serves)")
    if not ((template.get("resource") or {}).get("instanceType")):
        raise errors.SpecError(f"InferenceSet {name}: spec.template.resource.instanceType: required (the GPU node type)")
    desired_replicas(iset)


def child_workspace(iset: dict, index: int, namespace: str, owner_uid: str | None = None) -> dict:
    """The Workspace (``kaito.sh/v1beta1``) for replica ``index`` of ``iset``."""
    check(iset)
    spec = iset["spec"]
    template = spec["template"]
    tmeta = template.get("metadata") or {}
    meta: dict[str, Any] = {"name": child_name(iset, index), "namespace": namespace,
                            "labels": {**(tmeta.get("labels") or {}), CREATED_BY: name_of(iset)}}
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    if owner_uid:
        meta["ownerReferences"] = [{"apiVersion": iset.get("apiVersion", API_VERSION), "kind": KIND,
                                    "name": name_of(iset), "uid": owner_uid, "controller": True,
                                    "blockOwnerDeletion": True}]
    resource: dict[str, Any] = {k: v for k, v in (template.get("resource") or {}).items() if k in ("instanceType", "partition")}
    if spec.get("labelSelector"):
        resource["labelSelector"] = spec["labelSelector"]
    return {"apiVersion": WORKSPACE_API, "kind": "Workspace", "metadata": meta, "resource": resource,
            "inference": json.loads(json.dumps(template["inference"]))}


def _index(iset: dict, ws: dict) -> int:
    prefix = child_name(iset, 0)[:-1]
    name = ws["metadata"]["name"]
    tail = name[len(prefix):] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else 1 << 30


def children(kube: kclient.Kube, iset: dict) -> list[dict]:
    """The child Workspaces that exist (not being deleted), by index."""
    ns = (iset.get("metadata") or {}).get("namespace") or "default"
    items, _ = kapply.list_objects(kube, WORKSPACE_API, "Workspace", ns, selector(iset))
    return sorted((w for w in items if not w["metadata"].get("deletionTimestamp")), key=lambda w: _index(iset, w))


def reconcile(kube: kclient.Kube, inferenceset: dict) -> Result:
    """Create or delete child Workspaces until ``spec.replicas`` exist; write the status. Reads the
    InferenceSet again first (a caller's copy may predate a ``kubectl scale``)."""
    check(inferenceset)
    ns = (inferenceset.get("metadata") or {}).get("namespace") or "default"
    live = kapply.get(kube, inferenceset.get("apiVersion", API_VERSION), KIND, name_of(inferenceset), ns)
    if live is None:
        raise errors.DeploymentError(f"InferenceSet {ns}/{name_of(inferenceset)} does not exist; apply it first",
                                     reason="NotFound")
    if live["metadata"].get("deletionTimestamp"):
        return Result(name=name_of(live), desired=0, children=children(kube, live))
    desired = desired_replicas(live)
    result = Result(name=name_of(live), desired=desired)
    have = children(kube, live)
    surplus = len(have) - desired
    if surplus > 0:
        # not-ready children go first (scaling in never takes a serving replica while a broken one is left)
        not_ready = [w for w in reversed(have) if not objects.is_true(w, "WorkspaceReady")]
        doomed = not_ready[:surplus]
        doomed += [w for w in reversed(have) if w not in doomed][:surplus - len(doomed)]
        for ws in doomed:
            if kapply.delete(kube, WORKSPACE_API, "Workspace", ws["metadata"]["name"], ns):
                result.deleted.append(ws["metadata"]["name"])
        have = [w for w in have if w["metadata"]["name"] not in result.deleted]
    taken = {_index(live, w) for w in have}
    index = 0
    while len(have) < desired:
        while index in taken:
            index += 1
        child = kapply.apply(kube, child_workspace(live, index, ns, live["metadata"].get("uid")), field_manager=FIELD_MANAGER)
        log.info("InferenceSet %s/%s: created Workspace %s", ns, name_of(live), child["metadata"]["name"])
        result.created.append(child["metadata"]["name"])
        have.append(child)
        taken.add(index)
    result.children = sorted(have, key=lambda w: _index(live, w))
    result.ready = sum(1 for w in result.children if objects.is_true(w, "WorkspaceReady"))
    write_status(kube, live, replicas=len(result.children), ready=result.ready)
    return result


def write_status(kube: kclient.Kube, iset: dict, *, replicas: int, ready: int) -> dict:
    desired = desired_replicas(iset)
    ok = ready >= desired
    condition = {"type": "Ready", "status": "True" if ok else "False",
                 "reason": "InferenceSetReady" if ok else "InferenceSetNotReady",
                 "message": f"{ready}/{desired} replicas are ready",
                 "observedGeneration": int(iset["metadata"].get("generation") or 0)}
    old = next((c for c in (iset.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if old and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
        condition["lastTransitionTime"] = old["lastTransitionTime"]
    else:
        from datetime import datetime, timezone

        condition["lastTransitionTime"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"apiVersion": iset.get("apiVersion", API_VERSION), "kind": KIND,
            "metadata": {"name": name_of(iset), "namespace": iset["metadata"].get("namespace") or "default"},
            "status": {"replicas": replicas, "readyReplicas": ready,
                       "selector": kapply.label_selector(selector(iset)),
                       "observedGeneration": int(iset["metadata"].get("generation") or 0),
                       "conditions": [condition]}}
    return kapply.apply_status(kube, body, field_manager=FIELD_MANAGER + "-status")
