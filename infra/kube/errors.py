"""API server faults as kaiflow errors: transient ones are retried, the rest say what to do.

    429, 5xx, 409 (conflict), timeouts, resets   -> TransientError (retried: here, then by the task)
    401 / 403                                     -> KaiflowError: credentials or RBAC (deployments/rbac.yaml)
    404 on a custom resource's API                -> KaiflowError: install the CRD (deployments/crds/)
    404 otherwise                                 -> KaiflowError naming the object
    400 / 422                                     -> KaiflowError with the server's message (an invalid object)

Messages carry the server's ``message`` field, never request bodies (which may hold secrets).
"""

from __future__ import annotations

import json
from typing import Any

from workspace import errors

CRD_HINTS = {
    "kaito.sh": "install the Workspace CRD: kubectl apply -f deployments/crds/ (see deployments/README.md)",
    "karpenter.sh": "Karpenter's NodeClaim CRD is missing: install Karpenter (or the NodeClaim CRD from deployments/crds/), "
                    "or use bring-your-own nodes with KAIFLOW_PROVISIONER=byo",
}
TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def server_message(exc: Any) -> str:
    """The ``message`` of a Kubernetes Status body, else the HTTP reason."""
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    except (ValueError, TypeError):
        pass
    return str(getattr(exc, "reason", "") or type(exc).__name__)


def from_api_exception(exc: Any, *, what: str, group: str = "", type_missing: bool = False) -> errors.KaiflowError:
    """Map a ``kubernetes.client.ApiException`` raised while doing ``what``. ``type_missing``: a 404
    here can only mean the resource type is not served (an apply or a list), not a missing object."""
    status = int(getattr(exc, "status", 0) or 0)
    msg = server_message(exc)
    if status in TRANSIENT_STATUS or status == 0:
        return errors.TransientError(f"{what}: API server answered {status or 'no status'} ({msg}); retrying",
                                     reason="ApiServerUnavailable" if status != 409 else "Conflict")
    if status in (401, 403):
        return errors.KaiflowError(
            f"{what}: forbidden ({status}: {msg}); give the flow's service account the verbs in deployments/rbac.yaml "
            "or use a kubeconfig context that has them", reason="Forbidden")
    if status == 404 and group in CRD_HINTS and (type_missing or "could not find the requested resource" in msg.lower()):
        return errors.KaiflowError(f"{what}: the API {group} is not served; {CRD_HINTS[group]}", reason="CRDNotInstalled")
    if status == 404:
        return errors.KaiflowError(f"{what}: not found ({msg})", reason="NotFound")
    return errors.KaiflowError(f"{what}: rejected by the API server ({status}: {msg})", reason="Invalid")


def from_transport_error(exc: BaseException, *, what: str) -> errors.KaiflowError:
    """Connection refused/reset, read timeouts (urllib3) -> transient."""
    return errors.TransientError(f"{what}: API server unreachable ({type(exc).__name__}: {exc}); retrying",
                                 reason="ApiServerUnreachable")
