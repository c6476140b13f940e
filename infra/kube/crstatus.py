"""The Workspace custom resource: the owner of everything namespaced a workspace creates, and where
its status is shown to ``kubectl get workspace`` (the seed's printer columns).

Status is written by server-side apply of the status subresource (field manager
``kaiflow-status``), always as the whole list of conditions the workspace's record holds, so the
CR never shows a mix of old and new runs. Writing it is best effort: an API fault, or a CR that
is not there (yet, or any more), is logged and never fails a step — the record is the source of
truth, the CR its mirror.

:class:`CrMirror` is that mirror as a status sink (``workspace.status.Reporter``): it wraps the
record's sink and, after each condition, writes all of the record's conditions to the CR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import manifests
from workspace import errors, spec, status

log = logging.getLogger(__name__)


def ensure(kube: kclient.Kube, ws: spec.Workspace) -> dict:
    """Apply the Workspace CR (the owner of the workspace's objects); returns it with its uid."""
    return kapply.apply(kube, manifests.workspace_cr(ws, kube.namespace_for(ws)))


def get(kube: kclient.Kube, ws: spec.Workspace) -> dict | None:
    """The workspace's CR as the cluster has it, or None."""
    return kapply.get(kube, ws.api_version, "Workspace", ws.name, kube.namespace_for(ws))


def owner(kube: kclient.Kube, ws: spec.Workspace) -> dict | None:
    """The owner reference to the CR for the workspace's namespaced objects (None: no CR)."""
    cr = get(kube, ws)
    return manifests.owner_reference(cr) if cr and cr["metadata"].get("uid") else None


def delete(kube: kclient.Kube, ws: spec.Workspace) -> bool:
    """Delete the CR; False when it was gone already."""
    return kapply.delete(kube, ws.api_version, "Workspace", ws.name, kube.namespace_for(ws))


def write_status(kube: kclient.Kube | Callable[[], kclient.Kube], ws: spec.Workspace, conditions: list[dict],
                 worker_nodes: list[str] | None = None) -> bool:
    """Server-side apply ``conditions`` (and ``worker_nodes``, when any) to the CR's status. False
    when the CR does not exist (yet); API faults are logged, never allowed to fail a step.
    ``kube``: a client, or how to make one (its faults count as API faults)."""
    try:
        kube = kube() if callable(kube) else kube
        ns = kube.namespace_for(ws)
        if get(kube, ws) is None:
            return False
        st: dict[str, Any] = {"conditions": [_kube_condition(c) for c in conditions]}
        if worker_nodes:
            st["workerNodes"] = list(worker_nodes)
        kapply.apply_status(kube, {"apiVersion": ws.api_version, "kind": "Workspace",
                                   "metadata": {"name": ws.name, "namespace": ns}, "status": st})
        return True
    except errors.KaiflowError as exc:
        log.warning("could not write the status of workspace %s to its custom resource: %s", ws.name, exc)
        return False


def _kube_condition(c: dict) -> dict:
    return {"type": c["type"], "status": c["status"], "reason": c.get("reason") or "Unknown",
            "message": c.get("message") or "", "lastTransitionTime": c.get("lastTransitionTime") or status.now()}


class CrMirror:
    """A status sink that writes to ``inner`` (the workspace's record) and then mirrors all the
    conditions ``conditions()`` returns (the record's, after the write) onto the CR, with the
    worker nodes ``worker_nodes()`` returns. Events stay in ``inner``."""

    def __init__(self, inner: status.Reporter, ws: spec.Workspace, *, kube: Callable[[], kclient.Kube],
                 conditions: Callable[[], list[dict]], worker_nodes: Callable[[], list[str]]) -> None:
        self.inner = inner
        self.ws = ws
        self._connect = kube
        self._kube: kclient.Kube | None = None
        self._conditions = conditions
        self._worker_nodes = worker_nodes

    def condition(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        self.inner.condition(type_, ok, reason, message)
        self.mirror()

    def event(self, reason: str, message: str, kind: str = "Normal") -> None:
        self.inner.event(reason, message, kind)

    def mirror(self) -> bool:
        """Write the record's conditions and worker nodes to the CR now (best effort, as above)."""
        return write_status(self._client, self.ws, self._conditions(), self._worker_nodes())

    def _client(self) -> kclient.Kube:
        if self._kube is None:
            self._kube = self._connect()
        return self._kube
