"""Label and field selectors as the API server parses them (``a=b,c!=d,e in (f,g),!h,i``).

Also the matching the fake scheduler needs: ``LabelSelector`` objects (matchLabels /
matchExpressions), node-selector terms of required node affinity, and taint toleration.
"""

from __future__ import annotations

import re
from typing import Any, Callable

Requirement = Callable[[dict[str, str]], bool]

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s+(in|notin)\s+\((.*)\)\s*$")


class SelectorError(ValueError):
    """A selector string the server cannot parse (answered 400 BadRequest)."""


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def _parse_term(term: str) -> Requirement:
    m = _SET_RE.match(term)
    if m:
        key, op = m.group(2), m.group(3)
        values = {v.strip() for v in m.group(4).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (part.strip() for part in term.split(op, 1))
            if not key:
                raise SelectorError(f"invalid selector term {term!r}: empty key")
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[A-Za-z0-9_./-]+", term):
        return lambda labels: term in labels
    raise SelectorError(f"unable to parse requirement {term!r}")


def parse_label_selector(selector: str | None) -> Requirement:
    """A predicate over a labels dict; an empty selector matches everything."""
    reqs = [_parse_term(t) for t in _split_terms(selector or "")]
    return lambda labels: all(r(labels or {}) for r in reqs)


def parse_field_selector(selector: str | None) -> Callable[[dict[str, Any]], bool]:
    """Field selectors on metadata.name, metadata.namespace and (pods) spec.nodeName / status.phase."""
    reqs = []
    for term in _split_terms(selector or ""):
        neg = "!=" in term
        field, value = (p.strip() for p in re.split(r"!=|==|=", term, maxsplit=1))
        path = field.split(".")
        if field not in ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "involvedObject.name",
                         "involvedObject.kind", "spec.unschedulable"):
            raise SelectorError(f'field label not supported: {field}')
        reqs.append((path, value, neg))

    def matches(obj: dict[str, Any]) -> bool:
        for path, value, neg in reqs:
            cur: Any = obj
            for part in path:
                cur = cur.get(part) if isinstance(cur, dict) else None
            actual = "" if cur is None else str(cur).lower() if isinstance(cur, bool) else str(cur)
            if (actual == value) == neg:
                return False
        return True
    return matches


def labels_dict_selector(labels: dict[str, str] | None) -> Requirement:
    want = dict(labels or {})
    return lambda have: all((have or {}).get(k) == v for k, v in want.items())


def _expression_matches(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def label_selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics (an empty selector matches everything)."""
    selector = selector or {}
    labels = labels or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def node_affinity_matches(pod_spec: dict[str, Any], node: dict[str, Any]) -> bool:
    """nodeSelector plus requiredDuringSchedulingIgnoredDuringExecution terms (ORed; expressions ANDed)."""
    labels = node.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    terms = required.get("nodeSelectorTerms") or []
    return any(all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
               and all(_field_expression_matches(e, node) for e in term.get("matchFields") or [])
               for term in terms)


def _field_expression_matches(expr: dict[str, Any], node: dict[str, Any]) -> bool:
    if expr.get("key") != "metadata.name":
        return False
    return _expression_matches(expr, {"metadata.name": node["metadata"]["name"]})


def tolerates(tolerations: list[dict[str, Any]] | None, taint: dict[str, Any]) -> bool:
    """Whether one of the pod's tolerations tolerates the taint (NoSchedule/NoExecute matter; PreferNoSchedule never blocks)."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for tol in tolerations or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        op = tol.get("operator", "Equal")
        if not tol.get("key") and op == "Exists":
            return True
        if tol.get("key") != taint.get("key"):
            continue
        if op == "Exists" or tol.get("value", "") == taint.get("value", ""):
            return True
    return False
