"""Command line of the tuning program (the tune step's container entry point).

    python -m tuning --config training_config.yaml --data DIR --model MODEL --output DIR
                     [--method lora|qlora] [--max-steps N] [--epochs N] [--checkpoint-dir DIR]

``--model``, ``--data`` and ``--output`` may instead come from the YAML (Kaito's
``ModelConfig.pretrained_model_name_or_path``, ``DatasetConfig.dataset_path``,
``TrainingArguments.output_dir``); flags win. Exit codes: 0 done, 2 bad config or dataset (one
``error:`` line on stderr naming the section/key or file/columns), 1 anything else; the whole
exchange with the flow is written down in :mod:`tuning.protocol`.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from tuning import config as tconfig
from tuning import data as tdata
from tuning import protocol


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning", description="QLoRA/LoRA tuning with a Kaito training config.")
    p.add_argument("--config", type=Path, help="Kaito training_config.yaml (optional: preset defaults)")
    p.add_argument("--data", type=Path, help="folder (or file) holding the dataset files")
    p.add_argument("--model", help="preset name, Hugging Face id, local folder or tiny-phi-3")
    p.add_argument("--output", type=Path, help="adapter folder to create (replaced atomically)")
    p.add_argument("--method", choices=tconfig.METHODS, default="qlora")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--epochs", type=float)
    p.add_argument("--checkpoint-dir", type=Path, dest="checkpoint_dir", help="default: OUTPUT.checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", dest="keep_checkpoints")
    p.add_argument("--hardware", choices=tconfig.HARDWARE, help="default: detected")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        spec = build_spec(args)
    except (tconfig.ConfigError, tdata.DatasetError) as exc:
        return _bad_input(exc)
    from tuning import train

    try:
        train.run(spec)
    except (tconfig.ConfigError, tdata.DatasetError) as exc:
        return _bad_input(exc)
    except Exception as exc:  # noqa: BLE001 - the program's last word on any failure
        traceback.print_exc()
        print(protocol.error_line(f"{type(exc).__name__}: {exc}"), file=sys.stderr, flush=True)
        return protocol.EXIT_FAILED
    return protocol.EXIT_OK


def build_spec(args: argparse.Namespace):  # -> train.RunSpec (imported lazily)
    raw = tconfig.load_file(args.config) if args.config else {}
    sections = tconfig.apply_overrides(raw, max_steps=args.max_steps, epochs=args.epochs)
    model = args.model or sections.get("ModelConfig", {}).get("pretrained_model_name_or_path")
    data = args.data or _path(sections.get("DatasetConfig", {}).get("dataset_path"))
    output = args.output or _path(sections.get("TrainingArguments", {}).get("output_dir"))
    for flag, value in (("--model", model), ("--data", data), ("--output", output)):
        if not value:
            raise tconfig.ConfigError(f"{flag}: required (or set it in the config file)")
    sections.get("ModelConfig", {}).pop("pretrained_model_name_or_path", None)
    sections.get("TrainingArguments", {}).pop("output_dir", None)
    if args.data is None:
        sections.get("DatasetConfig", {}).pop("dataset_path", None)
    resolved = tconfig.resolve(sections, model=str(model), method=args.method, hardware=args.hardware)
    from tuning import train

    return train.RunSpec(
        resolved=resolved, data_dir=Path(data), model=str(model), output=Path(output).absolute(),
        checkpoint_dir=args.checkpoint_dir, keep_checkpoints=args.keep_checkpoints,
    )


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def _bad_input(exc: Exception) -> int:
    print(protocol.error_line(str(exc)), file=sys.stderr, flush=True)
    return protocol.EXIT_BAD_INPUT
