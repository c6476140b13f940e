"""Model and GPU catalogs, as data files (``presets/data/*.yaml``) with a little code around them.

``get_model(name)`` and ``get_sku(name)`` look entries up; unknown names raise ``UnknownPreset`` /
``UnknownSku`` with the closest known names. ``resolve_model_source`` turns a preset name, a local
path or a Hugging Face id into what ``from_pretrained`` takes. This package imports no heavy library:
the CLI, the tuning program and the inference server all read it.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).parent / "data"
QUANTIZED_DTYPES = ("fp8", "mxfp4")


class UnknownPreset(KeyError, ValueError):
    def __init__(self, name: str, choices: list[str]):
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `kaiflow presets` for the list"
        self.message = f"unknown preset '{name}'{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class UnknownSku(UnknownPreset):
    def __init__(self, name: str, choices: list[str]):
        super().__init__(name, choices)
        self.message = self.message.replace("unknown preset", "unknown instance type").replace(
            "kaiflow presets", "kaiflow skus"
        )


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hf_id: str
    revision: str
    architecture: str
    params_b: float
    dtype: str
    weights_gib: float
    context_length: int
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    gated: bool
    tuning_supported: bool
    lora_target_modules: list[str] = field(default_factory=list)
    vllm_args: dict[str, Any] = field(default_factory=dict)
    local_builder: str | None = None
    notes: str = ""
    kaito_weights_gib: float | None = None

    @property
    def is_local(self) -> bool:
        """Built on this machine (tiny-phi-3), not downloaded."""
        return self.local_builder is not None

    @property
    def weights_gb(self) -> float:
        """The weights in GB (10**9 bytes), as model cards give sizes."""
        return self.weights_gib * 2**30 / 1e9

    @property
    def quantization(self) -> str | None:
        """``fp8`` / ``mxfp4`` for quantised checkpoints, else None."""
        return self.dtype if self.dtype in QUANTIZED_DTYPES else None

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token: 2 (K and V) x layers x KV heads x head_dim x 2 bytes (fp16 cache),
        as Kaito's preset generator computes ``bytes_per_token`` (MLA latents are one KV head of
        kv_lora_rank + rope dims, halved: head_dim 288 for 512 + 64)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


@dataclass(frozen=True)
class Sku:
    name: str
    cloud: str
    gpu_count: int
    gpu_model: str
    gpu_memory_gib: float
    compute_capability: str
    vcpus: int
    memory_gib: float
    kaito: str = ""  # what Kaito v0.12 does with this size, where it is not in Kaito's tables as is

    @property
    def supports_bf16(self) -> bool:
        return self.gpu_count > 0 and float(self.compute_capability) >= 8.0

    @property
    def total_gpu_memory_gib(self) -> float:
        return self.gpu_count * self.gpu_memory_gib


@functools.cache
def _models() -> dict[str, ModelPreset]:
    raw = yaml.safe_load((DATA / "models.yaml").read_text())
    defaults = raw.get("defaults", {})
    out: dict[str, ModelPreset] = {}
    for name, entry in raw["models"].items():
        merged = {**defaults, **entry}
        out[name] = ModelPreset(
            name=name,
            hf_id=merged["hf_id"],
            revision=str(merged["revision"]),
            architecture=merged["architecture"],
            params_b=float(merged["params_b"]),
            dtype=merged["dtype"],
            weights_gib=float(merged["weights_gib"]),
            context_length=int(merged["context_length"]),
            num_layers=int(merged["num_layers"]),
            hidden_size=int(merged["hidden_size"]),
            num_attention_heads=int(merged["num_attention_heads"]),
            num_kv_heads=int(merged["num_kv_heads"]),
            head_dim=int(merged["head_dim"]),
            vocab_size=int(merged["vocab_size"]),
            gated=bool(merged["gated"]),
            tuning_supported=bool(merged["tuning"]),
            lora_target_modules=list(merged.get("lora_target_modules") or []),
            vllm_args=dict(merged.get("vllm_args") or {}),
            local_builder=merged.get("local_builder"),
            notes=merged.get("notes", ""),
            kaito_weights_gib=float(merged["kaito_weights_gib"]) if merged.get("kaito_weights_gib") else None,
        )
    return out


@functools.cache
def _skus() -> dict[str, Sku]:
    raw = yaml.safe_load((DATA / "skus.yaml").read_text())
    return {name: Sku(name=name, **{k: v for k, v in e.items()}) for name, e in raw["skus"].items()}


def models() -> list[ModelPreset]:
    return list(_models().values())


def model_names() -> list[str]:
    return list(_models())


def get_model(name: str) -> ModelPreset:
    """The preset called ``name``; ``UnknownPreset`` (naming the closest presets) if there is none."""
    try:
        return _models()[name]
    except KeyError:
        raise UnknownPreset(name, model_names()) from None


def is_preset(name: str) -> bool:
    return name in _models()


def skus() -> list[Sku]:
    return list(_skus().values())


def get_sku(name: str) -> Sku:
    """The GPU instance type ``name`` (Azure VM size or AWS instance type)."""
    table = _skus()
    if name in table:
        return table[name]
    lowered = {k.lower(): v for k, v in table.items()}
    if name.lower() in lowered:
        return lowered[name.lower()]
    raise UnknownSku(name, list(table))


def looks_like_hf_id(name: str) -> bool:
    """``org/model``: accepted as a best-effort model outside the catalog."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/"))


def resolve_model_source(name_or_path: str) -> str:
    """What ``from_pretrained`` should load for ``name_or_path``.

    An existing local directory is used as is; ``tiny-phi-3`` is built (once) and cached under
    ``$KAIFLOW_HOME/models``; a preset name becomes its Hugging Face id; anything else is returned
    unchanged and treated as a Hugging Face id.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if is_preset(name_or_path):
        preset = get_model(name_or_path)
        if preset.local_builder == "tiny":
            from presets import tiny

            return str(tiny.ensure())
        return preset.hf_id
    return name_or_path


def resolve_revision(name: str) -> str | None:
    """The pinned revision of a preset (None for paths and ad-hoc ids)."""
    if is_preset(name):
        preset = get_model(name)
        if preset.local_builder == "tiny":
            from presets import tiny

            return f"local-build-{tiny.BUILD_VERSION}"
        return preset.revision
    return None
