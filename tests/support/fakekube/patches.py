"""The four PATCH flavours the API server accepts, and the object merging server-side apply does.

- merge patch (RFC 7386): maps merged, ``null`` deletes, lists replaced;
- strategic merge patch: like merge patch, but lists of containers, env, ports, volumes, volume
  mounts, conditions, ... are merged by their merge key (a reasonable subset of the Go tags, see
  ``MERGE_KEYS``), with the ``$patch: delete|replace`` directives; other lists are replaced;
- JSON patch (RFC 6902) through the ``jsonpatch`` library;
- server-side apply (``apply``): the applied configuration is merged like a strategic merge
  patch, and fields this field manager applied last time but left out now are removed. Field
  ownership is tracked per field manager as its last applied configuration only (no managedFields).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",), "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"), "conditions": ("type",), "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",), "hostAliases": ("ip",), "topologySpreadConstraints": ("topologyKey",),
    "taints": ("key",), "finalizers": (),
}
_SET_LISTS = {"finalizers"}   # merged as sets of scalars


class PatchError(ValueError):
    """A patch the server cannot apply (answered 400 BadRequest or 422)."""


def _merge_key(field: str, items: list[Any]) -> str | None:
    for key in MERGE_KEYS.get(field, ()):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strategic_list(field: str, target: list[Any] | None, patch: list[Any]) -> list[Any]:
    if field in _SET_LISTS:
        merged = list(target or [])
        return merged + [p for p in patch if p not in merged]
    key = _merge_key(field, [p for p in patch if not (isinstance(p, dict) and "$patch" in p and len(p) == 1)])
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [strip_directives(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    if key is None or not isinstance(target, list):
        return [strip_directives(p) for p in patch]
    result = copy.deepcopy(target)
    for item in patch:
        index = next((i for i, t in enumerate(result) if isinstance(t, dict) and t.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strip_directives(item))
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return strip_directives(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        elif isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        else:
            result[key] = strategic_merge(result.get(key), value)
    return result


def strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [strip_directives(v) for v in value]
    return copy.deepcopy(value)


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise PatchError("json patch body must be a list of operations")
    try:
        return jsonpatch.apply_patch(target, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise PatchError(f"the json patch could not be applied: {err}") from err


def remove_unapplied(live: Any, previous: Any, applied: Any, field: str = "") -> Any:
    """Drop from ``live`` the fields ``previous`` (last apply) set that ``applied`` (this apply) no longer sets."""
    if isinstance(live, dict) and isinstance(previous, dict):
        applied = applied if isinstance(applied, dict) else {}
        result = dict(live)
        for key, prev_value in previous.items():
            if key not in applied:
                result.pop(key, None)
            elif key in result:
                result[key] = remove_unapplied(result[key], prev_value, applied[key], key)
        return result
    if isinstance(live, list) and isinstance(previous, list) and isinstance(applied, list):
        key = _merge_key(field, previous + applied)
        if key is None:
            return live
        kept_keys = {a.get(key) for a in applied}
        prev_by_key = {p.get(key): p for p in previous}
        applied_by_key = {a.get(key): a for a in applied}
        out = []
        for item in live:
            k = item.get(key) if isinstance(item, dict) else None
            if k in prev_by_key and k not in kept_keys:
                continue
            if k in prev_by_key:
                item = remove_unapplied(item, prev_by_key[k], applied_by_key[k], field)
            out.append(item)
        return out
    return live


def conflicting_fields(applied: Any, other: Any, path: str = "") -> list[str]:
    """Field paths another apply manager set (``other``) that ``applied`` sets to a different value."""
    if isinstance(applied, dict) and isinstance(other, dict):
        out: list[str] = []
        for key, value in applied.items():
            if key in other:
                out += conflicting_fields(value, other[key], f"{path}.{key}")
        return out
    return [] if applied == other else [path]
