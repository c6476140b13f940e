"""The official ``kubernetes`` client, configured from kaiflow's settings, and one request helper.

Configuration: ``KAIFLOW_KUBECONFIG`` (else ``$KUBECONFIG`` / ``~/.kube/config``) with
``KAIFLOW_KUBE_CONTEXT`` (else the current context); with no kubeconfig file at all, the in-cluster
service account. Namespace of a workspace: its ``metadata.namespace``, else ``KAIFLOW_NAMESPACE``,
else the context's (or the service account's) namespace, else ``default``.

Why one generic helper (``Kube.request``) instead of the typed APIs: the flow handles a dozen kinds,
custom resources included, the same way (server-side apply, list by label, watch, delete); a table
of kinds to paths keeps that uniform and still goes through the client's ``ApiClient`` (auth, TLS,
proxies). Transient faults (429/5xx/409, timeouts, resets) are retried here a few times with
backoff (:mod:`infra.retry`, layer 1; ``KAIFLOW_KUBE_BACKOFF_S``); what still fails is raised as a
transient kaiflow error for the task's own retries (layer 2).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import retry
from infra.kube import errors as kerrors
from workspace import errors, spec

log = logging.getLogger(__name__)

# (apiVersion, kind) -> (plural, namespaced)
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Service"): ("services", True),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Event"): ("events", True),
    ("v1", "Node"): ("nodes", False),
    ("v1", "Namespace"): ("namespaces", False),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("karpenter.sh/v1", "NodeClaim"): ("nodeclaims", False),
    ("kaito.sh/v1alpha1", "Workspace"): ("workspaces", True),
    ("kaito.sh/v1beta1", "Workspace"): ("workspaces", True),
    ("kaito.sh/v1alpha1", "InferenceSet"): ("inferencesets", True),
    ("kaito.sh/v1beta1", "InferenceSet"): ("inferencesets", True),
}
FIELD_MANAGER = "kaiflow"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def group_of(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of a kind (collection, or one object and its subresource)."""
    try:
        plural, namespaced = RESOURCES[(api_version, kind)]
    except KeyError:
        raise errors.KaiflowError(f"kaiflow does not handle {kind} ({api_version}) objects") from None
    base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    out = f"{base}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


def is_namespaced(api_version: str, kind: str) -> bool:
    return RESOURCES[(api_version, kind)][1]


@dataclass
class Kube:
    """A configured ``ApiClient`` and the namespace workspaces without one go to."""

    api: Any  # kubernetes.client.ApiClient
    default_namespace: str
    attempts: int = 4
    backoff_s: float = 0.2
    timeout_s: float = 30.0
    max_backoff_s: float = 5.0

    @property
    def policy(self) -> retry.Policy:
        return retry.Policy(attempts=self.attempts, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)

    def namespace_for(self, ws: spec.Workspace) -> str:
        return ws.metadata.namespace or self.default_namespace

    def request(self, method: str, url: str, *, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, what: str = "", group: str = "", type_missing: bool = False,
                timeout: float | None = None, raw: bool = False) -> Any:
        """One API call, retried on transient faults; returns the decoded JSON (or text when ``raw``)."""
        what = what or f"{method} {url}"

        def once() -> Any:
            try:
                resp = self._call(method, url, query, body, content_type, timeout)
                data = resp.data.decode("utf-8", errors="replace")
                return data if raw else (json.loads(data) if data else {})
            except Exception as exc:  # noqa: BLE001 - classified below
                mapped = _classify(exc, what, group, type_missing)
                if mapped is None:
                    raise
                raise mapped from None  # a TransientError is tried again, anything else is final

        return self.policy.call(once, retry_on=errors.TransientError, what=what, log=log,
                                give_up=lambda last, _attempts: last)

    def stream(self, url: str, query: dict[str, Any], timeout_s: float) -> Iterator[dict]:
        """Watch events (``{"type", "object"}``) until the server ends the watch or ``timeout_s``."""
        from kubernetes.watch.watch import iter_resp_lines

        q = {**query, "watch": "true", "timeoutSeconds": max(1, int(timeout_s)), "allowWatchBookmarks": "true"}
        try:
            resp = self._call("GET", url, q, None, None, timeout_s + 5, stream=True)
        except Exception as exc:  # noqa: BLE001
            mapped = _classify(exc, f"watch {url}", group_of_url(url), False)
            if mapped is None:
                raise
            if not mapped.transient:
                raise mapped from None
            return
        try:
            for line in iter_resp_lines(resp):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
        except Exception as exc:  # noqa: BLE001 - a dropped watch just ends; the caller re-lists
            if _classify(exc, "watch", "", False) is None:
                raise
        finally:
            resp.release_conn()

    def _call(self, method: str, url: str, query: dict[str, Any] | None, body: Any, content_type: str | None,
              timeout: float | None, stream: bool = False) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type or "application/json"}
        return self.api.call_api(url, method, query_params=list((query or {}).items()), header_params=headers,
                                 body=body, auth_settings=["BearerToken"], _preload_content=False,
                                 _request_timeout=timeout or self.timeout_s)


def group_of_url(url: str) -> str:
    parts = url.split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "apis" else ""


def _classify(exc: BaseException, what: str, group: str, type_missing: bool) -> errors.KaiflowError | None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        return kerrors.from_api_exception(exc, what=what, group=group, type_missing=type_missing)
    if isinstance(exc, (HTTPError, TimeoutError, ConnectionError)):
        return kerrors.from_transport_error(exc, what=what)
    return None


def _kubeconfig_path(settings: Any) -> Path | None:
    if settings.kubeconfig:
        return Path(settings.kubeconfig).expanduser()
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env:  # named explicitly: a missing file is an error, not a silent switch to in-cluster config
        return Path(env).expanduser()
    candidate = Path("~/.kube/config").expanduser()
    return candidate if candidate.is_file() else None


def connect(settings: Any) -> Kube:
    """A ``Kube`` from settings: kubeconfig (+context) or in-cluster config."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    path_ = _kubeconfig_path(settings)
    ns = None
    try:
        if path_ is not None:
            if not path_.is_file():
                source = "KAIFLOW_KUBECONFIG" if settings.kubeconfig else "KUBECONFIG"
                raise errors.KaiflowError(f"kubeconfig {path_} ({source}) does not exist; point {source} at a kubeconfig file")
            config.load_kube_config(config_file=str(path_), context=settings.kube_context, client_configuration=cfg)
            contexts, active = config.list_kube_config_contexts(config_file=str(path_))
            chosen = next((c for c in contexts if c["name"] == settings.kube_context), active) if settings.kube_context else active
            ns = ((chosen or {}).get("context") or {}).get("namespace")
        else:
            config.load_incluster_config(client_configuration=cfg)
            ns = SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.is_file() else None
    except ConfigException as exc:
        raise errors.KaiflowError(
            f"no Kubernetes configuration: {exc}; set KAIFLOW_KUBECONFIG (or KUBECONFIG) to a kubeconfig file, "
            "or run inside a cluster", reason="NoKubeconfig") from None
    cfg.retries = 0  # kaiflow retries (and classifies) faults itself
    return Kube(api=client.ApiClient(cfg), default_namespace=settings.namespace or ns or "default",
                timeout_s=settings.kube_request_timeout_s, backoff_s=settings.kube_backoff_s)
