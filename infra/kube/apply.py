"""Server-side apply, reads, deletes and watch-based waits on top of ``client.Kube``.

Every write kaiflow makes is a server-side apply with fieldManager ``kaiflow`` and ``force=true``
(kaiflow owns the fields it sets; re-applying an unchanged object changes nothing, its
resourceVersion included). Waits list once, then watch from that resourceVersion and re-check on
every event, so they react at once and never poll faster than events arrive; a dropped or ended
watch just re-lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from infra.kube import client as kclient
from workspace import errors

T = TypeVar("T")
APPLY = "application/apply-patch+yaml"


def _describe(obj: dict) -> str:
    ns = obj["metadata"].get("namespace")
    return f"{obj['kind']} {ns + '/' if ns else ''}{obj['metadata']['name']}"


def apply(kube: kclient.Kube, obj: dict, *, field_manager: str = kclient.FIELD_MANAGER) -> dict:
    """Server-side apply ``obj``; returns the object as the server stored it."""
    av, kind, m = obj["apiVersion"], obj["kind"], obj["metadata"]
    ns = m.get("namespace") if kclient.is_namespaced(av, kind) else None
    url = kclient.path(av, kind, ns, m["name"])
    return kube.request("PATCH", url, query={"fieldManager": field_manager, "force": "true"}, body=obj,
                        content_type=APPLY, what=f"apply {_describe(obj)}", group=kclient.group_of(av), type_missing=True)


def apply_status(kube: kclient.Kube, obj: dict, *, field_manager: str = kclient.FIELD_MANAGER + "-status") -> dict:
    """Server-side apply to the status subresource (``obj`` holds apiVersion, kind, metadata, status)."""
    av, kind, m = obj["apiVersion"], obj["kind"], obj["metadata"]
    url = kclient.path(av, kind, m.get("namespace"), m["name"], "status")
    return kube.request("PATCH", url, query={"fieldManager": field_manager, "force": "true"}, body=obj,
                        content_type=APPLY, what=f"write status of {_describe(obj)}", group=kclient.group_of(av),
                        type_missing=False)


def get(kube: kclient.Kube, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
    """The object, or None when it does not exist."""
    url = kclient.path(api_version, kind, namespace if kclient.is_namespaced(api_version, kind) else None, name)
    try:
        return kube.request("GET", url, what=f"get {kind} {name}", group=kclient.group_of(api_version))
    except errors.KaiflowError as exc:
        if exc.reason == "NotFound":
            return None
        raise


def label_selector(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def list_objects(kube: kclient.Kube, api_version: str, kind: str, namespace: str | None = None,
                 labels: dict[str, str] | None = None) -> tuple[list[dict], str]:
    """Items matching ``labels`` and the list's resourceVersion (to watch from)."""
    ns = namespace if kclient.is_namespaced(api_version, kind) else None
    query = {"labelSelector": label_selector(labels)} if labels else {}
    data = kube.request("GET", kclient.path(api_version, kind, ns), query=query, what=f"list {kind}",
                        group=kclient.group_of(api_version), type_missing=True)
    return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")


def delete(kube: kclient.Kube, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete one object (background propagation: its pods go too); False when it was already gone."""
    ns = namespace if kclient.is_namespaced(api_version, kind) else None
    try:
        kube.request("DELETE", kclient.path(api_version, kind, ns, name), body={"propagationPolicy": "Background"},
                     what=f"delete {kind} {name}", group=kclient.group_of(api_version))
        return True
    except errors.KaiflowError as exc:
        if exc.reason in ("NotFound", "CRDNotInstalled"):
            return False
        raise


def delete_labelled(kube: kclient.Kube, api_version: str, kind: str, namespace: str | None,
                    labels: dict[str, str]) -> list[str]:
    """Delete every object of a kind carrying ``labels``; returns their names."""
    try:
        items, _ = list_objects(kube, api_version, kind, namespace, labels)
    except errors.KaiflowError as exc:
        if exc.reason in ("NotFound", "CRDNotInstalled"):
            return []
        raise
    return [i["metadata"]["name"] for i in items
            if delete(kube, api_version, kind, i["metadata"]["name"], i["metadata"].get("namespace"))]


def wait_for(kube: kclient.Kube, api_version: str, kind: str, namespace: str | None, labels: dict[str, str] | None,
             check: Callable[[], T | None], *, timeout_s: float, describe: Callable[[], str]) -> T:
    """Call ``check`` until it returns something other than None; between calls, watch ``kind``
    (objects with ``labels``) for a change. On timeout, raise naming what was still missing."""
    deadline = time.monotonic() + timeout_s
    ns = namespace if kclient.is_namespaced(api_version, kind) else None
    url = kclient.path(api_version, kind, ns)
    while True:
        _, rv = list_objects(kube, api_version, kind, namespace, labels)
        result = check()
        if result is not None:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.KaiflowError(f"timed out after {timeout_s:g} s: {describe()}", reason="Timeout")
        query: dict[str, Any] = {"resourceVersion": rv} if rv else {}
        if labels:
            query["labelSelector"] = label_selector(labels)
        started = time.monotonic()
        for event in kube.stream(url, query, min(left, 10.0)):
            if event.get("type") != "BOOKMARK":
                break
        if time.monotonic() - started < 0.05:
            time.sleep(0.05)  # a watch that ends at once (an old resourceVersion): don't spin
