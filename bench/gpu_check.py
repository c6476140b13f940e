"""The CUDA paths on a GPU machine: 4-bit QLoRA (bitsandbytes) through the tuning program, the
8-bit path, Kaito's default QLoRA config file unchanged, and answers generated on the GPU.

Not part of the test suite (CI has no GPU). Run it where a GPU is lent, with the tuning stack
installed (transformers, peft, trl, datasets, bitsandbytes):

    python bench/gpu_check.py [--out results.json]

Each check prints ``CHECK <name> ok|FAIL ...`` and the script exits non-zero if any failed.
The tiny model is built on the spot (random weights, tokenizer trained from text), as in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

from tests.tuning.conftest import PAIRS, chat_rows, write_parquet  # noqa: E402 - the tests' Q/A pairs

RESULTS: dict[str, dict] = {}
# Where the checks run: the GPU, or (``--cpu``, to try the script itself on a machine without one) the CPU.
TARGET = {"device": "cuda", "hardware": "cuda-ampere", "dtype": "bfloat16"}


def check(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            started = time.monotonic()
            try:
                detail = fn(*args, **kwargs) or {}
                RESULTS[name] = {"ok": True, "seconds": round(time.monotonic() - started, 1), **detail}
                print(f"CHECK {name} ok {json.dumps(detail)}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a check's failure is its result
                traceback.print_exc()
                RESULTS[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                print(f"CHECK {name} FAIL {type(exc).__name__}: {exc}"[:2000], flush=True)
        return run
    return wrap


def write_data(folder: Path) -> Path:
    write_parquet(folder / "train-00000-of-00001.parquet", chat_rows())
    return folder


def greedy_answers(model_dir: Path, adapter: Path | None) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, TARGET["dtype"]),
                                                 device_map=TARGET["device"])
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    answers = []
    for question, _ in PAIRS:
        chat = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]
        inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True).to(TARGET["device"])
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


@check("environment")
def environment() -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
    for name in ("transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate", "pyarrow"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001
            info[name] = f"import failed: {exc}"
    from tuning import config as tconfig

    info["detected_hardware"] = tconfig.detect_hardware()
    assert info["detected_hardware"] == TARGET["hardware"], info
    return info


@check("qlora_4bit_modules_on_gpu")
def qlora_modules(model_dir: Path) -> dict:
    """The program's own loader: base Linear layers are bitsandbytes Linear4bit (nf4) on the GPU."""
    import bitsandbytes as bnb
    import torch

    from tuning import config as tconfig
    from tuning import train

    resolved = tconfig.resolve({}, model="tiny-phi-3", method="qlora", hardware=TARGET["hardware"])
    model = train.load_model(str(model_dir), resolved)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    devices = {str(m.weight.device) for m in four_bit}
    quant = {m.weight.quant_type for m in four_bit}
    want = "cuda:0" if TARGET["device"] == "cuda" else "cpu"
    assert four_bit and devices == {want} and quant == {"nf4"}, (len(four_bit), devices, quant)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    memory = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    del model
    return {"linear4bit_modules": len(four_bit), "devices": sorted(devices), "quant_type": sorted(quant),
            "trainable_params": trainable, "max_cuda_mib": round(memory, 1),
            "compute_dtype": resolved["QuantizationConfig"]["bnb_4bit_compute_dtype"],
            "bf16": resolved["TrainingArguments"].get("bf16")}


@check("qlora_4bit_program_learns")
def qlora_program(model_dir: Path, data: Path, work: Path) -> dict:
    import subprocess

    output = work / "qlora"
    proc = subprocess.run([sys.executable, "-m", "tuning", "--data", str(data), "--model", "tiny-phi-3",
                           "--output", str(output)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    resolved = metrics["resolved_config"]
    assert resolved["hardware"] == TARGET["hardware"] and resolved["QuantizationConfig"]["load_in_4bit"] is True
    assert resolved["TrainingArguments"]["bf16"] is (TARGET["hardware"] == "cuda-ampere")
    final_loss = metrics["loss"][-1][1]
    assert final_loss < 0.5, metrics["loss"]
    expected = [a for _, a in PAIRS]
    tuned = greedy_answers(model_dir, output)
    base = greedy_answers(model_dir, None)
    assert tuned == expected, tuned
    assert base != expected, base
    return {"steps": metrics["steps"], "final_loss": final_loss, "tokens_per_second": metrics["tokens_per_second"],
            "train_seconds": metrics.get("train_seconds"), "answers_with_adapter": tuned,
            "answers_base": base, "adjustments": resolved.get("adjustments")}


@check("serving_transformers_engine_with_adapter")
def serving(model_dir: Path, adapter: Path, work: Path) -> dict:
    """The serving program's transformers engine (the fallback without vLLM) on this device, over HTTP,
    answering through the adapter the QLoRA check trained."""
    import subprocess

    import httpx

    from infra import local_process

    port = local_process.free_port()
    log_path = work / "serving.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(model_dir), "--engine", "transformers",
                                 "--adapter", f"qa={adapter}", "--port", str(port)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        local_process.wait_healthy(f"{url}/health", pid=proc.pid, timeout=180, log_path=log_path)
        answers = []
        for question, _ in PAIRS:
            body = {"model": "qa", "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]}
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            answers.append(reply.json()["choices"][0]["message"]["content"].strip())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    loaded = [line for line in log_path.read_text().splitlines() if "transformers engine:" in line]
    assert loaded and f"on {TARGET['device']}" in loaded[-1], loaded
    assert answers == [a for _, a in PAIRS], answers
    return {"answers": answers, "engine_log": loaded[-1][-160:]}


@check("qlora_8bit_program_runs")
def eightbit_program(data: Path, work: Path) -> dict:
    from tuning import cli

    config = work / "eight.yaml"
    config.write_text("training_config:\n  QuantizationConfig:\n    load_in_8bit: true\n")
    output = work / "eight"
    rc = cli.main(["--config", str(config), "--data", str(data), "--model", "tiny-phi-3", "--output", str(output),
                   "--max-steps", "10"])
    assert rc == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["resolved_config"]["QuantizationConfig"]["load_in_8bit"] is True
    return {"steps": metrics["steps"], "loss": metrics["loss"][-1][1]}


@check("kaito_qlora_config_unchanged")
def kaito_config(data: Path, work: Path) -> dict:
    from tests.tuning.test_config import KAITO_QLORA_YAML
    from tuning import cli

    config = work / "training_config.yaml"
    config.write_text(KAITO_QLORA_YAML)  # Kaito's qlora-params.yaml training_config, as the tests use it
    output = work / "kaito"
    rc = cli.main(["--config", str(config), "--data", str(data), "--model", "tiny-phi-3", "--output", str(output),
                   "--max-steps", "4"])
    assert rc == 0
    resolved = json.loads((output / "metrics.json").read_text())["resolved_config"]
    assert resolved["ModelConfig"]["torch_dtype"] == TARGET["dtype"], resolved["ModelConfig"]
    assert not Path("/mnt/results").exists()
    return {"torch_dtype": resolved["ModelConfig"]["torch_dtype"], "adjustments": resolved.get("adjustments"),
            "steps": json.loads((output / "metrics.json").read_text())["steps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU (to try the script)")
    args = parser.parse_args()
    if args.cpu:
        TARGET.update(device="cpu", hardware="cpu", dtype="float32")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="kaiflow-gpu-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("KAIFLOW_HOME", str(work / "home"))
        from presets import tiny

        environment()
        model_dir = tiny.ensure()
        data = write_data(work / "data")
        qlora_modules(model_dir)
        qlora_program(model_dir, data, work)
        if (work / "qlora" / "COMPLETE").exists():
            serving(model_dir, work / "qlora", work)
        eightbit_program(data, work)
        kaito_config(data, work)
    if args.out:
        args.out.write_text(json.dumps(RESULTS, indent=2))
    failed = [name for name, result in RESULTS.items() if not result["ok"]]
    print("RESULT " + ("all ok" if not failed else "FAILED: " + ", ".join(failed)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
