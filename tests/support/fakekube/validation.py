"""Validation of every write, as a strict API server would do it.

Built-in kinds: ``kubernetes_validate.validate(obj, version, strict=True)`` for each Kubernetes
version the fake was started with (official JSON schemas; strict means unknown fields are
rejected). Custom resources: the CRD version's ``openAPIV3Schema`` turned into a JSON schema
(draft 2020-12) — ``x-kubernetes-preserve-unknown-fields`` keeps a subtree open,
``x-kubernetes-int-or-string`` accepts both, ``nullable`` accepts null, every other object with
``properties`` rejects unknown fields (like ``fieldValidation=Strict``, the default of kubectl
since 1.27; the fake does not prune). ``default`` values are filled in before validation, as
the API server's structural defaulting does. CEL rules (``x-kubernetes-validations``) and
``format`` checks are not evaluated.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import jsonschema
import kubernetes_validate


class Invalid(ValueError):
    """An object that fails validation: answered 422 ``reason: Invalid`` with one cause per error."""

    def __init__(self, message: str, causes: list[dict[str, str]], unknown_fields: list[str] | None = None):
        super().__init__(message)
        self.causes = causes
        self.unknown_fields = unknown_fields or []      # paths of fields the schema does not declare


def _field_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.lru_cache(maxsize=256)
def _builtin_validator(version: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """The validator ``kubernetes_validate.validate(obj, version, strict=True)`` builds, built once.

    kubernetes_validate re-reads and re-parses the (multi-megabyte) definitions file on every call
    (~10 ms); the schema files, the schema selection and the validator class here are its own.
    """
    from referencing import Registry, Resource
    from kubernetes_validate import utils

    schema_version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(version)][-1]
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"v{schema_version}-local-strict"
    try:
        schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json",
                                       version)
    except FileNotFoundError:
        raise kubernetes_validate.SchemaNotFoundError(version=version, kind=kind, api_version=api_version) from None
    definitions = _definitions(schema_dir, version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@functools.lru_cache(maxsize=8)
def _definitions(schema_dir: str, version: str) -> Any:
    from kubernetes_validate import utils

    return utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)


def validate_builtin(obj: dict[str, Any], versions: tuple[str, ...]) -> None:
    for version in versions:
        try:
            try:
                _builtin_validator(version, obj["kind"], obj["apiVersion"]).validate(obj)
            except jsonschema.ValidationError as err:
                raise kubernetes_validate.ValidationError(err, version=version) from None
        except kubernetes_validate.ValidationError as err:
            field = _field_path(err.path)
            message = f"{field}: {err.message} (Kubernetes {version} schema)" if field else \
                f"{err.message} (Kubernetes {version} schema)"
            unknown = []
            if err.validator == "additionalProperties" and err.validator_value is False \
                    and isinstance(err.instance, dict):
                names = sorted(set(err.instance) - set((err.schema or {}).get("properties") or {}))
                unknown = [f"{field}.{n}" if field else n for n in names]
            raise Invalid(message, [{"reason": "FieldValueInvalid", "message": message, "field": field}],
                          unknown) from None
        except kubernetes_validate.SchemaNotFoundError as err:
            raise Invalid(err.message, [{"reason": "FieldValueNotSupported", "message": err.message,
                                         "field": "kind"}]) from None


def _convert(schema: dict[str, Any], root: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "example", "externalDocs", "nullable",
                                                     "format"):
            continue
        if key == "properties":
            out[key] = {k: _convert(v) for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = _convert(value)
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_convert(v) for v in value]
        elif key == "not":
            out[key] = _convert(value)
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if root:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {"type": "object"}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_convert(json.loads(schema_json), root=True))


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill ``default`` values of absent properties inside objects that are present (structural defaulting)."""
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                if key not in (schema.get("properties") or {}):
                    apply_defaults(obj[key], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])
    return obj


def validate_custom(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    causes = []
    unknown_fields = []
    for err in errors:
        field = _field_path(err.path)
        if err.validator == "additionalProperties" and err.validator_value is False:
            unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for name in unknown:
                full = f"{field}.{name}" if field else name
                causes.append({"reason": "FieldValueInvalid", "field": full,
                               "message": f"{full}: field not declared in schema"})
                unknown_fields.append(full)
            continue
        causes.append({"reason": "FieldValueInvalid", "field": field, "message": f"{field}: {err.message}"})
    raise Invalid("; ".join(c["message"] for c in causes), causes, unknown_fields)
