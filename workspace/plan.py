"""A workspace's plan: which model, on what, how many nodes and GPUs, with which runtime arguments.

``plan_workspace`` applies ``presets.sizing`` to each part of a workspace (inference, tuning) and
explains a misfit in words a user can act on: how much memory is needed and which instance types
would fit. On the local platform the "instance type" is this machine (``host_sku``).

What the sizing takes from the workspace besides the model and instance type: ``resource.count``
(reported when the model's need raises or lowers it, as Kaito's estimator does), the inference
ConfigMap's ``max-model-len`` (the context the nodes are sized for; else vLLM's auto-fit) and the
``kaito.sh/runtime`` annotation (``transformers`` cannot run across nodes). ``PartPlan.notes`` says
what a user should know (count changed, a size current Kaito lacks); ``adjustments()`` the ones the
provision step reports as events.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import yaml

import presets
from presets import sizing
from workspace import spec
from workspace.errors import SizingError, SpecError

LOCAL = "local"
RUNTIME_ANNOTATION = "kaito.sh/runtime"
COUNT_ADJUSTED = "NodeCountAdjusted"


@dataclass
class PartPlan:
    part: str  # "inference" | "tuning"
    model: str
    fits: bool | None  # None: could not be sized (unknown instance type or model)
    summary: str
    details: dict = field(default_factory=dict)
    reason: str = ""
    notes: list[str] = field(default_factory=list)  # worth saying (count changed, a size Kaito lacks)
    arithmetic: list[str] = field(default_factory=list)  # the numbers behind the summary


@dataclass
class WorkspacePlan:
    name: str
    instance_type: str
    platform: str
    parts: list[PartPlan]

    @property
    def fits(self) -> bool:
        return all(p.fits is not False for p in self.parts)

    def problems(self) -> list[str]:
        return [f"{p.part}: {p.reason}" for p in self.parts if p.fits is False]

    def adjustments(self) -> list[str]:
        """Where the plan departs from what the user wrote (``resource.count`` raised or lowered)."""
        return [n for p in self.parts for n in p.notes if n.startswith("resource.count ")]


def host_sku() -> presets.Sku:
    """This machine as an instance type: its NVIDIA GPUs (via nvidia-smi) or none, and its memory."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus: list[tuple[str, float, str]] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            for line in out.strip().splitlines():
                name, mem, cc = [x.strip() for x in line.split(",")]
                gpus.append((name, float(mem) / 1024, cc))
        except (subprocess.SubprocessError, ValueError, OSError):
            gpus = []
    if gpus:
        return presets.Sku(LOCAL, "local", len(gpus), gpus[0][0], round(gpus[0][1], 1), gpus[0][2], os.cpu_count() or 1, round(mem_gib, 1))
    return presets.Sku(LOCAL, "local", 0, "none", 0, "0.0", os.cpu_count() or 1, round(mem_gib, 1))


def _model(name: str, part: str) -> presets.ModelPreset | None:
    if presets.is_preset(name):
        return presets.get_model(name)
    if presets.looks_like_hf_id(name):
        return None  # best effort: accepted, not sized
    raise SpecError(f"{part}.preset.name: {presets.UnknownPreset(name, presets.model_names())}")


def _cpu_part(part: str, model: presets.ModelPreset, sku: presets.Sku) -> PartPlan:
    ok = model.weights_gb <= sizing.CPU_MAX_WEIGHTS_GB and sizing.gib(model.weights_gb) * 3 < sku.memory_gib
    reason = "" if ok else (
        f"{model.name} ({model.weights_gb:g} GB of weights) needs a GPU; this machine has none "
        f"({sku.memory_gib:g} GiB RAM, CPU only). Use tiny-phi-3 to try kaiflow here, or run on a GPU "
        f"platform with an instance type such as {', '.join(sizing.fitting_skus(model, limit=3))}"
    )
    return PartPlan(part, model.name, ok, f"CPU, {model.weights_gb:g} GB weights", {"device": "cpu"}, reason)


def plan_workspace(ws: spec.Workspace, platform: str = LOCAL, *, on_host: bool = False,
                   config_maps: dict[str, dict[str, str]] | None = None) -> WorkspacePlan:
    """Size ``ws``; ``platform`` only labels the plan. ``on_host`` sizes it against this machine
    instead of ``resource.instanceType`` (the local platform asks for that); an instanceType of
    ``local`` always means this machine. ``config_maps`` (the file's ConfigMaps): the inference
    ConfigMap's max-model-len, when it sets one, is the context the nodes are sized for."""
    instance = ws.instance_type or ""
    sku: presets.Sku | None = None
    if on_host or instance == LOCAL:
        sku = host_sku()
    elif instance:
        try:
            sku = presets.get_sku(instance)
        except presets.UnknownSku:
            sku = None
    count = ws.resource.count if ws.resource else None
    parts: list[PartPlan] = []

    if ws.inference and ws.inference.preset:
        parts.append(_inference_part(ws, sku, count, instance, configured_context(ws, config_maps or {})))
    elif ws.inference:
        parts.append(PartPlan("inference", "(custom template)", None, "custom pod template: not sized"))
    if ws.tuning:
        parts.append(_tuning_part(ws, sku, instance))
    said: set[str] = set()
    for part in parts:  # a note on the instance type once, not once per part
        part.notes = [n for n in part.notes if n not in said]
        said.update(part.notes)
    return WorkspacePlan(ws.name, sku.name if sku else (instance or "-"), platform, parts)


def _unsized(part: str, name: str, instance: str) -> PartPlan:
    if not instance:
        why = "no resource.instanceType (bring-your-own nodes): not sized"
    else:
        try:
            presets.get_sku(instance)
            why = "model outside the catalog: not sized"
        except presets.UnknownSku as exc:
            why = f"{exc}: not sized"
    return PartPlan(part, name, None, why)


