"""Kaito's ``training_config.yaml``, validated and resolved into one plain dict.

Why a pure module: the flow builds its cache key from the *resolved* config (what will really
run: preset defaults merged, dtype choices made for the hardware), and it must do so without
importing torch, trl or peft. So this module imports only the standard library, PyYAML and
``presets`` (lazily); the key lists of the library dataclasses live in ``tuning.known_keys``.

Resolution order, later wins:
    built-in defaults (Kaito-like)  →  per-model defaults (preset or tiny-phi-3)
    →  the user's sections  →  hardware adaptations (recorded under ``adjustments``)

The user's file may wrap the sections in ``training_config:`` (Kaito's ConfigMap key), put them at
top level, or be a whole ConfigMap whose ``data`` holds ``training_config.yaml`` as a string.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any

from tuning import known_keys

SECTIONS = ("ModelConfig", "QuantizationConfig", "LoraConfig", "TrainingArguments", "DataCollator", "DatasetConfig")
METHODS = ("lora", "qlora")
HARDWARE = ("cpu", "cuda-pre-ampere", "cuda-ampere")
TINY_NAME = "tiny-phi-3"

PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_TARGETS_BY_MODEL_TYPE = {
    "phi3": PHI3_TARGETS,
    "llama": LLAMA_TARGETS,
    "mistral": LLAMA_TARGETS,
    "qwen2": LLAMA_TARGETS,
    "qwen3": LLAMA_TARGETS,
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

# Kaito's ModelConfig dataclass (presets/workspace/tuning/text-generation/cli.py) plus the
# from_pretrained keywords of transformers 5 that matter for tuning.
MODEL_KEYS = {
    "pretrained_model_name_or_path": "str", "state_dict": "any", "cache_dir": "str", "from_tf": "bool",
    "force_download": "bool", "resume_download": "bool", "proxies": "any", "output_loading_info": "bool",
    "local_files_only": "bool", "revision": "str", "trust_remote_code": "bool", "load_in_4bit": "bool",
    "load_in_8bit": "bool", "torch_dtype": "str", "dtype": "str", "device_map": "any", "chat_template": "str",
    "attn_implementation": "str", "low_cpu_mem_usage": "bool",
}
# Kaito's DatasetConfig dataclass.
DATASET_KEYS = {
    "dataset_path": "str", "dataset_extension": "str", "shuffle_dataset": "bool", "shuffle_seed": "int",
    "context_column": "str", "response_column": "str", "messages_column": "str", "train_test_split": "float",
}
# transformers' DataCollatorForLanguageModeling fields (Kaito's ExtDataCollator). Causal LM only:
# ``mlm: true`` is turned off (as Kaito does when the tokenizer has no mask token).
COLLATOR_KEYS = {
    "mlm": "bool", "mlm_probability": "float", "mask_replace_prob": "float", "random_replace_prob": "float",
    "pad_to_multiple_of": "int", "return_tensors": "str", "seed": "int", "tf_experimental_compile": "bool",
}
QUANT_KEYS = {**known_keys.BITSANDBYTES, "quant_method": "str"}

SECTION_KEYS: dict[str, dict[str, str]] = {
    "ModelConfig": MODEL_KEYS,
    "QuantizationConfig": QUANT_KEYS,
    "LoraConfig": known_keys.LORA,
    "TrainingArguments": known_keys.TRAINING_ARGUMENTS,
    "DataCollator": COLLATOR_KEYS,
    "DatasetConfig": DATASET_KEYS,
}

_BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "ModelConfig": {"torch_dtype": "auto", "device_map": "auto", "trust_remote_code": False},
    "QuantizationConfig": {},
    "LoraConfig": {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"},
    "TrainingArguments": {
        "num_train_epochs": 1,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "max_length": 2048,
        "train_sampling_strategy": "group_by_length",
        "gradient_checkpointing": True,
        "optim": "adamw_torch",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 42,
    },
    "DataCollator": {"mlm": False},
    "DatasetConfig": {"shuffle_dataset": True, "shuffle_seed": 42, "train_test_split": 1.0},
}
_QLORA_QUANT = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "auto",
}
# tiny-phi-3 has random weights: it must memorise a handful of pairs in seconds on a CPU.
_TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "LoraConfig": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0},
    "TrainingArguments": {
        "num_train_epochs": 40,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 5,
        "save_steps": 20,
        "max_length": 256,
        "gradient_checkpointing": False,
    },
}
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "auto")
SECRET_KEYS = frozenset({"hub_token", "push_to_hub_token", "token", "use_auth_token", "proxies"})


class ConfigError(ValueError):
    """The training config is wrong; the message names the section and key and what to change."""


# ---------------------------------------------------------------- loading


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training_config.yaml (any of the three accepted shapes) into a raw dict."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing file to --config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if data is None:
        return {}
    if isinstance(data, dict) and data.get("kind") == "ConfigMap":
        text = (data.get("data") or {}).get("training_config.yaml")
        if text is None:
            raise ConfigError(f"{path}: ConfigMap has no data key 'training_config.yaml'")
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'training_config' key, got {type(data).__name__}")
    return data


def sections_of(raw: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The six sections of a raw config, unwrapped from ``training_config`` and checked for unknown keys."""
    raw = dict(raw or {})
    if "training_config" in raw:
        outer = set(raw) - {"training_config"}
        if outer:
            raise ConfigError(f"{sorted(outer)[0]}: unknown top-level key beside 'training_config'; remove it")
        raw = dict(raw["training_config"] or {})
    out: dict[str, dict[str, Any]] = {}
    for name, body in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section{_suggest(name, SECTIONS)}; sections are {', '.join(SECTIONS)}")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {type(body).__name__}")
        out[name] = {key: _coerce(name, key, value) for key, value in body.items()}
    return out


