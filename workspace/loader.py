"""Load workspace files as ``kubectl apply -f`` would take them, with errors that say what to change.

A file may hold several YAML documents: Workspaces, and the ConfigMaps and Secrets their fields
name (``inference.config``, ``tuning.config``, ``presetOptions.modelAccessSecret``). ConfigMaps are
kept by name so the flow can read ``training_config.yaml`` / ``inference_config.yaml`` from them;
Secrets are only noted by name — their data never leaves the file.

Every problem becomes one line of a ``SpecError`` (all of a file's problems in one error, its
``problems`` holding each) that names the file, the field path in the YAML's own camelCase spelling,
and what to change, e.g. ``ws.yaml: tuning.method: 'qlora4' is not one of lora, qlora``. A misspelt
field is one line (``resource: unknown field 'labelselector'; did you mean 'labelSelector'?``), not
"unknown" plus "missing". A workspace that parses then goes through Kaito's admission rules
(``workspace.admission``), so ``validate``, ``plan`` and ``apply`` refuse what Kaito's webhook refuses.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from workspace import admission, settings, spec
from workspace.errors import Problem, SpecError


@dataclass
class Bundle:
    """What one file (or several) declared."""

    workspaces: list[spec.Workspace] = field(default_factory=list)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)

    def config_map(self, name: str | None) -> dict[str, str] | None:
        return self.config_maps.get(name) if name else None


def load_file(path: str | Path, *, require_workspace: bool = True) -> Bundle:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such file; check the path given to -f")
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; pass a YAML file with -f")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; pass a YAML workspace file") from None
    return load_text(text, source=str(path), require_workspace=require_workspace)


def load_files(paths: list[str | Path], *, require_workspace: bool = True) -> Bundle:
    out = Bundle()
    for p in paths:
        b = load_file(p, require_workspace=require_workspace)
        out.workspaces += b.workspaces
        out.config_maps.update(b.config_maps)
        out.secrets += b.secrets
        out.other += b.other
    return out


def load_text(text: str, *, source: str = "<input>", require_workspace: bool = True) -> Bundle:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{source}: not valid YAML{where}: {problem}; fix the indentation or quoting there") from None
    if not docs:
        raise SpecError(f"{source}: the file is empty; it should hold a Workspace (kind: Workspace)")
    bundle = Bundle()
    lines: list[str] = []
    problems: list[Problem] = []
    parsed: list[tuple[str, spec.Workspace]] = []

    def refuse(where: str, found: list[Problem]) -> None:
        problems.extend(found)
        lines.extend(p.line(where) for p in found)

    for i, doc in enumerate(docs):
        where = source if len(docs) == 1 else f"{source} (document {i + 1})"
        if not isinstance(doc, dict):
            raise SpecError(f"{where}: expected a mapping with apiVersion, kind and metadata, found {type(doc).__name__}")
        kind = doc.get("kind")
        if kind == "Workspace":
            ws, found = _parse(doc)
            refuse(where, found)
            if ws is not None:
                bundle.workspaces.append(ws)
                parsed.append((where, ws))
        elif kind == "ConfigMap":
            name = (doc.get("metadata") or {}).get("name")
            if not name:
                raise SpecError(f"{where}: metadata.name: required; name the ConfigMap so a workspace can refer to it")
            bundle.config_maps[name] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
        elif kind == "Secret":
            bundle.secrets.append((doc.get("metadata") or {}).get("name", ""))
        elif kind is None:
            raise SpecError(f"{where}: kind: required; add 'kind: Workspace'")
        else:
            bundle.other.append(doc)
    names = [w.name for w in bundle.workspaces]
    for dupe in sorted({n for n in names if names.count(n) > 1}):
        refuse(source, [Problem("metadata.name", f"workspace names must be unique in a file; repeated: {dupe}")])
    if not problems:
        s = settings.load()
        for where, ws in parsed:
            refuse(where, admission.admit(ws, bundle.config_maps, allow_private_urls=s.allow_private_urls,
                                          platform=s.platform, provisioner=s.provisioner))
    if problems:
        raise SpecError("\n".join(lines), problems=problems)
    if not bundle.workspaces and require_workspace:
        raise SpecError(f"{source}: no Workspace found (kinds seen: {', '.join(sorted({str(d.get('kind')) for d in docs}))})")
    return bundle


def _parse(doc: dict[str, Any]) -> tuple[spec.Workspace | None, list[Problem]]:
    api = doc.get("apiVersion")
    if api not in spec.API_VERSIONS:
        return None, [Problem("apiVersion", f"'{api}' is not one of {', '.join(spec.API_VERSIONS)}")]
    try:
        return spec.Workspace.model_validate(doc), []
    except ValidationError as exc:
        return None, _problems(exc)


def parse_workspace(doc: dict[str, Any], *, source: str = "<input>") -> spec.Workspace:
    """One Workspace document, parsed (not put through the admission rules)."""
    ws, found = _parse(doc)
    if ws is None:
        raise SpecError("\n".join(p.line(source) for p in found), problems=found)
    return ws


# What the API server, kubectl and ``kaiflow controller`` add to a Workspace resource's annotations:
# kubectl's copy of the last applied file, and the controller's bookkeeping (``kaiflow.io/accepted-spec``,
# infra.kube.crcontrol.ACCEPTED) -- never the user's, so never a flow's parameter or an apply's input.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
CONTROLLER_ANNOTATION_PREFIX = "kaiflow.io/accepted"


def resource_document(obj: dict[str, Any]) -> dict[str, Any]:
    """A Workspace resource as the API server returns it (``kubectl get -o yaml``, a watch event, an
    InferenceSet's child), cut to the user's fields: name, namespace, labels, the user's annotations,
    ``resource``/``inference``/``tuning``. Server fields (uid, generation, managedFields, owner
    references, finalizers, status), kubectl's last-applied copy and the controller's annotations go."""
    m = obj.get("metadata") or {}
    notes = {k: v for k, v in (m.get("annotations") or {}).items()
             if k != LAST_APPLIED and not k.startswith(CONTROLLER_ANNOTATION_PREFIX)}
    meta = {k: v for k, v in {"name": m.get("name"), "namespace": m.get("namespace"), "labels": m.get("labels") or None,
                              "annotations": notes or None}.items() if v}
    return {"apiVersion": obj.get("apiVersion"), "kind": "Workspace", "metadata": meta,
            **{k: obj[k] for k in ("resource", "inference", "tuning") if obj.get(k) is not None}}


def from_resource(obj: dict[str, Any], *, admit: bool = False) -> spec.Workspace:
    """The workspace a Workspace resource declares (:func:`resource_document`'s fields); SpecError
    naming the field when it is not a valid one. ``admit``: put it through Kaito's admission rules
    too, as ``load_text`` does for a file."""
    doc = resource_document(obj)
    m = doc["metadata"]
    source = f"workspace {m.get('namespace', '')}/{m.get('name', '')}"
    if admit:
        return load_text(yaml.safe_dump(doc), source=source).workspaces[0]
    return parse_workspace(doc, source=source)


def dump(ws: spec.Workspace) -> str:
    """YAML for ``ws`` in Kaito's spelling (only the fields that were set)."""
    return yaml.safe_dump(ws.to_dict(), sort_keys=False)


# -- readable validation errors ---------------------------------------------------------------


def _problems(exc: ValidationError) -> list[Problem]:
    """pydantic's errors as problems, a misspelt field once: an unknown field whose close match is a
    missing required field beside it is one problem, not two."""
    errs = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
        errs.append((err, loc))
    close_of: dict[int, str] = {}
    for i, (err, loc) in enumerate(errs):
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_fields(loc[:-1]), n=1, cutoff=0.6)
            if close:
                close_of[i] = close[0]
    covered = {tuple(errs[i][1][:-1]) + (c,) for i, c in close_of.items()}
    out: list[Problem] = []
    for i, (err, loc) in enumerate(errs):
        if err["type"] == "extra_forbidden":
            known = _known_fields(loc[:-1])
            hint = (f"; did you mean '{close_of[i]}'?" if i in close_of
                    else f"; known fields: {', '.join(known)}" if known else "")
            out.append(Problem(_path(loc[:-1]), f"unknown field '{loc[-1]}'{hint}"))
        elif not (err["type"] == "missing" and tuple(loc) in covered):
            out.append(Problem(_path(loc), _describe(err, loc)))
    return out


def _path(loc: list[Any]) -> str:
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _describe(err: Any, loc: list[Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = ", ".join(c.strip().strip("'") for c in expected.replace(" or ", ",").split(","))
        return f"'{value}' is not one of {choices}"
    if kind == "missing":
        return "required field is missing; add it"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind in ("string_type", "int_type", "int_parsing", "list_type", "dict_type", "model_type", "bool_type"):
        msg = f"{msg} (got {value!r})"
    return msg


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return _unwrap(arg)
    if origin in (list, tuple):
        return _unwrap(typing.get_args(tp)[0])
    return tp


def _known_fields(loc: list[Any]) -> list[str]:
    model: Any = spec.Workspace
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        by_alias = {(f.alias or n): f for n, f in model.model_fields.items()}
        f = by_alias.get(part)
        if f is None:
            return []
        model = _unwrap(f.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [(f.alias or n) for n, f in model.model_fields.items()]
    return []
