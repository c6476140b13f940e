"""Fixtures for the serving tests: adapters built with peft on the tiny model, and real servers.

Each server is `python -m serving` in a child process on a free 127.0.0.1 port, reached over
HTTP. The transformers servers start in seconds; each vLLM server is shared by the whole
session (it takes ~30-50 s to start on CPU).

`tuned_server` serves what `make demo` serves: tiny-phi-3 with one adapter, named like the demo's
workspace, really tuned (by `python -m tuning`, ~20 s) on the demo's question/answer pairs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from infra import local_process

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def build_adapter(model_dir: Path, dest: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it visibly changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model: Path, session_tmp: Path) -> dict[str, Path]:
    root = session_tmp / "serving-adapters"
    return {name: build_adapter(tiny_model, root / name, seed) for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3))}


@dataclass
class RunningServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def running_server(args: list[str], *, timeout_s: float = 240, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """Start `python -m serving ARGS` and wait for /health 200; stop it (by PID) afterwards."""
    port = local_process.free_port()
    log = Path(tempfile.mkstemp(prefix="serving-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving", *args, "--port", str(port)], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        local_process.wait_healthy(f"{server.url}/health", pid=proc.pid, marker="-m serving", timeout=timeout_s, log_path=log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def adapter_args(adapter_dirs: dict[str, Path]) -> list[str]:
    """The adapter set every multi-adapter server gets: the same adapter at strength 1, 0 and 0.5, and another."""
    a, b = adapter_dirs["alpha"], adapter_dirs["beta"]
    return ["--adapter", f"alpha={a}", "--adapter", f"alpha-zero={a}:0", "--adapter", f"alpha-half={a}:0.5",
            "--adapter", f"beta={b}"]


@pytest.fixture(scope="session")
def transformers_server(adapter_dirs: dict[str, Path]) -> Iterator[RunningServer]:
    with running_server(["--model", "tiny-phi-3", "--engine", "transformers", *adapter_args(adapter_dirs)]) as server:
        yield server


@pytest.fixture(scope="session")
def vllm_server(adapter_dirs: dict[str, Path], session_tmp: Path) -> Iterator[RunningServer]:
    if os.environ.get("KAIFLOW_TESTS_STRICT") != "1":
        pytest.importorskip("vllm")  # strict (make test / CI): a missing vLLM fails instead of skipping
    config = session_tmp / "inference_config.yaml"
    # Kaito's file shape; float32 so vLLM computes in the same precision as the transformers engine
    config.write_text("max_probe_steps: 6\nvllm:\n  dtype: float32\n  max-model-len: 1024\n")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    args = ["--model", "tiny-phi-3", "--engine", "vllm", "--config", str(config), *adapter_args(adapter_dirs)]
    with running_server(args, env=env, timeout_s=400) as server:
        yield server


DEMO_DATA = REPO / "examples" / "local" / "data"
TUNED_ADAPTER = "tiny-tune-and-serve"  # the demo workspace's name, which names its adapter


@pytest.fixture(scope="session")
def tuned_adapter(tiny_model: Path, session_tmp: Path) -> Path:
    """An adapter tuned on the demo's data: it answers "What is the capital of France?" with "Paris."."""
    output = session_tmp / "tuned-demo-adapter"
    result = subprocess.run([sys.executable, "-m", "tuning", "--data", str(DEMO_DATA), "--model", "tiny-phi-3",
                             "--output", str(output)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return output


def tuned_args(engine: str, adapter: Path) -> list[str]:
    """The command line the local platform gives a tune-and-serve workspace's server (tasks/deploy.py)."""
    return ["--model", "tiny-phi-3", "--engine", engine, "--served-model-name", "tiny-phi-3",
            "--adapter", f"{TUNED_ADAPTER}={adapter}:1.0"]


@pytest.fixture(scope="session")
def tuned_transformers_server(tuned_adapter: Path) -> Iterator[RunningServer]:
    with running_server(tuned_args("transformers", tuned_adapter)) as server:
        yield server


@pytest.fixture(scope="session")
def tuned_vllm_server(tuned_adapter: Path) -> Iterator[RunningServer]:
    if os.environ.get("KAIFLOW_TESTS_STRICT") != "1":
        pytest.importorskip("vllm")
    with running_server(tuned_args("vllm", tuned_adapter), env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout_s=400) as server:
        yield server


ENGINES = [
    pytest.param("transformers", id="transformers"),
    pytest.param("vllm", id="vllm", marks=[pytest.mark.vllm, pytest.mark.slow]),
]


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest) -> RunningServer:
    """Each test taking ``server`` runs once per engine."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(params=ENGINES)
def tuned_server(request: pytest.FixtureRequest) -> RunningServer:
    """The demo's tuned adapter, served alone: each test taking it runs once per engine."""
    return request.getfixturevalue(f"tuned_{request.param}_server")


def soak_asked_for(config: pytest.Config) -> bool:
    """Whether the run asks for the long soak: a marker expression naming slow or soak (not negated), or KAIFLOW_SOAK=1."""
    expr = str(config.getoption("markexpr", "") or "").replace("not slow", "").replace("not soak", "")
    return "slow" in expr or "soak" in expr or os.environ.get("KAIFLOW_SOAK") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The 10-minute soak (marked ``soak``) runs only when asked for; otherwise it is deselected, not skipped
    (strict mode, as ``make test`` runs, counts a skip as a failure)."""
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak and not soak_asked_for(config):
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
