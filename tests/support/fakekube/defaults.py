"""What the API server adds or refuses beyond the schemas: defaults, a few semantic checks, immutability.

Only the subset a workload operator trips over is modelled: Job selectors and template labels
generated from the Job's uid, ``restartPolicy`` of Job pods, selectors that must match the pod
template, a Service's cluster IP, Secret ``stringData`` folded into ``data``, immutable Job
templates, workload selectors and NodeClaim specs, CRD names and their Established condition. Defaults the
real server fills into pod specs (dnsPolicy, terminationMessagePath, ...) are left out on purpose
except ``restartPolicy``, ``imagePullPolicy`` and ``schedulerName``.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from tests.support.fakekube import resources, selectors

_cluster_ips = itertools.count(10)


def _is(rtype: resources.ResourceType, group: str, kind: str) -> bool:
    return rtype.group == group and rtype.kind == kind and not rtype.custom


def _pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return "Always" if ":" not in last or last.endswith(":latest") else "IfNotPresent"


def _pod_spec_defaults(spec: dict[str, Any], restart: str = "Always") -> None:
    spec.setdefault("restartPolicy", restart)
    spec.setdefault("schedulerName", "default-scheduler")
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if isinstance(container, dict) and isinstance(container.get("image"), str):
            container.setdefault("imagePullPolicy", _pull_policy(container["image"]))


def on_create(rtype: resources.ResourceType, obj: dict[str, Any], store: Any) -> None:
    meta, spec = obj["metadata"], obj.get("spec")
    if not rtype.custom and rtype.kind in ("Job", "StatefulSet", "Deployment"):
        obj["status"] = {"replicas": 0} if rtype.kind == "StatefulSet" else {}
    elif _is(rtype, "", "Service"):
        obj["status"] = {"loadBalancer": {}}
    if _is(rtype, "", "Namespace"):
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj["status"] = {"phase": "Active"}
    elif _is(rtype, "", "Pod") and isinstance(spec, dict):
        _pod_spec_defaults(spec)
        obj["status"] = {"phase": "Pending"}
    elif _is(rtype, "batch", "Job") and isinstance(spec, dict):
        _job_defaults(meta, spec)
    elif _is(rtype, "apps", "StatefulSet") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        spec.setdefault("revisionHistoryLimit", 10)
        _pod_spec_defaults(((spec.get("template") or {}).get("spec")) or {})
    elif _is(rtype, "apps", "Deployment") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _pod_spec_defaults(((spec.get("template") or {}).get("spec")) or {})
    elif _is(rtype, "", "Service") and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            spec["clusterIP"] = spec.get("clusterIP") or f"10.96.{next(_cluster_ips) // 250}.{next(_cluster_ips) % 250}"
        spec["clusterIPs"] = [spec["clusterIP"]]
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
    elif _is(rtype, "", "Secret"):
        obj.setdefault("type", "Opaque")
    elif _is(rtype, "apiextensions.k8s.io", "CustomResourceDefinition"):
        names = (spec or {}).get("names") or {}
        obj["status"] = {"acceptedNames": names, "storedVersions": [
            v["name"] for v in (spec or {}).get("versions") or [] if v.get("storage")], "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
             "lastTransitionTime": store_now()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": store_now()}]}


def store_now() -> str:
    from tests.support.fakekube import store
    return store.now()


def _job_defaults(meta: dict[str, Any], spec: dict[str, Any]) -> None:
    uid = meta["uid"]
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completions", 1)
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    if not spec.get("manualSelector"):
        labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": uid, "job-name": meta["name"]})
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    pod_spec = template.get("spec")
    if isinstance(pod_spec, dict):
        for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
            if isinstance(container, dict) and isinstance(container.get("image"), str):
                container.setdefault("imagePullPolicy", _pull_policy(container["image"]))


def normalize(rtype: resources.ResourceType, obj: dict[str, Any]) -> None:
    """Per-write conversions: Secret stringData folds into data."""
    if _is(rtype, "", "Secret") and isinstance(obj.get("stringData"), dict):
        data = obj.setdefault("data", {}) or {}
        obj["data"] = data
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def semantic_problem(rtype: resources.ResourceType, obj: dict[str, Any]) -> str | None:
    """A validation the schemas cannot express, as ``field: message``; None when fine."""
    spec = obj.get("spec") or {}
    if _is(rtype, "batch", "Job"):
        restart = (((spec.get("template") or {}).get("spec")) or {}).get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            return f'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never" (got {restart!r})'
    if rtype.group in ("apps", "batch") and rtype.kind in ("StatefulSet", "Deployment", "Job") and not rtype.custom:
        selector = spec.get("selector")
        labels = (((spec.get("template") or {}).get("metadata")) or {}).get("labels") or {}
        if rtype.kind != "Job" and not selector:
            return "spec.selector: Required value"
        if selector and not selectors.label_selector_matches(selector, labels):
            return "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
    if _is(rtype, "apiextensions.k8s.io", "CustomResourceDefinition"):
        expected = f'{spec.get("names", {}).get("plural")}.{spec.get("group")}'
        if obj["metadata"]["name"] != expected:
            return f'metadata.name: Invalid value: "{obj["metadata"]["name"]}": must be spec.names.plural+"."+spec.group'
        storage = [v for v in spec.get("versions") or [] if v.get("storage")]
        if len(storage) != 1:
            return "spec.versions: Invalid value: must have exactly one version marked as storage version"
    return None


def immutable_change(rtype: resources.ResourceType, new: dict[str, Any], old: dict[str, Any]) -> str | None:
    """``field: Invalid value: ...: field is immutable`` when an update changes an immutable field."""
    fields: list[tuple[str, ...]] = []
    if _is(rtype, "batch", "Job"):
        fields = [("spec", "selector"), ("spec", "template"), ("spec", "completions")]
    elif _is(rtype, "apps", "StatefulSet"):
        fields = [("spec", "selector"), ("spec", "volumeClaimTemplates"), ("spec", "serviceName")]
    elif _is(rtype, "apps", "Deployment"):
        fields = [("spec", "selector")]
    elif rtype.group == "karpenter.sh" and rtype.kind == "NodeClaim":
        fields = [("spec",)]          # the CRD's CEL rule `self == oldSelf`
    elif _is(rtype, "", "Secret") or _is(rtype, "", "ConfigMap"):
        if old.get("immutable") and (new.get("data") != old.get("data")):
            return "data: Forbidden: field is immutable when `immutable` is set"
    for path in fields:
        if _dig(new, path) != _dig(old, path):
            return f"{'.'.join(path)}: Invalid value: field is immutable"
    return None


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj
