"""Benchmark: the tuning program against a plain trl ``SFTTrainer`` script, same model, data and
hyper-parameters, side by side in one process.

Both train the same LoRA (or QLoRA) adapter on the same synthetic chat rows for the same number of
epochs, with the same learning rate, batch size, max_length, quantization and gradient
checkpointing setting. The baseline is what a short trl script does by default (no packing: each
batch padded to its longest row); the program packs rows best-fit into ``max_length`` blocks.
The runs alternate (program, baseline, program, baseline, ...) so machine noise hits both alike,
and the best round of each is compared.

Throughput is non-padding tokens per second of ``trainer.train()``: trl's ``num_tokens`` counter
(attention-mask sum when padded, real tokens when packed), divided by the train wall time.

    .venv/bin/python bench/tuning.py [--rows 256] [--rounds 2] [--method qlora] [--dataset mixed|uniform|both]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# run as a script, bench/ would shadow the `tuning` package with this very file
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

WORDS = ("the model answers questions about rivers mountains cities numbers colours code poems science history "
         "music travel food weather sport language planets animals plants machines water light").split()


def chat_rows(count: int, kind: str, seed: int = 0) -> list[dict]:
    """Synthetic chats: ``mixed`` lengths (2–115 words a chat, like dolly) or ``uniform`` (~60 words)."""
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    bounds = {"mixed": ((2, 25), (2, 90)), "uniform": ((14, 16), (44, 46))}[kind]
    return [
        {"messages": [{"role": "user", "content": text(*bounds[0])}, {"role": "assistant", "content": text(*bounds[1])}]}
        for _ in range(count)
    ]


def write_dataset(folder: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    return folder


HARDWARE = ["cpu"]  # set from --hardware


def program_run(data: Path, out: Path, method: str) -> tuple[float, int, float, dict]:
    """The tuning program in-process; returns (tokens/s, tokens, train seconds, resolved config)."""
    from tuning import config as tconfig
    from tuning import train

    raw = {"TrainingArguments": {"num_train_epochs": 1, "logging_steps": 1000, "save_strategy": "no"}}
    resolved = tconfig.resolve(raw, model="tiny-phi-3", method=method, hardware=HARDWARE[0])
    spec = train.RunSpec(resolved=resolved, data_dir=data, model="tiny-phi-3", output=out)
    metrics = train.run(spec)
    return metrics["tokens_per_second"], metrics["train_tokens"], metrics["train_seconds"], resolved


def baseline_run(data: Path, out: Path, resolved: dict) -> tuple[float, int, float]:
    """A plain trl script: load, LoRA, SFTTrainer with the program's hyper-parameters, no packing."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from presets import tiny

    source = str(tiny.ensure())
    args_in = resolved["TrainingArguments"]
    quant = dict(resolved["QuantizationConfig"])
    if "bnb_4bit_compute_dtype" in quant:
        quant["bnb_4bit_compute_dtype"] = getattr(torch, quant["bnb_4bit_compute_dtype"])
    bnb = BitsAndBytesConfig(**quant) if quant else None
    tokenizer = AutoTokenizer.from_pretrained(source)
    model_config = resolved["ModelConfig"]  # the same dtype and placement the program chose for this hardware
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, model_config["torch_dtype"]),
                                                 quantization_config=bnb, device_map=model_config["device_map"])
    if bnb is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args_in["gradient_checkpointing"])
    model = get_peft_model(model, LoraConfig(**resolved["LoraConfig"]))
    dataset = datasets.load_dataset("parquet", data_files=str(data / "train.parquet"), split="train")
    args = SFTConfig(
        output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=args_in["per_device_train_batch_size"],
        gradient_accumulation_steps=args_in["gradient_accumulation_steps"], learning_rate=args_in["learning_rate"],
        lr_scheduler_type=args_in["lr_scheduler_type"], max_length=args_in["max_length"],
        gradient_checkpointing=args_in["gradient_checkpointing"], use_cpu=bool(args_in.get("use_cpu")),
        bf16=bool(args_in.get("bf16")), fp16=bool(args_in.get("fp16")), report_to="none",
        save_strategy="no", logging_steps=1000, disable_tqdm=True, seed=args_in["seed"], optim=args_in["optim"],
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    tokens = int(trainer._total_train_tokens)  # trl's non-padding token counter
    return tokens / seconds, tokens, seconds


def compare(kind: str, rows: int, rounds: int, method: str, work: Path) -> float:
    data = write_dataset(work / f"data-{kind}", chat_rows(rows, kind))
    best_program = best_baseline = 0.0
    for index in range(rounds):
        rate, tokens, seconds, resolved = program_run(data, work / f"out-{kind}-{index}", method)
        print(f"  round {index + 1} program : {tokens:7d} tokens in {seconds:6.2f} s = {rate:8.0f} tok/s", flush=True)
        best_program = max(best_program, rate)
        rate, tokens, seconds = baseline_run(data, work / f"base-{kind}-{index}", resolved)
        print(f"  round {index + 1} baseline: {tokens:7d} tokens in {seconds:6.2f} s = {rate:8.0f} tok/s", flush=True)
        best_baseline = max(best_baseline, rate)
    ratio = best_program / best_baseline
    print(f"{kind}: program {best_program:.0f} tok/s, trl baseline {best_baseline:.0f} tok/s, ratio {ratio:.2f}", flush=True)
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", choices=("lora", "qlora"), default="qlora")
    parser.add_argument("--dataset", choices=("mixed", "uniform", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (1: steadier on a busy machine)")
    parser.add_argument("--hardware", choices=("cpu", "cuda-pre-ampere", "cuda-ampere"), default="cpu",
                        help="where both sides train (default cpu; a GPU machine: cuda-ampere)")
    args = parser.parse_args()
    HARDWARE[0] = args.hardware
    import torch

    torch.set_num_threads(args.threads)
    from tuning import progress

    progress.quiet_libraries()
    kinds = ("mixed", "uniform") if args.dataset == "both" else (args.dataset,)
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        os.environ.setdefault("KAIFLOW_HOME", str(Path.home() / ".kaiflow"))
        ratios = {kind: compare(kind, args.rows, args.rounds, args.method, Path(tmp)) for kind in kinds}
    print("RESULT " + " ".join(f"{kind}_ratio={ratio:.2f}" for kind, ratio in ratios.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
