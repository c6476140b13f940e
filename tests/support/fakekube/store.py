"""The fake's state: objects, resource versions, the event log watches read, and the verbs.

One lock guards everything; every write goes through :meth:`Store.commit`, which validates the
object, assigns the next global resourceVersion, bumps ``generation`` when anything outside
metadata and status changed, records a watch event and wakes waiting watchers. The HTTP layer
(`server.py`) and the controllers (`controllers.py`) both call these verbs, so controller writes
are validated and watched like client writes.
"""

from __future__ import annotations

import copy
import datetime
import threading
import uuid
from typing import Any, Callable, Iterable

from tests.support.fakekube import defaults, patches, resources, validation

Key = tuple[str, str, str, str]          # group, plural, namespace ("" when cluster-scoped), name
EVENT_LOG_LIMIT = 10000
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class ApiError(Exception):
    """An answer other than success: HTTP status, Status reason, message, details."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}
        self.unknown_fields: list[str] = []       # fields the schema does not declare (validation failures)
        self.details_version = ""

    def status_body(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": self.details, "code": self.code}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource_name(rtype: resources.ResourceType) -> str:
    return f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural


def not_found(rtype: resources.ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_resource_name(rtype)} "{name}" not found',
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    def __init__(self, versions: tuple[str, ...]):
        self.versions = versions
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[Key, dict[str, Any]] = {}
        self.types: list[resources.ResourceType] = list(resources.BUILTINS)
        self.events: list[tuple[int, str, tuple[str, str], dict[str, Any]]] = []
        self.applied: dict[tuple[str, str], Any] = {}        # (uid, field manager) -> last applied config
        self.rv = 0
        self.conflicts: list[list[Any]] = []                  # [kind_lower, name, times]
        self.stopped = False
        for ns in DEFAULT_NAMESPACES:
            self.create(self.find_type("v1", "Namespace"), {"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": ns}})

    # ---- types ----
    def find_type(self, api_version: str, kind: str) -> resources.ResourceType:
        group, _, version = api_version.rpartition("/")
        for t in self.types:
            if t.group == group and t.version == version and t.kind.lower() == kind.lower():
                return t
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({kind} {api_version})")

    def type_for_path(self, group: str, version: str, plural: str) -> resources.ResourceType | None:
        return next((t for t in self.types if t.group == group and t.version == version and t.plural == plural), None)

    def group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.types:
            if t.version not in out.setdefault(t.group, []):
                out[t.group].append(t.version)
        return out

    def _install_crd_types(self, crd: dict[str, Any]) -> None:
        new = resources.types_from_crd(crd)
        keys = {(t.group, t.plural) for t in new}
        self.types = [t for t in self.types if (t.group, t.plural) not in keys or not t.custom] + new

    def _remove_crd_types(self, crd: dict[str, Any]) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        self.types = [t for t in self.types if not (t.custom and t.group == group and t.plural == plural)]
        for key in [k for k in self.objects if k[:2] == (group, plural)]:
            self._record("DELETED", key, self.objects.pop(key))

    # ---- reading ----
    def _key(self, rtype: resources.ResourceType, namespace: str | None, name: str) -> Key:
        return (rtype.group, rtype.plural, (namespace or "") if rtype.namespaced else "", name)

    def _present(self, rtype: resources.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rtype.api_version, rtype.kind
        return out

    def get(self, rtype: resources.ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get(self._key(rtype, namespace, name))
            if obj is None:
                raise not_found(rtype, name)
            return self._present(rtype, obj)

    def list(self, rtype: resources.ResourceType, namespace: str | None = None,
             predicate: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for key, obj in sorted(self.objects.items()):
                if key[:2] != rtype.storage_key or (namespace and rtype.namespaced and key[2] != namespace):
                    continue
                if predicate is None or predicate(obj):
                    out.append(self._present(rtype, obj))
            return out

    # ---- writing ----
    def _record(self, event_type: str, key: Key, obj: dict[str, Any]) -> None:
        if event_type == "DELETED":
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, event_type, key[:2], copy.deepcopy(obj)))
        del self.events[:-EVENT_LOG_LIMIT]
        self.changed.notify_all()

    def _validate(self, rtype: resources.ResourceType, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name", "")
        kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
        try:
            if rtype.custom:
                validation.apply_defaults(obj, rtype.schema or {})
                validation.validate_custom(obj, rtype.schema or {})
            else:
                validation.validate_builtin(obj, self.versions)
                problem = defaults.semantic_problem(rtype, obj)
                if problem:
                    raise validation.Invalid(problem, [{"reason": "FieldValueInvalid", "message": problem,
                                                        "field": problem.split(":")[0]}])
        except validation.Invalid as err:
            error = ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {err}',
                             {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": err.causes})
            error.unknown_fields = err.unknown_fields        # answered 400 under fieldValidation=Strict
            error.details_version = rtype.version
            raise error from None

    def _check_immutable(self, rtype: resources.ResourceType, obj: dict[str, Any], old: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        problem = defaults.immutable_change(rtype, obj, old)
        if problem:
            kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
            raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {problem}',
                           {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": [
                               {"reason": "FieldValueInvalid", "field": problem.split(":")[0], "message": problem}]})

    def check_conflict_fault(self, rtype: resources.ResourceType, name: str) -> None:
        """Answer 409 when ``conflict_next`` armed a conflict for this object (any write, creates included)."""
        with self.lock:
            self._check_conflict_fault(rtype, name)

    def _check_conflict_fault(self, rtype: resources.ResourceType, name: str) -> None:
        for entry in self.conflicts:
            if entry[0] in (rtype.kind.lower(), rtype.plural) and entry[1] == name and entry[2] > 0:
                entry[2] -= 1
                raise self._conflict(rtype, name)

    def _conflict(self, rtype: resources.ResourceType, name: str) -> ApiError:
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {_resource_name(rtype)} "{name}": the object '
                        "has been modified; please apply your changes to the latest version and try again",
                        {"name": name, "group": rtype.group, "kind": rtype.plural})

    def commit(self, rtype: resources.ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
               dry_run: bool = False) -> dict[str, Any]:
        """Validate and store ``obj`` (a new object when ``old`` is None); returns what is stored."""
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta = obj.setdefault("metadata", {})
        meta.pop("managedFields", None)
        defaults.normalize(rtype, obj)
        if old is not None:
            for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                          "deletionGracePeriodSeconds"):
                if old["metadata"].get(field) is not None:
                    meta[field] = old["metadata"][field]
                elif field.startswith("deletion"):
                    meta.pop(field, None)     # set by a delete only, never by a client's write
            if old["metadata"].get("deletionTimestamp"):
                added = [f for f in meta.get("finalizers") or [] if f not in (old["metadata"].get("finalizers") or [])]
                if added:
                    raise ApiError(422, "Invalid", f'{rtype.kind} "{meta.get("name")}" is invalid: metadata.finalizers: '
                                   f"Forbidden: no new finalizers can be added if the object is being deleted, "
                                   f"found new finalizers {added}", {"name": meta.get("name"), "kind": rtype.kind,
                                                                     "group": rtype.group, "causes": [
                                       {"reason": "FieldValueForbidden", "field": "metadata.finalizers",
                                        "message": "Forbidden: no new finalizers can be added if the object is "
                                        f"being deleted, found new finalizers {added}"}]})
            meta["generation"] = old["metadata"].get("generation", 1)
            if _spec_part(obj) != _spec_part(old):
                meta["generation"] += 1
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if dict(obj, apiVersion=None) == dict(old, apiVersion=None):
                return self._present(rtype, old)
            self._validate(rtype, obj)
            self._check_immutable(rtype, obj, old)
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.update(creationTimestamp=now(), generation=1)
            self._validate(rtype, obj)
        meta["resourceVersion"] = str(self.rv + 1)
        if dry_run:
            return self._present(rtype, obj)
        self.rv += 1
        key = self._key(rtype, meta.get("namespace"), meta["name"])
        if rtype.custom and rtype.version != self._storage_version(rtype):
            obj["apiVersion"] = f"{rtype.group}/{self._storage_version(rtype)}"
        self.objects[key] = obj
        self._record("ADDED" if old is None else "MODIFIED", key, obj)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rtype, key, "Background")    # the last finalizer went: the deletion completes
        if rtype.kind == "CustomResourceDefinition" and rtype.group == "apiextensions.k8s.io":
            self._install_crd_types(obj)
        return self._present(rtype, obj)

    def _storage_version(self, rtype: resources.ResourceType) -> str:
        crd = self.objects.get(("apiextensions.k8s.io", "customresourcedefinitions", "",
                                f"{rtype.plural}.{rtype.group}"))
        return resources.crd_storage_version(crd) if crd else rtype.version

    def _require_namespace(self, rtype: resources.ResourceType, namespace: str | None) -> None:
        if not rtype.namespaced:
            return
        if not namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object must be set")
        if ("", "namespaces", "", namespace) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})

    def create(self, rtype: resources.ResourceType, body: dict[str, Any], namespace: str | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        with self.lock:
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {}) or {}
            obj["metadata"] = meta
            if rtype.namespaced:
                if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                    raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                   "namespace sent on the request")
                meta["namespace"] = namespace or meta.get("namespace")
            else:
                meta.pop("namespace", None)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if not meta.get("name"):
                raise ApiError(422, "Invalid", f"{rtype.kind} is invalid: metadata.name: Required value: name or "
                               "generateName is required", {"kind": rtype.kind, "causes": [
                                   {"reason": "FieldValueRequired", "field": "metadata.name",
                                    "message": "Required value: name or generateName is required"}]})
            self._require_namespace(rtype, meta.get("namespace"))
            for field in ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            key = self._key(rtype, meta.get("namespace"), meta["name"])
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{_resource_name(rtype)} "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": rtype.group, "kind": rtype.plural})
            defaults.on_create(rtype, obj, self)
            return self.commit(rtype, obj, None, dry_run)

    def _current(self, rtype: resources.ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get(self._key(rtype, namespace, name))
        if obj is None:
            raise not_found(rtype, name)
        return obj

    def _keep_other_part(self, rtype: resources.ResourceType, new: dict[str, Any], old: dict[str, Any],
                         subresource: str | None) -> dict[str, Any]:
        """Main-resource writes keep status (when there is a status subresource); /status writes keep the rest."""
        if subresource == "status":
            out = copy.deepcopy(old)
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
            return out
        if "status" in rtype.subresources:
            new = copy.deepcopy(new)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def replace(self, rtype: resources.ResourceType, namespace: str | None, name: str, body: dict[str, Any],
                subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        with self.lock:
            old = self._current(rtype, namespace, name)
            self._check_conflict_fault(rtype, name)
            meta = body.get("metadata") or {}
            if meta.get("name") not in (None, name):
                raise ApiError(400, "BadRequest", f'the name of the object ({meta.get("name")}) does not match the '
                               f"name on the URL ({name})")
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            new = self._keep_other_part(rtype, body, old, subresource)
            return self.commit(rtype, new, old, dry_run)

    def patch(self, rtype: resources.ResourceType, namespace: str | None, name: str, body: Any, content_type: str,
              subresource: str | None = None, field_manager: str | None = None, force: bool = False,
              dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Apply a patch; returns (object, created) — only server-side apply creates."""
        with self.lock:
            if content_type.startswith("application/apply-patch"):
                return self._apply(rtype, namespace, name, body, field_manager, force, subresource, dry_run)
            old = self._current(rtype, namespace, name)
            self._check_conflict_fault(rtype, name)
            base = copy.deepcopy(old)
            base["apiVersion"], base["kind"] = rtype.api_version, rtype.kind
            try:
                if content_type.startswith("application/json-patch"):
                    new = patches.json_patch(base, body)
                elif content_type.startswith("application/merge-patch"):
                    new = patches.merge_patch(base, body)
                elif content_type.startswith("application/strategic-merge-patch"):
                    if rtype.custom:
                        raise ApiError(415, "UnsupportedMediaType", "strategic merge patch is not supported for "
                                       "custom resources: use a merge patch or server-side apply")
                    new = patches.strategic_merge(base, body)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format "
                                   f"- accepted media types include: application/json-patch+json, "
                                   f"application/merge-patch+json, application/apply-patch+yaml (got {content_type})")
            except patches.PatchError as err:
                raise ApiError(422, "Invalid", str(err)) from None
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            new = self._keep_other_part(rtype, new, old, subresource)
            return self.commit(rtype, new, old, dry_run), False

    def _apply(self, rtype: resources.ResourceType, namespace: str | None, name: str, body: Any,
               field_manager: str | None, force: bool, subresource: str | None,
               dry_run: bool) -> tuple[dict[str, Any], bool]:
        if not field_manager:
            raise ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                           "is required for apply patch")
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise ApiError(400, "BadRequest", "apply patches must set apiVersion and kind")
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise ApiError(400, "BadRequest", "the name of the applied object does not match the name on the URL")
        old = self.objects.get(self._key(rtype, namespace, name))
        applied = patches.strip_directives(body)
        self._check_conflict_fault(rtype, name)
        if old is None:
            if subresource:
                raise not_found(rtype, name)
            obj = copy.deepcopy(applied)
            obj.setdefault("metadata", {})["name"] = name
            created = self.create(rtype, obj, namespace, dry_run)
            if not dry_run:
                self.applied[(created["metadata"]["uid"], field_manager)] = applied
            return created, True
        uid = old["metadata"]["uid"]
        if not force:
            for (other_uid, manager), other in self.applied.items():
                if other_uid == uid and manager != field_manager:
                    fields = patches.conflicting_fields(applied, other)
                    if fields:
                        raise ApiError(409, "Conflict", f'Apply failed with {len(fields)} conflict(s): conflict with '
                                       f'"{manager}": {", ".join(fields)}', {"name": name, "group": rtype.group,
                                                                            "kind": rtype.plural, "causes": [
                                           {"reason": "FieldManagerConflict", "field": f, "message":
                                            f'conflict with "{manager}"'} for f in fields]})
        previous = self.applied.get((uid, field_manager))
        base = copy.deepcopy(old)
        if previous is not None:
            base = patches.remove_unapplied(base, previous, applied)
        new = patches.strategic_merge(base, applied)
        new = self._keep_other_part(rtype, new, old, subresource)
        result = self.commit(rtype, new, old, dry_run)
        if not dry_run:
            self.applied[(uid, field_manager)] = applied
            if force:
                self._drop_forced_fields(uid, field_manager, applied)
        return result, False

    def _drop_forced_fields(self, uid: str, field_manager: str, applied: Any) -> None:
        for (other_uid, manager), other in list(self.applied.items()):
            if other_uid == uid and manager != field_manager:
                self.applied[(other_uid, manager)] = _without(other, applied)

    def delete(self, rtype: resources.ResourceType, namespace: str | None, name: str,
               propagation: str | None = None, dry_run: bool = False,
               precondition_rv: str | None = None) -> dict[str, Any]:
        with self.lock:
            old = self._current(rtype, namespace, name)
            self._check_conflict_fault(rtype, name)
            if precondition_rv and precondition_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            if dry_run:
                return self._present(rtype, old)
            if propagation is None:
                propagation = "Orphan" if rtype.kind == "Job" and rtype.group == "batch" else "Background"
            if old["metadata"].get("finalizers"):
                return self._mark_deleted(rtype, old, propagation)
            self._remove(rtype, self._key(rtype, namespace, name), propagation)
            return self._present(rtype, old)

    def _mark_deleted(self, rtype: resources.ResourceType, old: dict[str, Any], propagation: str) -> dict[str, Any]:
        """An object with finalizers: deletionTimestamp set, kept until an update removes the last finalizer.

        Foreground propagation deletes the dependents at once (no ``foregroundDeletion`` finalizer is
        modelled); Background and Orphan act when the object finally goes.
        """
        if old["metadata"].get("deletionTimestamp"):
            return self._present(rtype, old)
        obj = copy.deepcopy(old)
        obj["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self._key(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        self.objects[key] = obj
        self._record("MODIFIED", key, obj)
        if propagation == "Foreground":
            uid = obj["metadata"]["uid"]
            for k, dep in list(self.objects.items()):
                if any(o.get("uid") == uid for o in dep["metadata"].get("ownerReferences") or []):
                    self._remove(self._type_of(k), k, "Foreground")
        return self._present(rtype, obj)

    # ---- the scale subresource ----
    def get_scale(self, rtype: resources.ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self.lock:
            return self._scale_of(rtype, self._current(rtype, namespace, name))

    def _scale_of(self, rtype: resources.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        spec_path, status_path, selector_path = (list(rtype.scale_paths) + ["", "", ""])[:3]
        selector = _dig(obj, selector_path) if selector_path else None
        if not selector_path and not rtype.custom:
            selector = selectors_string((obj.get("spec") or {}).get("selector") or {})
        meta = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": _dig(obj, spec_path) or 0},
                "status": {"replicas": _dig(obj, status_path) or 0, **({"selector": selector} if selector else {})}}

    def update_scale(self, rtype: resources.ResourceType, namespace: str | None, name: str, body: Any,
                     content_type: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """PUT (``content_type`` None) or PATCH of ``.../scale``: sets the spec replicas path of the object."""
        with self.lock:
            old = self._current(rtype, namespace, name)
            self._check_conflict_fault(rtype, name)
            current = self._scale_of(rtype, old)
            try:
                if content_type is None:
                    scale = body
                elif content_type.startswith("application/json-patch"):
                    scale = patches.json_patch(current, body)
                elif content_type.startswith("application/apply-patch"):
                    raise ApiError(415, "UnsupportedMediaType", "fakekube: server-side apply of /scale is not modelled")
                else:
                    scale = patches.merge_patch(current, body)
            except patches.PatchError as err:
                raise ApiError(422, "Invalid", str(err)) from None
            replicas = ((scale or {}).get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                               f"{replicas!r}: must be a non-negative integer",
                               {"name": name, "group": "autoscaling", "kind": "Scale", "causes": [
                                   {"reason": "FieldValueInvalid", "field": "spec.replicas",
                                    "message": "must be a non-negative integer"}]})
            wanted_rv = ((scale.get("metadata") or {}).get("resourceVersion")) if content_type is None else None
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            new = copy.deepcopy(old)
            _set(new, rtype.scale_paths[0], replicas)
            stored = self.commit(rtype, new, old, dry_run)
            return self._scale_of(rtype, stored)

    def _remove(self, rtype: resources.ResourceType, key: Key, propagation: str) -> None:
        obj = self.objects.pop(key, None)
        if obj is None:
            return
        self._record("DELETED", key, obj)
        uid = obj["metadata"]["uid"]
        self.applied = {k: v for k, v in self.applied.items() if k[0] != uid}
        if rtype.kind == "Namespace" and not rtype.group:
            for k in [k for k in self.objects if k[2] == key[3]]:
                self._remove(self._type_of(k), k, "Background")
        if rtype.kind == "CustomResourceDefinition":
            self._remove_crd_types(obj)
        for k, dep in list(self.objects.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == uid for o in owners):
                continue
            if propagation == "Orphan" or len(owners) > 1:
                remaining = [o for o in owners if o.get("uid") != uid]
                updated = copy.deepcopy(dep)
                updated["metadata"]["ownerReferences"] = remaining or None
                if not remaining:
                    updated["metadata"].pop("ownerReferences")
                self.rv += 1
                updated["metadata"]["resourceVersion"] = str(self.rv)
                self.objects[k] = updated
                self._record("MODIFIED", k, updated)
            else:
                self._remove(self._type_of(k), k, propagation)

    def _type_of(self, key: Key) -> resources.ResourceType:
        return next(t for t in self.types if t.storage_key == key[:2])

    def events_since(self, rv: int, storage_key: tuple[str, str]) -> Iterable[tuple[int, str, dict[str, Any]]]:
        for event_rv, event_type, skey, obj in self.events:
            if event_rv > rv and skey == storage_key:
                yield event_rv, event_type, obj

    def oldest_event_rv(self) -> int:
        return self.events[0][0] if self.events else 0


def _dig(obj: Any, path: str) -> Any:
    """The value at a simple JSON path like ``.spec.replicas`` (None when absent)."""
    for part in [p for p in path.split(".") if p]:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = [p for p in path.split(".") if p]
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


def selectors_string(selector: dict[str, Any]) -> str:
    """A LabelSelector as the string a Scale's status.selector carries (``a=b,c in (d,e)``)."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), ",".join(expr.get("values") or [])
        terms.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key,
                      "DoesNotExist": f"!{key}"}.get(op, key))
    return ",".join(terms)


def _without(config: Any, taken: Any) -> Any:
    if isinstance(config, dict) and isinstance(taken, dict):
        return {k: _without(v, taken[k]) if k in taken else v for k, v in config.items()
                if k not in taken or isinstance(v, dict)}
    return config
