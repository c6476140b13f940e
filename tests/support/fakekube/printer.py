"""What ``kubectl get`` prints for a custom resource: its CRD's additionalPrinterColumns evaluated.

A tiny evaluator for the JSONPath subset CRDs use: ``.a.b``, escaped dots in label keys
(``.metadata.labels.node\\.kubernetes\\.io/instance-type``), list indexes ``[0]`` and filters
``[?(@.type=="Ready")]`` followed by a field. Missing paths give "" (kubectl prints ``<none>``... or
an empty cell for these filters).
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r'\.((?:\\.|[^.\[\\])+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_]+)==["\']([^"\']*)["\']\)\]')


def evaluate(path: str, obj: Any) -> list[Any]:
    """Every value the path selects (a filter may select several)."""
    values = [obj]
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath {path!r} at {path[pos:]!r}")
        pos = m.end()
        field, index, key, want = m.groups()
        nxt: list[Any] = []
        for value in values:
            if field is not None:
                name = field.replace("\\.", ".")
                if isinstance(value, dict) and name in value:
                    nxt.append(value[name])
            elif index is not None:
                if isinstance(value, list) and int(index) < len(value):
                    nxt.append(value[int(index)])
            elif isinstance(value, list):
                nxt.extend(v for v in value if isinstance(v, dict) and str(v.get(key)) == want)
        values = nxt
    return values


def columns(crd: dict[str, Any], obj: dict[str, Any], version: str | None = None) -> dict[str, str]:
    """Column name -> cell text for ``obj``, from the CRD version's additionalPrinterColumns."""
    versions = crd["spec"]["versions"]
    spec = next(v for v in versions if v["name"] == (version or obj["apiVersion"].split("/")[-1]))
    out = {"NAME": obj["metadata"]["name"]}
    for col in spec.get("additionalPrinterColumns") or []:
        out[col["name"]] = ",".join(str(v) for v in evaluate(col["jsonPath"], obj))
    return out
