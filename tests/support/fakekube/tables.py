"""Server-side printing: the ``meta.k8s.io/v1`` Table a ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`` and prints the columns
the server returns (upper-cased; priority > 0 only with ``-o wide``). A custom resource's columns
are its CRD version's additionalPrinterColumns after NAME and before AGE, evaluated like the real
server (JSONPath subset of ``printer.py``; ``date`` cells as an age, ``integer``/``number``/
``boolean`` as JSON values, a missing value as an empty cell). Built-ins get the columns of
Kubernetes' own printers (pkg/printers/internalversion) for the kinds the fake serves; the rest the
default NAME, CREATED AT.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from tests.support.fakekube import printer, resources

Column = tuple[str, str, int]          # name, type, priority
Row = Callable[[dict[str, Any]], list[Any]]


def wants_table(accept: str | None) -> bool:
    """Whether an Accept header asks for a meta.k8s.io Table (v1 or v1beta1) before plain JSON."""
    for part in (accept or "").split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return True
        if part.strip().split(";")[0] in ("application/json", "*/*") and "as" not in params:
            return False
    return False


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(value: Any) -> str:
    when = _parse_time(value)
    if when is None:
        return "<unknown>"
    return human_duration((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _containers(obj: dict[str, Any], template: bool = True) -> list[dict[str, Any]]:
    spec = _get(obj, "spec", "template", "spec") if template else obj.get("spec")
    return list((spec or {}).get("containers") or [])


def _selector_text(selector: dict[str, Any] | None) -> str:
    from tests.support.fakekube.store import selectors_string
    return selectors_string(selector or {}) or "<none>"


# ---- built-in rows ----
def _pod(pod: dict[str, Any]) -> list[Any]:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(_containers(pod, template=False))
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = status.get("reason") or status.get("phase") or "Unknown"
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    for c in (status.get("initContainerStatuses") or []):
        state = c.get("state") or {}
        if state.get("waiting", {}).get("reason") and state["waiting"]["reason"] != "PodInitializing":
            reason = f"Init:{state['waiting']['reason']}"
    for c in statuses:
        state = c.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
    if _get(pod, "metadata", "deletionTimestamp"):
        reason = "Terminating"
    return [pod["metadata"]["name"], f"{ready}/{total}", reason, restarts, age(pod["metadata"].get("creationTimestamp")),
            status.get("podIP") or "<none>", _get(pod, "spec", "nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", "<none>"]


def _ports(svc: dict[str, Any]) -> str:
    out = []
    for port in _get(svc, "spec", "ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        out.append(f"{text}/{port.get('protocol') or 'TCP'}")
    return ",".join(out) or "<none>"


def _service(svc: dict[str, Any]) -> list[Any]:
    spec = svc.get("spec") or {}
    ingress = _get(svc, "status", "loadBalancer", "ingress") or []
    external = ",".join(i.get("ip") or i.get("hostname") or "" for i in ingress) or \
        ",".join(spec.get("externalIPs") or []) or ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
    if spec.get("type") == "ExternalName":
        external = spec.get("externalName") or "<none>"
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    return [svc["metadata"]["name"], spec.get("type") or "ClusterIP", spec.get("clusterIP") or "<none>", external,
            _ports(svc), age(svc["metadata"].get("creationTimestamp")), selector]


def _node(node: dict[str, Any]) -> list[Any]:
    conditions = _get(node, "status", "conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    status = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    if _get(node, "spec", "unschedulable"):
        status += ",SchedulingDisabled"
    labels = node["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = _get(node, "status", "nodeInfo") or {}
    addresses = _get(node, "status", "addresses") or []
    internal = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "<none>")
    external = next((a["address"] for a in addresses if a.get("type") == "ExternalIP"), "<none>")
    return [node["metadata"]["name"], status, ",".join(roles) or "<none>", age(node["metadata"].get("creationTimestamp")),
            info.get("kubeletVersion") or "", internal, external, info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


def _images(obj: dict[str, Any]) -> tuple[str, str]:
    containers = _containers(obj)
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def _statefulset(sts: dict[str, Any]) -> list[Any]:
    names, images = _images(sts)
    ready = int(_get(sts, "status", "readyReplicas") or 0)
    return [sts["metadata"]["name"], f"{ready}/{_get(sts, 'spec', 'replicas') or 0}",
            age(sts["metadata"].get("creationTimestamp")), names, images]


def _deployment(dep: dict[str, Any]) -> list[Any]:
    names, images = _images(dep)
    status = dep.get("status") or {}
    return [dep["metadata"]["name"], f"{int(status.get('readyReplicas') or 0)}/{_get(dep, 'spec', 'replicas') or 0}",
            int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0),
            age(dep["metadata"].get("creationTimestamp")), names, images,
            _selector_text(_get(dep, "spec", "selector"))]


def _job(job: dict[str, Any]) -> list[Any]:
    names, images = _images(job)
    status = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    state = "Complete" if conditions.get("Complete") == "True" else "Failed" if conditions.get("Failed") == "True" \
        else "Suspended" if _get(job, "spec", "suspend") else "Running"
    completions = _get(job, "spec", "completions")
    done = int(status.get("succeeded") or 0)
    start, end = _parse_time(status.get("startTime")), _parse_time(status.get("completionTime"))
    duration = ""
    if start is not None:
        stop = end or datetime.datetime.now(datetime.timezone.utc)
        duration = human_duration((stop - start).total_seconds())
    return [job["metadata"]["name"], state, f"{done}/{completions}" if completions is not None else f"{done}/1 of 1",
            duration, age(job["metadata"].get("creationTimestamp")), names, images,
            _selector_text(_get(job, "spec", "selector"))]


def _event(ev: dict[str, Any]) -> list[Any]:
    involved = ev.get("involvedObject") or {}
    last = ev.get("lastTimestamp") or ev.get("eventTime") or ev["metadata"].get("creationTimestamp")
    first = ev.get("firstTimestamp") or ev.get("eventTime") or ev["metadata"].get("creationTimestamp")
    source = ev.get("source") or {}
    return [age(last), ev.get("type") or "", ev.get("reason") or "",
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}", involved.get("fieldPath") or "",
            ", ".join(v for v in (source.get("component"), source.get("host")) if v) or ev.get("reportingComponent") or "",
            (ev.get("message") or "").strip(), age(first), int(ev.get("count") or 1), ev["metadata"]["name"]]


def _name_age(extra: Callable[[dict[str, Any]], list[Any]]) -> Row:
    def row(obj: dict[str, Any]) -> list[Any]:
        return [obj["metadata"]["name"], *extra(obj), age(obj["metadata"].get("creationTimestamp"))]
    return row


BUILTIN: dict[tuple[str, str], tuple[list[Column], Row]] = {
    ("", "Pod"): ([("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
                   ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1), ("Nominated Node", "string", 1),
                   ("Readiness Gates", "string", 1)], _pod),
    ("", "Service"): ([("Name", "string", 0), ("Type", "string", 0), ("Cluster-IP", "string", 0),
                       ("External-IP", "string", 0), ("Port(s)", "string", 0), ("Age", "string", 0),
                       ("Selector", "string", 1)], _service),
    ("", "Node"): ([("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0),
                    ("Version", "string", 0), ("Internal-IP", "string", 1), ("External-IP", "string", 1),
                    ("OS-Image", "string", 1), ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)],
                   _node),
    ("apps", "StatefulSet"): ([("Name", "string", 0), ("Ready", "string", 0), ("Age", "string", 0),
                               ("Containers", "string", 1), ("Images", "string", 1)], _statefulset),
    ("apps", "Deployment"): ([("Name", "string", 0), ("Ready", "string", 0), ("Up-to-date", "integer", 0),
                              ("Available", "integer", 0), ("Age", "string", 0), ("Containers", "string", 1),
                              ("Images", "string", 1), ("Selector", "string", 1)], _deployment),
    ("batch", "Job"): ([("Name", "string", 0), ("Status", "string", 0), ("Completions", "string", 0),
                        ("Duration", "string", 0), ("Age", "string", 0), ("Containers", "string", 1),
                        ("Images", "string", 1), ("Selector", "string", 1)], _job),
    ("", "ConfigMap"): ([("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
                        _name_age(lambda o: [len(o.get("data") or {}) + len(o.get("binaryData") or {})])),
    ("", "Secret"): ([("Name", "string", 0), ("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
                     _name_age(lambda o: [o.get("type") or "Opaque", len(o.get("data") or {})])),
    ("coordination.k8s.io", "Lease"): ([("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)],
                                       _name_age(lambda o: [_get(o, "spec", "holderIdentity") or ""])),
    ("", "Namespace"): ([("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)],
                        _name_age(lambda o: [_get(o, "status", "phase") or "Active"])),
    ("", "ServiceAccount"): ([("Name", "string", 0), ("Secrets", "integer", 0), ("Age", "string", 0)],
                             _name_age(lambda o: [len(o.get("secrets") or [])])),
    ("", "PersistentVolumeClaim"): ([("Name", "string", 0), ("Status", "string", 0), ("Volume", "string", 0),
                                     ("Capacity", "string", 0), ("Access Modes", "string", 0),
                                     ("StorageClass", "string", 0), ("Age", "string", 0)],
                                    _name_age(lambda o: [_get(o, "status", "phase") or "Pending",
                                                         _get(o, "spec", "volumeName") or "",
                                                         _get(o, "status", "capacity", "storage") or "",
                                                         ",".join(_get(o, "status", "accessModes") or []),
                                                         _get(o, "spec", "storageClassName") or "<unset>"])),
    ("", "Event"): ([("Last Seen", "string", 0), ("Type", "string", 0), ("Reason", "string", 0),
                     ("Object", "string", 0), ("Subobject", "string", 1), ("Source", "string", 1),
                     ("Message", "string", 0), ("First Seen", "string", 1), ("Count", "string", 1),
                     ("Name", "string", 1)], _event),
}

DEFAULT: tuple[list[Column], Row] = (
    [("Name", "string", 0), ("Created At", "date", 0)],
    lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp") or ""])


def _cell(col_type: str, values: list[Any]) -> Any:
    """A CRD column's cell from the values its JSONPath selected (the first, like the real convertor)."""
    if not values or values[0] is None:
        return None
    value = values[0]
    if col_type == "date":
        return age(value)
    if col_type == "integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if col_type == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if col_type == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, (dict, list)):
        import json
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _custom(rtype: resources.ResourceType) -> tuple[list[Column], Row]:
    cols = list(rtype.printer_columns)
    columns: list[Column] = [("Name", "string", 0)]
    columns += [(c["name"], c.get("type", "string"), int(c.get("priority") or 0)) for c in cols]
    has_age = any(c["name"].lower() == "age" for c in cols)
    if not has_age:
        columns.append(("Age", "date", 0))

    def row(obj: dict[str, Any]) -> list[Any]:
        cells: list[Any] = [obj["metadata"]["name"]]
        for c in cols:
            try:
                cells.append(_cell(c.get("type", "string"), printer.evaluate(c["jsonPath"], obj)))
            except ValueError:
                cells.append(None)
        if not has_age:
            cells.append(age(obj["metadata"].get("creationTimestamp")))
        return cells
    return columns, row


def table(rtype: resources.ResourceType, objects: list[dict[str, Any]], resource_version: str,
          include_object: str = "Metadata") -> dict[str, Any]:
    """The Table for a list (or a one-item list for a GET of one object)."""
    if rtype.custom:
        columns, row = _custom(rtype)
    else:
        columns, row = BUILTIN.get((rtype.group, rtype.kind), DEFAULT)
    rows = []
    for obj in objects:
        entry: dict[str, Any] = {"cells": row(obj)}
        if include_object == "Object":
            entry["object"] = obj
        elif include_object != "None":
            entry["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": obj["metadata"]}
        rows.append(entry)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [{"name": n, "type": t, "format": "name" if n == "Name" else "", "description": n,
                                   "priority": p} for n, t, p in columns],
            "rows": rows}