def apply_overrides(
    raw: dict[str, Any] | None, *, max_steps: int | None = None, epochs: float | None = None
) -> dict[str, Any]:
    """A copy of ``raw`` (unwrapped to its sections) with command-line step/epoch limits written in.

    The flow calls this with the same flags it passes to the program, so its cache key is built
    from exactly the config the program resolves.
    """
    sections = copy.deepcopy(sections_of(raw))
    args = sections.setdefault("TrainingArguments", {})
    if max_steps is not None:
        if max_steps < 1:
            raise ConfigError(f"--max-steps: must be at least 1, got {max_steps}")
        args["max_steps"] = int(max_steps)
    if epochs is not None:
        if epochs <= 0:
            raise ConfigError(f"--epochs: must be positive, got {epochs}")
        args["num_train_epochs"] = epochs
        if max_steps is None:
            args.pop("max_steps", None)  # an explicit --epochs beats a max_steps from the file
    return sections


def _coerce(section: str, key: str, value: Any) -> Any:
    known = SECTION_KEYS[section]
    if key not in known:
        raise ConfigError(f"{section}.{key}: unknown key{_suggest(key, known)}; remove it or fix its spelling")
    if key in SECRET_KEYS and value not in (None, ""):
        raise ConfigError(
            f"{section}.{key}: secrets do not belong in the training config (it is logged and hashed); "
            "pass them as environment variables (HF_TOKEN) instead"
        )
    kind = known[key]
    if value is None or kind in ("any", "str"):
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{section}.{key}: expected true or false, got {value!r}")
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ConfigError(f"{section}.{key}: expected a number, got {value!r}")
    if kind == "int":
        if number != int(number):
            raise ConfigError(f"{section}.{key}: expected a whole number, got {value!r}")
        return int(number)
    return int(number) if isinstance(value, int) else number


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- model profile


def is_tiny(model: str) -> bool:
    """True for the built-in tiny test model, by name or by its build marker on disk."""
    return model == TINY_NAME or (Path(model) / "kaiflow-tiny.json").is_file()


def model_profile(model: str) -> dict[str, Any]:
    """What the tuning defaults need to know about a base model, without loading it.

    Returns ``{"preset": name|None, "revision": str|None, "targets": list|None, "context_length": int|None}``.
    ``targets`` None leaves the choice to peft's per-architecture table.
    """
    profile: dict[str, Any] = {"preset": None, "revision": None, "targets": None, "context_length": None}
    if is_tiny(model):
        return {**profile, "preset": TINY_NAME, "targets": list(PHI3_TARGETS), "context_length": 1024}
    preset = _preset(model)
    if preset is not None:
        return {
            "preset": preset.name,
            "revision": getattr(preset, "revision", None),
            "targets": list(preset.lora_target_modules or []) or _targets_by_name(preset.hf_id),
            "context_length": getattr(preset, "context_length", None),
        }
    config_file = Path(model) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        targets = _TARGETS_BY_MODEL_TYPE.get(str(config.get("model_type", "")))
        return {**profile, "targets": targets, "context_length": config.get("max_position_embeddings")}
    return {**profile, "targets": _targets_by_name(model)}


