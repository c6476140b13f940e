"""The local platform's record of each workspace: one JSON file per workspace under KAIFLOW_HOME.

``kaiflow get/describe/delete`` read these from any shell without a Prefect server. A record holds
the spec as applied, its conditions, the endpoint, the served adapters (name → image digest and
local dir), the server's PID, the last flow run and a short event list. Writes are atomic (write a
temporary file, then rename), so a crash never leaves half a record.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from workspace import settings, status

MAX_EVENTS = 50


def root() -> Path:
    return settings.load().home_dir / "workspaces"


def workspace_dir(name: str) -> Path:
    return root() / name


def load(name: str) -> dict[str, Any] | None:
    path = workspace_dir(name) / "record.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save(name: str, record: dict[str, Any]) -> None:
    d = workspace_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".record-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, d / "record.json")


def update(name: str, **changes: Any) -> dict[str, Any]:
    record = load(name) or {"name": name, "created": status.now(), "conditions": [], "events": []}
    record.update(changes)
    save(name, record)
    return record


def add_event(name: str, reason: str, message: str, kind: str = "Normal") -> None:
    record = load(name) or {"name": name, "created": status.now(), "conditions": [], "events": []}
    record["events"] = (record.get("events", []) + [{"time": status.now(), "type": kind, "reason": reason, "message": message}])[-MAX_EVENTS:]
    save(name, record)


def set_condition(name: str, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
    record = load(name) or {"name": name, "created": status.now(), "conditions": [], "events": []}
    record["conditions"] = status.set_condition(record.get("conditions", []), type_, ok, reason, message)
    save(name, record)


def names() -> list[str]:
    if not root().exists():
        return []
    return sorted(p.parent.name for p in root().glob("*/record.json"))


def remove(name: str) -> None:
    import shutil

    shutil.rmtree(workspace_dir(name), ignore_errors=True)
