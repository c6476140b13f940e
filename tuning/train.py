"""One tuning run: base model + dataset folder + resolved config → a PEFT adapter folder.

Why the output dance: the flow (and Kaito's image push) treat an adapter folder as done when it
exists, so the adapter is written to a hidden sibling and renamed into place only after
``metrics.json`` and the ``COMPLETE`` marker are in it. A failed run leaves the old output (or
nothing) behind, never half an adapter.

Why our own checkpoint folder (``OUTPUT.checkpoints`` unless told otherwise): a restarted pod or
process finds the last ``checkpoint-N`` there and resumes, but only when the run's fingerprint
(resolved config + dataset files) matches; a changed config starts over instead of resuming a
different run. Checkpoints are removed once the adapter is in place.

Heavy imports (torch, transformers, peft, trl) happen inside the functions, so ``--help`` and
config errors are instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning import config as tconfig
from tuning import data as tdata
from tuning import progress, protocol

FINGERPRINT_FILE = "kaiflow-run.json"


@dataclass
class RunSpec:
    """Everything one run needs; ``resolved`` comes from ``tuning.config.resolve``."""

    resolved: dict[str, Any]
    data_dir: Path
    model: str
    output: Path
    checkpoint_dir: Path | None = None
    keep_checkpoints: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.output.with_name(self.output.name + ".checkpoints")


# ---------------------------------------------------------------- output folder


def check_output(output: Path) -> None:
    """Refuse to replace a folder that is not an earlier adapter (or empty)."""
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / protocol.COMPLETE).exists())):
        raise tconfig.ConfigError(f"--output {output}: exists and is not a finished adapter folder; pass a new or empty path")


def publish(tmp: Path, output: Path) -> None:
    """Move the finished ``tmp`` folder to ``output`` (replacing an earlier adapter) by renames."""
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    shutil.rmtree(old, ignore_errors=True)


def fingerprint(resolved: dict[str, Any], files: list[str]) -> str:
    """Content hash of what this run trains on: resolved config + dataset files (name, size, bytes)."""
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode())
    for name in sorted(files):
        path = Path(name)
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def last_checkpoint(checkpoints: Path, run_fingerprint: str) -> str | None:
    """The checkpoint to resume from, if the folder holds one from this same run; else start clean."""
    marker = checkpoints / FINGERPRINT_FILE
    if checkpoints.exists():
        same = marker.exists() and json.loads(marker.read_text()).get("fingerprint") == run_fingerprint
        if not same:
            progress.say(f"checkpoints in {checkpoints} belong to another config or dataset; starting over")
            shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": run_fingerprint}))
    found = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    if not found:
        return None
    return str(max(found, key=lambda p: int(p.name.rsplit("-", 1)[-1])))


# ---------------------------------------------------------------- model


def _dtype(name: str | None) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(name or "", "auto")


def load_tokenizer(source: str, model_config: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **_hub_kwargs(model_config))
    template = model_config.get("chat_template")
    if template:
        tokenizer.chat_template = template if "{" in template else Path(template).read_text()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _hub_kwargs(model_config: dict[str, Any]) -> dict[str, Any]:
    keys = ("revision", "trust_remote_code", "local_files_only", "cache_dir", "force_download")
    return {key: model_config[key] for key in keys if model_config.get(key) is not None}


def quantization(quant_config: dict[str, Any]) -> Any:
    """A BitsAndBytesConfig, or None for plain LoRA."""
    if not (quant_config.get("load_in_4bit") or quant_config.get("load_in_8bit")):
        return None
    from transformers import BitsAndBytesConfig

    values = dict(quant_config)
    if "bnb_4bit_compute_dtype" in values:
        values["bnb_4bit_compute_dtype"] = _dtype(values["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**values)


def load_model(source: str, resolved: dict[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model_config = resolved["ModelConfig"]
    bnb = quantization(resolved["QuantizationConfig"])
    kwargs = {"dtype": _dtype(model_config.get("torch_dtype")), "device_map": model_config.get("device_map")}
    for key in ("attn_implementation", "low_cpu_mem_usage"):
        if model_config.get(key) is not None:
            kwargs[key] = model_config[key]
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=bnb, **kwargs, **_hub_kwargs(model_config))
    if bnb is not None:
        checkpointing = bool(resolved["TrainingArguments"].get("gradient_checkpointing"))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    model.config.use_cache = False
    try:
        return get_peft_model(model, LoraConfig(**resolved["LoraConfig"]))
    except (TypeError, ValueError) as exc:
        raise tconfig.ConfigError(f"LoraConfig: {' '.join(str(exc).split())}") from None


# ---------------------------------------------------------------- data


def as_chat(dataset: Any, shape: str, tokenizer: Any) -> Any:
    """Wrap prompt/completion strings as one user and one assistant turn when the model has a chat template.

    Then the adapter learns exactly the format the server's chat endpoints send.
    """
    if dataset is None or shape != "prompt_completion" or not getattr(tokenizer, "chat_template", None):
        return dataset
    return dataset.map(
        lambda row: {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "completion": [{"role": "assistant", "content": row["completion"]}],
        }
    )


# ---------------------------------------------------------------- trainer


def training_args(spec: RunSpec) -> Any:
    from trl import SFTConfig

    values = dict(spec.resolved["TrainingArguments"])
    values["output_dir"] = str(spec.checkpoints)
    pad = spec.resolved["DataCollator"].get("pad_to_multiple_of")
    if pad and "pad_to_multiple_of" not in values:
        values["pad_to_multiple_of"] = pad
    try:
        return SFTConfig(**values)
    except (TypeError, ValueError) as exc:
        raise tconfig.ConfigError(f"TrainingArguments: {' '.join(str(exc).split())}") from None


def build_trainer(spec: RunSpec, model: Any, tokenizer: Any, loaded: tdata.Loaded, reporter: Any) -> Any:
    from transformers import PrinterCallback
    from trl import SFTTrainer

    args = training_args(spec)
    if loaded.eval is not None and args.eval_strategy == "no":
        args.eval_strategy = args.save_strategy if args.save_strategy != "no" else "epoch"
        args.eval_steps = args.eval_steps or args.save_steps
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=as_chat(loaded.train, loaded.shape, tokenizer),
        eval_dataset=as_chat(loaded.eval, loaded.shape, tokenizer),
        processing_class=tokenizer,
        callbacks=[reporter],
    )
    trainer.remove_callback(PrinterCallback)  # our Reporter prints the progress lines instead
    _adapter_precision(trainer.model, spec.resolved["hardware"])
    return trainer


def _adapter_precision(model: Any, hardware: str) -> None:
    """Keep trainable LoRA weights in float32 except on Ampere+ GPUs.

    trl casts them to bfloat16 for quantized models (the QLoRA paper's choice on GPUs with bf16);
    on a CPU or a pre-Ampere GPU that loses small updates and, with fp16 loss scaling, breaks.
    """
    if hardware == "cuda-ampere":
        return
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


# ---------------------------------------------------------------- run


def run(spec: RunSpec) -> dict[str, Any]:
    """Train and publish the adapter; returns the metrics written to ``metrics.json``."""
    check_output(spec.output)
    progress.quiet_libraries()
    resolved = spec.resolved
    progress.say(f"loading dataset from {spec.data_dir}")
    loaded = tdata.load_dataset_dir(spec.data_dir, resolved["DatasetConfig"])
    progress.say(
        f"dataset: {len(loaded.train)} training rows"
        + (f", {len(loaded.eval)} eval rows" if loaded.eval is not None else "")
        + f" ({loaded.shape}, {len(loaded.files)} file(s))"
        + (f"; {loaded.skipped} row(s) of no known shape left out (first: {', '.join(loaded.skipped_examples)})"
           if loaded.skipped else "")
    )
    resume_from = last_checkpoint(spec.checkpoints, fingerprint(resolved, loaded.files))
    source = model_source(spec.model)
    # seed before the model is built: the LoRA weights are initialised in get_peft_model, before the
    # Trainer seeds (TrainingArguments.seed), so without this no two runs gave the same adapter
    from transformers import set_seed

    set_seed(int(resolved["TrainingArguments"].get("seed", 42)))
    progress.say(f"loading {spec.model} ({resolved['method']}, {resolved['hardware']})")
    tokenizer = load_tokenizer(source, resolved["ModelConfig"])
    model = load_model(source, resolved)
    reporter = progress.Reporter()
    trainer = build_trainer(spec, model, tokenizer, loaded, reporter)
    if resume_from:
        progress.say(f"resuming from {resume_from}")
    trainer.train(resume_from_checkpoint=resume_from)
    eval_loss = trainer.evaluate()["eval_loss"] if loaded.eval is not None else None
    metrics = reporter.summary(
        eval_loss=eval_loss, wall_seconds=time.monotonic() - spec.started, resolved=resolved,
        steps=trainer.state.global_step,
    )
    metrics["dataset"] = {"rows": len(loaded.train) + (len(loaded.eval) if loaded.eval is not None else 0),
                          "train_rows": len(loaded.train), "skipped": loaded.skipped,
                          "skipped_examples": loaded.skipped_examples, "shape": loaded.shape}
    write_output(spec, trainer.model, metrics)
    progress.say(progress.final_line(metrics, spec.output))
    return metrics


def model_source(model: str) -> str:
    """A local folder or hub id for ``model`` (preset names and tiny-phi-3 through presets/)."""
    try:
        import presets

        resolver = getattr(presets, "resolve_model_source", None)
    except ImportError:
        resolver = None
    if resolver is not None:
        return str(resolver(model))
    if model == tconfig.TINY_NAME:
        from presets import tiny

        return str(tiny.ensure())
    return model


def write_output(spec: RunSpec, model: Any, metrics: dict[str, Any]) -> None:
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.output.with_name(f".{spec.output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        missing = [name for name in protocol.ADAPTER_FILES if not (tmp / name).exists()]
        if missing:
            raise RuntimeError(f"peft wrote no {missing} in {tmp}")
        (tmp / protocol.METRICS_FILE).write_text(json.dumps(metrics, indent=1, default=str))
        (tmp / protocol.COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        publish(tmp, spec.output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not spec.keep_checkpoints:
        shutil.rmtree(spec.checkpoints, ignore_errors=True)
