"""A workspace's plan: which model, on what, how many nodes and GPUs, with which runtime arguments.

``plan_workspace`` applies ``presets.sizing`` to each part of a workspace (inference, tuning) and
explains a misfit in words a user can act on: how much memory is needed and which instance types
would fit. On the local platform the "instance type" is this machine (``host_sku``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

import presets
from presets import sizing
from workspace import spec
from workspace.errors import SizingError, SpecError

LOCAL = "local"


@dataclass
class PartPlan:
    part: str  # "inference" | "tuning"
    model: str
    fits: bool | None  # None: could not be sized (unknown instance type or model)
    summary: str
    details: dict = field(default_factory=dict)
    reason: str = ""


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


def plan_workspace(ws: spec.Workspace, platform: str = LOCAL, *, on_host: bool = False) -> WorkspacePlan:
    """Size ``ws``; ``platform`` only labels the plan. ``on_host`` sizes it against this machine
    instead of ``resource.instanceType`` (the local platform asks for that); an instanceType of
    ``local`` always means this machine."""
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
        parts.append(_inference_part(ws, sku, count, instance))
    elif ws.inference:
        parts.append(PartPlan("inference", "(custom template)", None, "custom pod template: not sized"))
    if ws.tuning:
        parts.append(_tuning_part(ws, sku, instance))
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


def _inference_part(ws: spec.Workspace, sku: presets.Sku | None, count: int | None, instance: str) -> PartPlan:
    name = ws.inference.preset.name
    model = _model(name, "inference")
    if model is None or sku is None:
        return _unsized("inference", name, instance if sku is None else "")
    if sku.gpu_count == 0:
        return _cpu_part("inference", model, sku)
    p = sizing.plan_inference(model, sku, count)
    reason = p.reason
    if not p.fits and not reason:
        reason = f"{model.name} does not fit {sku.name}"
    if not p.fits:
        reason += f"; instance types that fit on one node: {', '.join(sizing.fitting_skus(model, cloud=sku.cloud)) or 'none'}"
    summary = (
        f"{p.nodes} node(s) x {sku.gpu_count} {sku.gpu_model} {sku.gpu_memory_gib:g} GiB; "
        f"weights {p.weights_gib} GiB, KV cache {p.kv_cache_gib} GiB ({p.kv_bytes_per_token // 1024} KiB/token); "
        f"tp={p.tensor_parallel_size} pp={p.pipeline_parallel_size} max-model-len={p.max_model_len} dtype={p.dtype}; disk {p.disk_gib} GiB"
        if p.fits else "does not fit"
    )
    return PartPlan("inference", name, p.fits, summary, sizing.as_dict(p), reason)


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
    return PartPlan("tuning", name, p.fits, summary, sizing.as_dict(p), reason)


def require_fit(plan: WorkspacePlan) -> None:
    """Raise ``SizingError`` naming every part that does not fit."""
    if not plan.fits:
        raise SizingError(f"workspace {plan.name} on {plan.instance_type}: " + "; ".join(plan.problems()))