def _preset(model: str) -> Any:
    try:
        import presets
    except ImportError:  # presets/ not importable: plain HF ids and paths still work
        return None
    get_model = getattr(presets, "get_model", None)
    if get_model is None:
        return None
    try:
        return get_model(model)
    except (KeyError, ValueError):
        return None


def _targets_by_name(model: str) -> list[str] | None:
    name = model.lower()
    if "phi-3" in name or "phi3" in name:
        return list(PHI3_TARGETS)
    if any(family in name for family in ("llama", "mistral", "qwen")):
        return list(LLAMA_TARGETS)
    return None


# ---------------------------------------------------------------- hardware


def detect_hardware() -> str:
    """``cpu``, ``cuda-pre-ampere`` or ``cuda-ampere`` for this machine (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    major, _minor = torch.cuda.get_device_capability(0)
    return "cuda-ampere" if major >= 8 else "cuda-pre-ampere"


def _adapt_to_hardware(resolved: dict[str, Any], hardware: str) -> list[str]:
    notes: list[str] = []
    model, quant, args = resolved["ModelConfig"], resolved["QuantizationConfig"], resolved["TrainingArguments"]
    model["torch_dtype"] = _dtype_for(model.get("torch_dtype"), "ModelConfig.torch_dtype", hardware, notes)
    if quant.get("load_in_4bit"):
        key = "QuantizationConfig.bnb_4bit_compute_dtype"
        quant["bnb_4bit_compute_dtype"] = _dtype_for(quant.get("bnb_4bit_compute_dtype"), key, hardware, notes)
    if hardware == "cpu":
        for flag in ("bf16", "fp16"):
            if args.get(flag):
                notes.append(f"TrainingArguments.{flag}: true -> false (cpu)")
        args.update(bf16=False, fp16=False, use_cpu=True)
        if model.get("device_map") == "auto":
            model["device_map"] = "cpu"
        if str(args.get("optim", "")).startswith("paged_"):
            notes.append(f"TrainingArguments.optim: {args['optim']} -> adamw_torch (paged optimizers need CUDA)")
            args["optim"] = "adamw_torch"
    elif hardware == "cuda-pre-ampere":
        if args.get("bf16"):
            notes.append("TrainingArguments.bf16: true -> fp16 (no bfloat16 before Ampere)")
        args.update(bf16=False, fp16=True)
    else:
        if not args.get("fp16"):
            args.update(bf16=True, fp16=False)
    return notes


def _dtype_for(value: str | None, where: str, hardware: str, notes: list[str]) -> str:
    """The dtype to use: the user's unless this hardware cannot run it (no bf16 before Ampere, fp32 on CPU)."""
    best = {"cpu": "float32", "cuda-pre-ampere": "float16", "cuda-ampere": "bfloat16"}[hardware]
    if value is not None and value not in _FLOAT_DTYPES:
        raise ConfigError(f"{where}: unknown dtype {value!r}; use one of {', '.join(_FLOAT_DTYPES)}")
    if value in (None, "auto"):
        return best
    unsupported = {"cpu": ("bfloat16", "float16"), "cuda-pre-ampere": ("bfloat16",), "cuda-ampere": ()}[hardware]
    if value in unsupported:
        notes.append(f"{where}: {value} -> {best} ({hardware})")
        return best
    return value


# ---------------------------------------------------------------- resolve


def resolve(raw: dict[str, Any] | None, *, model: str, method: str, hardware: str | None = None) -> dict[str, Any]:
    """The fully resolved training config: every section, with defaults and hardware choices made.

    ``raw`` is a loaded training_config.yaml (or None for preset defaults), ``model`` the name or
    path given to the program, ``method`` ``lora`` or ``qlora``, ``hardware`` one of ``HARDWARE``
    (None detects it, which imports torch). The result is JSON-serialisable and deterministic,
    so it can be hashed into a cache key.
    """
    if method not in METHODS:
        raise ConfigError(f"method: unknown tuning method {method!r}; use one of {', '.join(METHODS)}")
    hardware = hardware or detect_hardware()
    if hardware not in HARDWARE:
        raise ConfigError(f"hardware: unknown value {hardware!r}; use one of {', '.join(HARDWARE)}")
    user = sections_of(raw)
    profile = model_profile(model)
    resolved = _defaults(profile, method)
    for name in SECTIONS:
        resolved[name].update(user.get(name, {}))
    _normalise(resolved, user)
    notes = _adapt_to_hardware(resolved, hardware)
    _check(resolved)
    return {
        "model": model,
        "preset": profile["preset"],
        "method": method,
        "hardware": hardware,
        **{name: resolved[name] for name in SECTIONS},
        "adjustments": notes,
    }


