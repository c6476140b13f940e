"""One-adapter servers: /chat's default adapter, 429 when the queue is full, start-up refusals."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
from transformers import AutoTokenizer

import presets

from tests.serving.conftest import REPO, RunningServer, running_server

BASE = "tiny-phi-3"


@pytest.fixture(scope="module")
def one_adapter_server(adapter_dirs: dict[str, Path]) -> Iterator[RunningServer]:
    """The transformers engine runs one request at a time; a queue depth of 0 admits only that one."""
    args = ["--model", BASE, "--engine", "transformers", "--adapter", f"workspace-adapter={adapter_dirs['alpha']}",
            "--max-queue-depth", "0", "--served-model-name", "phi"]
    with running_server(args) as server:
        yield server


def chat(server: RunningServer, **extra: object) -> str:
    # raw text generation: on random weights the chat template's first reply token is often the end
    body = {"prompt": "Hello", "generate_kwargs": {"max_length": 20}, "apply_chat_template": False, **extra}
    response = httpx.post(f"{server.url}/chat", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["Result"]


def test_chat_without_model_uses_the_only_adapter_and_base_name_forces_base(one_adapter_server: RunningServer) -> None:
    default = chat(one_adapter_server)
    assert default == chat(one_adapter_server, model="workspace-adapter")
    assert default != chat(one_adapter_server, model="phi")  # --served-model-name is the base's name
    assert chat(one_adapter_server, model=BASE) == chat(one_adapter_server, model="phi")


def test_full_queue_answers_429_with_retry_after_then_recovers(one_adapter_server: RunningServer) -> None:
    c = openai.OpenAI(base_url=f"{one_adapter_server.url}/v1", api_key="x", max_retries=0, timeout=60)
    stream = c.completions.create(model="phi", prompt="Hello", max_tokens=900, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    next(iter(stream))  # admitted and generating
    try:
        refused = httpx.post(f"{one_adapter_server.url}/v1/completions", json={"model": "phi", "prompt": "x", "max_tokens": 2})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "capacity" in refused.json()["error"]["message"]
        kaito = httpx.post(f"{one_adapter_server.url}/chat", json={"prompt": "x"})
        assert kaito.status_code == 429 and "Retry-After" in kaito.headers
    finally:
        stream.close()  # the client goes away: the server cancels the generation
    wait_until_idle(one_adapter_server)
    assert chat(one_adapter_server)
    metrics = httpx.get(f"{one_adapter_server.url}/metrics").text
    assert 'kaiflow_requests_total{endpoint="/v1/completions",status="429"} 1.0' in metrics


def wait_until_idle(server: RunningServer, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while "kaiflow_requests_in_flight 0.0" not in httpx.get(f"{server.url}/metrics").text:
        assert time.monotonic() < deadline, "the cancelled request never left the server"
        time.sleep(0.1)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_missing_adapter_directory_is_refused_at_start(tmp_path: Path) -> None:
    result = run_cli("--model", BASE, "--port", "1", "--adapter", f"a={tmp_path / 'missing'}")
    assert result.returncode == 2
    assert "--adapter a" in result.stderr and "missing" in result.stderr


def test_adapter_without_config_and_bad_spec_are_refused(tmp_path: Path) -> None:
    result = run_cli("--model", BASE, "--port", "1", "--adapter", f"a={tmp_path}")
    assert result.returncode == 2 and "adapter_config.json" in result.stderr
    result = run_cli("--model", BASE, "--port", "1", "--adapter", "no-equals-sign")
    assert result.returncode == 2 and "NAME=DIR" in result.stderr


def test_config_file_with_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "inference_config.yaml"
    config.write_text("vlm:\n  max-model-len: 10\n")
    result = run_cli("--model", BASE, "--port", "1", "--config", str(config))
    assert result.returncode == 2 and "'vlm'" in result.stderr and "vllm:" in result.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_unknown_vllm_engine_argument_is_named(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    config = tmp_path / "inference_config.yaml"
    config.write_text("vllm:\n  max-modle-len: 1024\n")
    result = run_cli("--model", BASE, "--engine", "vllm", "--port", "1", "--config", str(config))
    assert result.returncode == 2
    assert "max-modle-len" in result.stderr and "max-model-len" in result.stderr


@pytest.mark.slow
def test_kaito_config_with_retired_vllm_keys_and_a_chat_template_starts(tmp_path: Path) -> None:
    """Kaito's default inference_config.yaml sets swap-space, which current vLLM removed."""
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    config = tmp_path / "inference_config.yaml"
    config.write_text(f"max_probe_steps: 6\nvllm:\n  cpu-offload-gb: 0\n  swap-space: 4\n  chat-template: {template}\n")
    with running_server(["--model", BASE, "--engine", "transformers", "--config", str(config)]) as server:
        messages = [{"role": "user", "content": "Hello"}]
        c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        usage = c.chat.completions.create(model=BASE, messages=messages, max_tokens=2, temperature=0).usage
        tokenizer = AutoTokenizer.from_pretrained(presets.resolve_model_source(BASE))
        assert usage.prompt_tokens == len(tokenizer.encode("[user] Hello\n[assistant] ", add_special_tokens=False))