def runtime(ws: spec.Workspace) -> str:
    """The inference runtime: the ``kaito.sh/runtime`` annotation (Kaito's), else vllm."""
    given = getattr(ws, "runtime", None) or (ws.metadata.annotations or {}).get(RUNTIME_ANNOTATION)
    return str(given or "vllm").lower()


def configured_context(ws: spec.Workspace, config_maps: dict[str, dict[str, str]]) -> int | None:
    """The max-model-len the inference ConfigMap's ``vllm:`` section sets (None: unset, ``auto`` or
    a ConfigMap not in the file)."""
    name = ws.inference.config if ws.inference else None
    text = (config_maps.get(name) or {}).get("inference_config.yaml") if name else None
    if not text:
        return None
    try:
        loaded: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # the server names the error; sizing falls back to auto
    section = loaded.get("vllm") if isinstance(loaded, dict) else None
    if not isinstance(section, dict):
        return None
    value = section.get("max-model-len", section.get("max_model_len"))
    if value is None or str(value).strip().lower() in ("auto", "-1"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SpecError(f"inference ConfigMap '{name}': vllm: max-model-len {value!r} is not a number or auto") from None


def sku_notes(sku: presets.Sku) -> list[str]:
    return [f"{sku.name}: {sku.kaito}"] if sku.kaito else []


def _inference_part(ws: spec.Workspace, sku: presets.Sku | None, count: int | None, instance: str,
                    context: int | None = None) -> PartPlan:
    name = ws.inference.preset.name
    model = _model(name, "inference")
    if model is None or sku is None:
        return _unsized("inference", name, instance if sku is None else "")
    if sku.gpu_count == 0:
        return _cpu_part("inference", model, sku)
    p = sizing.plan_inference(model, sku, count, context=context, runtime=runtime(ws))
    reason = p.reason
    if not p.fits and not reason:
        reason = f"{model.name} does not fit {sku.name}"
    if not p.fits:
        reason += f"; instance types that fit on one node: {', '.join(sizing.fitting_skus(model, cloud=sku.cloud)) or 'none'}"
    summary = (
        f"{p.nodes} node(s) x {sku.gpu_count} {sku.gpu_model} {sku.gpu_memory_gib:g} GiB, {p.gpus_per_node} GPU(s) "
        f"requested per pod; {p.layout()}; {p.context()}; dtype={p.dtype}; "
        f"gpu-memory-utilization={p.gpu_memory_utilization}; disk {p.disk_gib} GiB"
        if p.fits else "does not fit"
    )
    details = sizing.as_dict(p)
    if p.fits and p.runtime == "vllm":
        details["vllm_args"] = p.vllm_args()
    return PartPlan("inference", name, p.fits, summary, details, reason,
                    notes=[*p.notes, *sku_notes(sku)], arithmetic=p.arithmetic())


def _tuning_part(ws: spec.Workspace, sku: presets.Sku | None, instance: str) -> PartPlan:
    name = ws.tuning.preset.name
    model = _model(name, "tuning")
    if model is not None and not model.tuning_supported:
        return PartPlan("tuning", name, False, "tuning not supported",
                        reason=f"preset {name} does not support tuning; presets that do: "
                        + ", ".join(m.name for m in presets.models() if m.tuning_supported and not m.is_local))
    if model is None or sku is None:
        return _unsized("tuning", name, instance if sku is None else "")
    if sku.gpu_count == 0:
        return _cpu_part("tuning", model, sku)
    p = sizing.plan_tuning(model, sku, ws.tuning.method)
    reason = p.reason
    if not p.fits:
        reason += f"; instance types that fit: {', '.join(sizing.fitting_skus(model, tuning_method=ws.tuning.method, cloud=sku.cloud)) or 'none'}"
    summary = (
        f"{ws.tuning.method} on 1 x {sku.gpu_model} {sku.gpu_memory_gib:g} GiB: weights {p.weights_gib} GiB + "
        f"optimizer {p.optimizer_gib} GiB + activations {p.activations_gib} GiB = {p.total_gib} GiB; "
        f"compute {p.compute_dtype}; {p.trainable_params:,} trainable params"
    )
    return PartPlan("tuning", name, p.fits, summary, sizing.as_dict(p), reason, notes=sku_notes(sku))


def require_fit(plan: WorkspacePlan) -> None:
    """Raise ``SizingError`` naming every part that does not fit."""
    if not plan.fits:
        raise SizingError(f"workspace {plan.name} on {plan.instance_type}: " + "; ".join(plan.problems()))


def serving_config_text(plan: WorkspacePlan, user_text: str | None) -> str | None:
    """The inference_config.yaml a server on one machine gets: the plan's vLLM arguments (layout,
    max-model-len auto, gpu-memory-utilization) under the user's own file's ``vllm:`` keys, which win.
    ``user_text`` unchanged where the plan sized no GPU (a CPU host) or the user's file is not YAML
    (the server names that error)."""
    inf = next((p for p in plan.parts if p.part == "inference" and p.fits), None)
    planned = dict(inf.details.get("vllm_args") or {}) if inf else {}
    if not planned:
        return user_text
    try:
        loaded: Any = yaml.safe_load(user_text) if user_text else {}
    except yaml.YAMLError:
        return user_text
    if not isinstance(loaded, dict) or not isinstance(loaded.get("vllm") or {}, dict):
        return user_text
    given = loaded.get("vllm") or {}
    spelled = {str(k).replace("_", "-") for k in given}
    merged = {**{k: v for k, v in planned.items() if k not in spelled}, **given}
    return yaml.safe_dump({**loaded, "vllm": merged}, sort_keys=True)
