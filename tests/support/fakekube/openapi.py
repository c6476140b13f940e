"""OpenAPI v3 documents (``/openapi/v3`` and ``/openapi/v3/<group-version>``) built from what the fake validates with.

What kubectl reads from them:

- ``kubectl apply/create --validate=strict`` (the default) asks whether the server validates fields
  itself: a PATCH operation tagged with the kind's ``x-kubernetes-group-version-kind`` that lists
  the ``fieldValidation`` query parameter. The fake says yes for every kind, so kubectl sends
  ``fieldValidation=Strict`` and the server refuses unknown fields (the fake always does: see
  ``server.py``'s strict-decoding answer) instead of kubectl validating client-side;
- ``kubectl apply`` (client-side) computes a built-in's strategic merge patch from the schemas'
  ``x-kubernetes-patch-merge-key`` / ``-patch-strategy``;
- ``kubectl explain`` reads the schemas.

The schemas are the ones the fake validates with: built-in kinds from ``kubernetes_validate``'s
definitions for the newest Kubernetes version the fake serves (``$defs`` refs rewritten to
``#/components/schemas``, only what the served kinds reach), custom resources from their CRD's
``openAPIV3Schema``. No ``/openapi/v2``: kubectl 1.27+ uses v3 and only falls back to v2 when v3 fails.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from tests.support.fakekube import resources

_PARAMS = [
    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
]


@functools.lru_cache(maxsize=4)
def _definitions(k8s_version: str) -> dict[str, Any]:
    from kubernetes_validate import utils

    schema_version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(k8s_version)][-1]
    raw = utils.schema_contents(f"kubernetes-json-schema/v{schema_version}-local-strict/_definitions.json",
                                k8s_version)
    text = json.dumps(raw["$defs"]).replace('"#/$defs/', '"#/components/schemas/')
    return _openapi_types(json.loads(text))


def _openapi_types(value: Any) -> Any:
    """JSON Schema's ``"type": ["string", "null"]`` back to OpenAPI's ``"type": "string"`` (kubectl explain compares strings)."""
    if isinstance(value, dict):
        out = {k: _openapi_types(v) for k, v in value.items()}
        kind = out.get("type")
        if isinstance(kind, list):
            rest = [t for t in kind if t != "null"]
            if len(rest) == 1:
                out["type"] = rest[0]
            else:
                out.pop("type")
            if "null" in kind:
                out["nullable"] = True
        return out
    if isinstance(value, list):
        return [_openapi_types(v) for v in value]
    return value


def _builtin_name(defs: dict[str, Any], rtype: resources.ResourceType) -> str | None:
    for name, schema in defs.items():
        if not name.endswith(f".{rtype.version}.{rtype.kind}"):
            continue
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if gvk.get("group", "") == rtype.group and gvk.get("version") == rtype.version and gvk.get("kind") == rtype.kind:
                return name
    return None


def _refs(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            out.add(ref.rsplit("/", 1)[1])
        for v in value.values():
            _refs(v, out)
    elif isinstance(value, list):
        for v in value:
            _refs(v, out)


def _closure(defs: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in out or name not in defs:
            continue
        out[name] = defs[name]
        found: set[str] = set()
        _refs(defs[name], found)
        todo += sorted(found - set(out))
    return out


def _crd_schema_name(rtype: resources.ResourceType) -> str:
    return ".".join(reversed(rtype.group.split("."))) + f".{rtype.version}.{rtype.kind}"


def _crd_schema(rtype: resources.ResourceType) -> dict[str, Any]:
    schema = json.loads(json.dumps(rtype.schema or {}))
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]}
    schema["x-kubernetes-group-version-kind"] = [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
    return schema


def _operations(rtype: resources.ResourceType, schema_name: str) -> dict[str, Any]:
    gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else "/api/v1"
    collection = f"{prefix}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{prefix}/{rtype.plural}"
    ref = {"$ref": f"#/components/schemas/{schema_name}"}
    body = {"content": {"application/json": {"schema": ref}}}
    ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}

    def op(action: str, verb: str, params: list[dict[str, Any]], with_body: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": f"{verb}{rtype.kind}", "parameters": params, "responses": ok,
                               "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
        if with_body:
            out["requestBody"] = body
        return out

    patch_params = _PARAMS + [{"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}}]
    patch_types = ["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"]
    if not rtype.custom:     # kubectl sends a custom resource a JSON merge patch because this is missing
        patch_types.append("application/strategic-merge-patch+json")
    patch_body = {"content": {t: {"schema": {"type": "object"}} for t in patch_types}}
    paths: dict[str, Any] = {
        collection: {"get": op("list", "list", []), "post": op("post", "create", _PARAMS, True)},
        f"{collection}/{{name}}": {
            "get": op("get", "read", []), "put": op("put", "replace", _PARAMS, True),
            "patch": dict(op("patch", "patch", patch_params), requestBody=patch_body),
            "delete": op("delete", "delete", [{"name": "dryRun", "in": "query", "schema": {"type": "string"}}])},
    }
    if rtype.namespaced:
        paths[f"{prefix}/{rtype.plural}"] = {"get": op("list", "listForAllNamespaces", [])}
    return paths


def root(types: list[resources.ResourceType], k8s_version: str) -> dict[str, Any]:
    """``/openapi/v3``: one entry per group-version, each with a hash of its document."""
    out: dict[str, Any] = {}
    for gv in sorted({(t.group, t.version) for t in types}):
        path = f"apis/{gv[0]}/{gv[1]}" if gv[0] else "api/v1"
        served = [[t.plural, t.kind, t.namespaced, t.schema] for t in types if (t.group, t.version) == gv]
        digest = hashlib.sha256(json.dumps([k8s_version, served], sort_keys=True).encode()).hexdigest()[:32].upper()
        out[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": out}


def group_version(types: list[resources.ResourceType], group: str, version: str,
                  k8s_version: str) -> dict[str, Any] | None:
    """``/openapi/v3/apis/<group>/<version>`` (``/openapi/v3/api/v1`` for the core group); None when not served."""
    served = [t for t in types if t.group == group and t.version == version]
    if not served:
        return None
    key = json.dumps([[t.plural, t.kind, t.namespaced, t.schema] for t in served], sort_keys=True)
    return json.loads(_group_version(key, group, version, k8s_version))


@functools.lru_cache(maxsize=64)
def _group_version(key: str, group: str, version: str, k8s_version: str) -> str:
    served = [resources.ResourceType(group, version, plural, kind, namespaced, schema=schema)
              for plural, kind, namespaced, schema in json.loads(key)]
    defs = _definitions(k8s_version)
    paths: dict[str, Any] = {}
    roots: list[str] = ["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "io.k8s.apimachinery.pkg.apis.meta.v1.Status"]
    custom: dict[str, Any] = {}
    for rtype in served:
        if rtype.custom:
            name = _crd_schema_name(rtype)
            custom[name] = _crd_schema(rtype)
        else:
            found = _builtin_name(defs, rtype)
            if found is None:
                continue
            name = found
            roots.append(name)
        paths.update(_operations(rtype, name))
    schemas = _closure(defs, roots)
    schemas.update(custom)
    return json.dumps({"openapi": "3.0.0", "info": {"title": "Kubernetes (fakekube)", "version": f"v{k8s_version}.0"},
                       "paths": paths, "components": {"schemas": schemas}})
