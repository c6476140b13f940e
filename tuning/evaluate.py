"""Score adapters on the rows the trainer held out: the evaluation program retraining runs.

    python -m tuning.evaluate --model MODEL --data DIR [--config training_config.yaml] [--method qlora]
                              --adapter NAME=DIR [--adapter NAME=DIR ...] [--output scores.json]
                              [--summary PATH] [--max-rows N] [--max-answer-tokens N]

Why a program of its own (like ``python -m tuning``): it runs where the GPU is, as a process or a
pod, and imports no Prefect. The base model is loaded once and every adapter is attached to it in
turn (peft's named adapters), so scoring a candidate against the serving adapter costs one load.

Which rows: exactly the ones ``tuning.data.load_dataset_dir`` puts in the eval split for this
config — the same shuffle, seed and ``train_test_split`` the trainer used — so a candidate is
never scored on rows it trained on. A config without a split is refused (the caller decides which
slice to hold out and passes it in the config).

What is measured, per adapter, on the same rows and the same prompts the server would build:
    loss         mean cross-entropy per token of the reference answer (the last assistant turn, or the
                 completion), the end-of-turn token included; for plain ``text`` rows, every token
    exact_match  share of rows whose greedy answer equals the reference (whitespace-normalised);
                 only for chat/prompt-completion rows whose references are short
                 (≤ ``--max-answer-tokens``), else null

Output: JSON ``{"rows", "shape", "exact_match_applicable", "adapters": {NAME: {"loss", "tokens",
"exact_match", "matches"}}, "samples": [{"prompt", "reference", "answers": {NAME: text}}]}``.
``--summary PATH`` writes the same less the samples and per-adapter ``answers`` (a few hundred
bytes: what fits a pod's termination message, at most 4096 bytes); give ``--output``, ``--summary``
or both. Exit codes as ``python -m tuning``: 0 done, 2 bad config or dataset (one ``error:`` line), 1 other
(:mod:`tuning.protocol`).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning import config as tconfig
from tuning import data as tdata
from tuning import protocol

SAMPLES = 5


@dataclass
class Row:
    """One held-out row as token ids: the prompt the server would see, and the reference's tokens."""

    prompt: str
    reference: str
    prompt_ids: list[int]
    answer_ids: list[int]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.evaluate", description="Score LoRA adapters on held-out rows.")
    p.add_argument("--model", required=True, help="preset name, Hugging Face id, local folder or tiny-phi-3")
    p.add_argument("--data", required=True, type=Path, help="folder (or file) holding the dataset files")
    p.add_argument("--config", type=Path, help="the training_config.yaml the candidate was trained with")
    p.add_argument("--method", choices=tconfig.METHODS, default="qlora")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to score (repeat)")
    p.add_argument("--output", type=Path, help="where to write the scores (JSON)")
    p.add_argument("--summary", type=Path, help="where to write the scores less the samples (compact JSON, "
                   "e.g. /dev/termination-log)")
    p.add_argument("--max-rows", type=int, default=200, dest="max_rows", help="score at most this many held-out rows")
    p.add_argument("--max-answer-tokens", type=int, default=32, dest="max_answer_tokens",
                   help="exact-match only when every reference is at most this many tokens")
    return p


