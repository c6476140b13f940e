"""Workspace status: Kaito's conditions, as a small state machine persisted with the workspace.

    ResourceReady       nodes (or this machine) can run the plan          provision step
    JobStarted          the tuning job is running / ran                   tune step
    InferenceReady      the endpoint answers /health                      deploy step
    WorkspaceSucceeded  a tuning-only workspace finished                  end of flow
    WorkspaceReady      everything the workspace asked for is up          end of flow

Each condition is ``Unknown`` until its step runs, then ``True`` or ``False`` with a one-word
reason and a message that says what to do. A failed step sets its condition ``False`` and
``WorkspaceReady`` ``False``; conditions of steps that did not run keep their previous value, so a
failed re-apply still shows the endpoint that keeps serving.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from workspace import spec

RESOURCE_READY = "ResourceReady"
JOB_STARTED = "JobStarted"
INFERENCE_READY = "InferenceReady"
WORKSPACE_READY = "WorkspaceReady"
WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"


class Reporter(Protocol):
    """Where a step reports progress: the one status sink a platform composes (the workspace's
    record, plus the Workspace custom resource on a cluster; ``infra.records.RecordSink``)."""

    def condition(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        """Set condition ``type_`` (True/False/None for Unknown) with a one-word reason."""

    def event(self, reason: str, message: str, kind: str = "Normal") -> None:
        """Append an event (``kind`` Normal or Warning) to what ``describe`` shows."""


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict], type_: str, status: bool | None, reason: str, message: str = ""
) -> list[dict]:
    """Return ``conditions`` with ``type_`` set; the transition time changes only when the status does."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions]
    for c in out:
        if c["type"] == type_:
            if c.get("status") != value:
                c["lastTransitionTime"] = now()
            c.update(status=value, reason=reason, message=message)
            return out
    out.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now()})
    return out


def get_condition(conditions: list[dict], type_: str) -> dict | None:
    return next((c for c in conditions if c["type"] == type_), None)


def condition_value(conditions: list[dict], type_: str) -> str:
    c = get_condition(conditions, type_)
    return c["status"] if c else ""


def as_models(conditions: list[dict]) -> list[spec.Condition]:
    return [spec.Condition.model_validate(c) for c in conditions]