def _defaults(profile: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
    resolved = copy.deepcopy(_BASE_DEFAULTS)
    if method == "qlora":
        resolved["QuantizationConfig"].update(_QLORA_QUANT)
    if profile["targets"]:
        resolved["LoraConfig"]["target_modules"] = list(profile["targets"])
    if profile["revision"]:
        resolved["ModelConfig"]["revision"] = profile["revision"]
    if profile["context_length"]:
        args = resolved["TrainingArguments"]
        args["max_length"] = min(args["max_length"], int(profile["context_length"]))
    if profile["preset"] == TINY_NAME:
        for name, values in _TINY_DEFAULTS.items():
            resolved[name].update(values)
    return resolved


def _normalise(resolved: dict[str, dict[str, Any]], user: dict[str, dict[str, Any]]) -> None:
    model, quant = resolved["ModelConfig"], resolved["QuantizationConfig"]
    if "dtype" in model:  # transformers 5 spelling; keep one key
        model["torch_dtype"] = model.pop("dtype")
    for flag in ("load_in_4bit", "load_in_8bit"):  # Kaito lets ModelConfig carry these too
        if model.pop(flag, None):
            quant[flag] = True
    user_quant = user.get("QuantizationConfig", {})
    if user_quant.get("load_in_8bit") and not user_quant.get("load_in_4bit"):
        for key in [k for k in quant if k.startswith("bnb_4bit") or k == "load_in_4bit"]:
            quant.pop(key)
    quant.pop("quant_method", None)
    _choose_batching(resolved, user)
    collator = resolved["DataCollator"]
    if collator.get("mlm"):
        collator["mlm"] = False  # causal LM: Kaito turns masked-LM off the same way
    target = resolved["LoraConfig"].get("target_modules")
    if isinstance(target, str) and target != "all-linear":
        resolved["LoraConfig"]["target_modules"] = [part.strip() for part in target.split(",") if part.strip()]


def _choose_batching(resolved: dict[str, dict[str, Any]], user: dict[str, dict[str, Any]]) -> None:
    """Packing where attention can skip across packed rows (FlashAttention), length grouping elsewhere.

    trl's best-fit packing flattens a batch into one padding-free row; SDPA and eager attention
    then compute the whole (batch × max_length)² score matrix under a block mask, which is slower
    than padding on CPUs and GPUs without flash-attn. Grouping rows of similar length removes most
    padding with any attention kernel (bench/tuning.py measures both).
    """
    args, user_args = resolved["TrainingArguments"], user.get("TrainingArguments", {})
    flash = "flash" in str(resolved["ModelConfig"].get("attn_implementation") or "")
    if "packing" in user_args or not flash:
        if args.get("packing") and "train_sampling_strategy" not in user_args:
            args.pop("train_sampling_strategy", None)  # packed blocks all have one length
        return
    args.update(packing=True, packing_strategy="bfd")
    if "train_sampling_strategy" not in user_args:
        args.pop("train_sampling_strategy", None)


def _check(resolved: dict[str, dict[str, Any]]) -> None:
    quant, lora, args = resolved["QuantizationConfig"], resolved["LoraConfig"], resolved["TrainingArguments"]
    data = resolved["DatasetConfig"]
    if quant.get("load_in_4bit") and quant.get("load_in_8bit"):
        raise ConfigError("QuantizationConfig.load_in_8bit: cannot be true together with load_in_4bit; pick one")
    if quant.get("bnb_4bit_quant_type", "nf4") not in ("nf4", "fp4"):
        raise ConfigError("QuantizationConfig.bnb_4bit_quant_type: use 'nf4' or 'fp4'")
    if int(lora.get("r", 1)) <= 0:
        raise ConfigError("LoraConfig.r: must be a positive integer")
    split = data.get("train_test_split", 1.0)
    if not 0 < float(split) <= 1:
        raise ConfigError(f"DatasetConfig.train_test_split: must be in (0, 1], got {split}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if int(args.get(key, 1)) < 1:
            raise ConfigError(f"TrainingArguments.{key}: must be at least 1")
    if float(args.get("learning_rate", 1)) <= 0:
        raise ConfigError("TrainingArguments.learning_rate: must be positive")