def parse_adapters(items: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise tconfig.ConfigError(f"--adapter {item!r}: expected NAME=DIR")
        if not (Path(path) / "adapter_config.json").exists():
            raise tconfig.ConfigError(f"--adapter {name}: {path} holds no adapter_config.json")
        adapters[name] = Path(path)
    if not adapters:
        raise tconfig.ConfigError("--adapter: give at least one NAME=DIR to score")
    return adapters


def held_out(data: Path, dataset_config: dict[str, Any], max_rows: int) -> tuple[Any, str]:
    """The eval split the trainer makes for this DatasetConfig (first ``max_rows`` rows), and its shape."""
    if float(dataset_config.get("train_test_split", 1.0)) >= 1:
        raise tconfig.ConfigError(
            "DatasetConfig.train_test_split: evaluation needs held-out rows; set it below 1 (e.g. 0.9)")
    loaded = tdata.load_dataset_dir(data, dataset_config)
    rows = loaded.eval
    if len(rows) > max_rows:
        rows = rows.select(range(max_rows))
    return rows, loaded.shape


def _prompt_and_reference(row: dict[str, Any], shape: str, chat: bool) -> tuple[Any, str]:
    if shape == "messages":
        turns = row["messages"]
        last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
        return turns[:last], turns[last]["content"]
    if shape == "prompt_completion":
        prompt = [{"role": "user", "content": row["prompt"]}] if chat else row["prompt"]
        return prompt, row["completion"]
    return "", row["text"]


def encode_row(tokenizer: Any, row: dict[str, Any], shape: str) -> Row:
    """Token ids of the prompt (as the server builds it) and of the reference answer that follows it."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    prompt, reference = _prompt_and_reference(row, shape, chat)
    if isinstance(prompt, list):
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reference}], tokenize=False)
        prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
        if full_text.startswith(prompt_text):
            answer_ids = tokenizer.encode(full_text[len(prompt_text):], add_special_tokens=False)
        else:  # a template that renders the history differently once answered: compare token prefixes
            full_ids = tokenizer.encode(full_text, add_special_tokens=False)
            answer_ids = full_ids[len(prompt_ids):]
        shown = prompt[-1]["content"] if prompt else ""
    else:
        prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.bos_token_id or tokenizer.eos_token_id]
        answer_ids = tokenizer.encode(reference, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            answer_ids = answer_ids + [tokenizer.eos_token_id]
        shown = prompt
    return Row(prompt=str(shown), reference=reference, prompt_ids=prompt_ids, answer_ids=answer_ids)


def answer_loss(model: Any, row: Row) -> tuple[float, int]:
    """Summed cross-entropy over the answer tokens, and their count."""
    import torch

    ids = torch.tensor([row.prompt_ids + row.answer_ids], device=model.device)
    labels = ids.clone()
    labels[0, : len(row.prompt_ids)] = -100
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    target = labels[0, 1:]
    loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    return float(loss), int((target != -100).sum())


def greedy_answer(model: Any, tokenizer: Any, row: Row) -> str:
    import torch

    ids = torch.tensor([row.prompt_ids], device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=len(row.answer_ids) + 4, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def same_answer(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def score(model: Any, tokenizer: Any, rows: list[Row], exact: bool) -> dict[str, Any]:
    total, tokens, matches, answers = 0.0, 0, 0, []
    for row in rows:
        loss, n = answer_loss(model, row)
        total, tokens = total + loss, tokens + n
        if exact:
            answers.append(greedy_answer(model, tokenizer, row))
            matches += same_answer(answers[-1], row.reference)
    return {
        "loss": total / max(tokens, 1),
        "tokens": tokens,
        "exact_match": (matches / len(rows)) if exact and rows else None,
        "matches": matches if exact else None,
        "answers": answers,
    }


def evaluate(model_name: str, data: Path, raw: dict[str, Any], method: str, adapters: dict[str, Path],
             max_rows: int = 200, max_answer_tokens: int = 32) -> dict[str, Any]:
    """Load the base model once, attach each adapter in turn, and score it on the held-out rows."""
    resolved = tconfig.resolve(raw, model=model_name, method=method, hardware="cpu")
    dataset, shape = held_out(data, resolved["DatasetConfig"], max_rows)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuning import train

    source = train.model_source(model_name)
    tokenizer = train.load_tokenizer(source, resolved["ModelConfig"])
    rows = [encode_row(tokenizer, r, shape) for r in dataset]
    exact = shape != "text" and all(len(r.answer_ids) <= max_answer_tokens for r in rows)
    base = AutoModelForCausalLM.from_pretrained(source, dtype="auto").eval()  # as the server loads it
    model, results = None, {}
    for name, path in adapters.items():
        if model is None:
            model = PeftModel.from_pretrained(base, str(path), adapter_name=name).eval()
        else:
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        model.set_adapter(name)
        results[name] = score(model, tokenizer, rows, exact)
    samples = [{"prompt": r.prompt, "reference": r.reference,
                "answers": {n: res["answers"][i] for n, res in results.items() if res["answers"]}}
               for i, r in enumerate(rows[:SAMPLES])]
    for res in results.values():
        res.pop("answers")
    return {"rows": len(rows), "shape": shape, "exact_match_applicable": exact, "adapters": results, "samples": samples}


def summary(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores less the samples: compact enough for a termination message."""
    keep = ("loss", "tokens", "exact_match", "matches")
    return {"rows": scores["rows"], "shape": scores["shape"], "exact_match_applicable": scores["exact_match_applicable"],
            "adapters": {n: {k: a.get(k) for k in keep} for n, a in scores["adapters"].items()}}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.output is None and args.summary is None:
        p.error("give --output (the full scores), --summary (without samples) or both")
    try:
        adapters = parse_adapters(args.adapter)
        raw = tconfig.load_file(args.config) if args.config else {}
        scores = evaluate(args.model, args.data, raw, args.method, adapters, args.max_rows, args.max_answer_tokens)
    except (tconfig.ConfigError, tdata.DatasetError) as exc:
        print(protocol.error_line(str(exc)), file=sys.stderr, flush=True)
        return protocol.EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the program's last word on any failure
        traceback.print_exc()
        print(protocol.error_line(f"{type(exc).__name__}: {exc}"), file=sys.stderr, flush=True)
        return protocol.EXIT_FAILED
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(scores, indent=1))
    if args.summary:
        args.summary.write_text(json.dumps(summary(scores), separators=(",", ":")))
    print(json.dumps({n: {k: v for k, v in r.items() if k in ("loss", "exact_match")} for n, r in scores["adapters"].items()}))
    return protocol.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
