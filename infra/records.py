"""Every workspace's record, on every platform: one JSON file per workspace under KAIFLOW_HOME.

``kaiflow get/describe/delete/logs`` read these from any shell, without a Prefect server or a
cluster. The record is typed (:class:`WorkspaceRecord`); what each field holds and who writes it:

    spec, platform, instance, last_flow_run   the workspace flow, at the start of each run
    conditions, events                        the status sink (:class:`RecordSink`), nothing else
    endpoint, server                          the platform's deploy (local: the server's PID too)
    adapter_image, tuning_cache_key,
    dataset_digest                            the flows, after a push or a promotion
    retrain                                   the retrain flow's last decision
    cluster                                   kubernetes/aks: namespace, provisioner, nodes, placement

Every change is a read-modify-write under a per-workspace file lock (``filelock``), so two
processes (an apply and a retrain, a flow and ``kaiflow delete``) never lose each other's change;
the write itself is atomic (a temporary file renamed over the record), so a crash never leaves
half a record. Records written by earlier versions (an untyped dict with a ``kube`` key) load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from workspace import settings, status

MAX_EVENTS = 50


class Event(BaseModel):
    time: str
    type: str = "Normal"
    reason: str
    message: str = ""


class ServedAdapter(BaseModel):
    """One adapter an endpoint serves."""

    model_config = ConfigDict(extra="allow")

    name: str
    digest: str = ""
    strength: float | None = None
    image: str = ""
    dir: str | None = None  # local platform: where the server loaded it from


class Server(BaseModel):
    """What serves the workspace: a local process (pid, port) or a cluster Service."""

    model_config = ConfigDict(extra="allow")

    endpoint: str = ""
    model: str | None = None
    config: str | None = None  # local: the inference_config.yaml text the server was started with
    pid: int | None = None
    port: int | None = None
    adapters: list[ServedAdapter] = Field(default_factory=list)
    # local: the supervisor that restarts a crashed server (infra.supervisor), what it has seen
    engine: str | None = None
    supervisor_pid: int | None = None
    restarts: int = 0  # a pod's RESTARTS: crashes the supervisor restarted the server after
    last_exit: str | None = None  # "killed by SIGKILL", "exit status 1"
    down_since: str | None = None  # when the server was seen down; None while it serves


class Placement(BaseModel):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class ClusterState(BaseModel):
    """kubernetes/aks: where the workspace's objects and nodes are."""

    model_config = ConfigDict(extra="allow")

    namespace: str | None = None
    provisioner: str | None = None
    nodes: list[str] = Field(default_factory=list)
    placement: Placement = Field(default_factory=Placement)


class WorkspaceRecord(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str
    created: str = Field(default_factory=status.now)
    platform: str = "local"
    spec: dict[str, Any] | None = None
    instance: str | None = None
    last_flow_run: str | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    endpoint: str | None = None
    server: Server | None = None
    adapter_image: str | None = None
    tuning_cache_key: str | None = None
    dataset_digest: str | None = None
    retrain: dict[str, Any] | None = None
    cluster: ClusterState | None = Field(default=None, validation_alias=AliasChoices("cluster", "kube"))

    def condition(self, type_: str) -> dict[str, Any] | None:
        return status.get_condition(self.conditions, type_)


def root() -> Path:
    return settings.load().home_dir / "workspaces"


def workspace_dir(name: str) -> Path:
    return root() / name


def _path(name: str) -> Path:
    return workspace_dir(name) / "record.json"


def _lock(name: str) -> FileLock:
    d = workspace_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d / ".record.lock"), timeout=60)


def _read(name: str) -> WorkspaceRecord | None:
    path = _path(name)
    if not path.exists():
        return None
    return WorkspaceRecord.model_validate(json.loads(path.read_text()))


def _write(record: WorkspaceRecord) -> None:
    d = workspace_dir(record.name)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".record-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(record.model_dump(mode="json", exclude_none=True), f, indent=2, sort_keys=True)
    os.replace(tmp, d / "record.json")


def load(name: str) -> WorkspaceRecord | None:
    """The workspace's record, or None when no workspace of that name was applied."""
    return _read(name)


def change(name: str, fn: Callable[[WorkspaceRecord], None]) -> WorkspaceRecord:
    """Apply ``fn`` to the record (created when missing) under the workspace's lock, and save it."""
    with _lock(name):
        record = _read(name) or WorkspaceRecord(name=name)
        fn(record)
        _write(record)
        return record


def update(name: str, **fields: Any) -> WorkspaceRecord:
    """Set top-level fields (validated: ``server=Server(...)`` or a dict of its fields)."""

    def apply(record: WorkspaceRecord) -> None:
        for key, value in fields.items():
            if key not in WorkspaceRecord.model_fields:
                raise AttributeError(f"WorkspaceRecord has no field {key!r}")
            setattr(record, key, value)  # validated on assignment: a dict becomes its model

    return change(name, apply)


def add_event(name: str, reason: str, message: str, kind: str = "Normal") -> None:
    def apply(record: WorkspaceRecord) -> None:
        record.events = (record.events + [Event(time=status.now(), type=kind, reason=reason, message=message)])[-MAX_EVENTS:]

    change(name, apply)


def set_condition(name: str, type_: str, ok: bool | None, reason: str, message: str = "") -> WorkspaceRecord:
    def apply(record: WorkspaceRecord) -> None:
        record.conditions = status.set_condition(record.conditions, type_, ok, reason, message)

    return change(name, apply)


def names() -> list[str]:
    if not root().exists():
        return []
    return sorted(p.parent.name for p in root().glob("*/record.json"))


def remove(name: str) -> None:
    shutil.rmtree(workspace_dir(name), ignore_errors=True)


class RecordSink:
    """The status sink every platform starts from: conditions and events into the record
    (``workspace.status.Reporter``). A cluster platform wraps it to mirror the conditions onto
    the Workspace custom resource as well."""

    def __init__(self, name: str) -> None:
        self.name = name

    def condition(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        set_condition(self.name, type_, ok, reason, message)

    def event(self, reason: str, message: str, kind: str = "Normal") -> None:
        add_event(self.name, reason, message, kind)
