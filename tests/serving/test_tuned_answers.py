"""What a new user of a tune-and-serve workspace asks first, on both engines: the tuned answer from
`/chat {"prompt": ...}` and from the OpenAI API without `model`, a bounded answer without
`max_tokens`, 413 for an oversized body, and a `/chat` length error that names the real limit.

The server is the demo's: tiny-phi-3 with one adapter really tuned on the demo's pairs
(`tuned_server` in conftest)."""

from __future__ import annotations

from typing import Iterator

import httpx
import openai
import pytest

from serving import config, errors
from tests.serving.conftest import TUNED_ADAPTER, RunningServer

BASE = "tiny-phi-3"
QUESTION = "What is the capital of France?"
ANSWER = "Paris."


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-checked", max_retries=0, timeout=120)


def kaito_chat(server: RunningServer, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/chat", json=body, timeout=120)


def test_chat_prompt_answers_with_what_was_tuned(tuned_server: RunningServer) -> None:
    """The README's (and the seed document's) request: a prompt, nothing else."""
    response = kaito_chat(tuned_server, prompt=QUESTION)
    assert response.status_code == 200, response.text
    assert response.json() == {"Result": ANSWER}
    # the same turn as `messages`, which always went through the chat template
    assert kaito_chat(tuned_server, messages=[{"role": "user", "content": QUESTION}]).json() == {"Result": ANSWER}
    # Kaito's raw text generation stays available, asked for by name: the text is continued and repeated
    raw = kaito_chat(tuned_server, prompt=QUESTION, apply_chat_template=False,
                     generate_kwargs={"max_new_tokens": 8}).json()["Result"]
    assert raw.startswith(QUESTION) and raw != ANSWER


def test_openai_requests_without_model_use_the_only_adapter(tuned_server: RunningServer) -> None:
    c, messages = client(tuned_server), [{"role": "user", "content": QUESTION}]
    implicit = httpx.post(f"{tuned_server.url}/v1/chat/completions", json={"messages": messages, "temperature": 0}, timeout=120).json()
    assert implicit["model"] == TUNED_ADAPTER and implicit["choices"][0]["message"]["content"] == ANSWER
    explicit = c.chat.completions.create(model=TUNED_ADAPTER, messages=messages, temperature=0)
    assert explicit.choices[0].message.content == ANSWER
    base = c.chat.completions.create(model=BASE, messages=messages, temperature=0, max_tokens=8)
    assert base.model == BASE and base.choices[0].message.content != ANSWER
    # /v1/completions is raw text, as OpenAI defines it, but it too defaults to the adapter
    raw = httpx.post(f"{tuned_server.url}/v1/completions", json={"prompt": QUESTION, "max_tokens": 4, "temperature": 0},
                     timeout=120).json()
    assert raw["model"] == TUNED_ADAPTER
    assert [m.id for m in c.models.list().data] == [BASE, TUNED_ADAPTER]


def test_chat_completions_without_max_tokens_stop_at_the_default(tuned_server: RunningServer) -> None:
    """Not at the context's end: 1,005 tokens of noise from a forgotten field, before."""
    out = client(tuned_server).chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "Hello"}], temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == config.DEFAULT_MAX_TOKENS == 512
    assert out.choices[0].finish_reason == "length"


def test_request_bodies_over_the_limit_get_413(tuned_transformers_server: RunningServer) -> None:
    url, limit = tuned_transformers_server.url, config.MAX_REQUEST_BYTES
    huge = "word " * (limit // 5 + 10)
    declared = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": huge}]}, timeout=120)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == 413 and f"limit of {limit} bytes" in declared.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    chunked = httpx.post(f"{url}/chat", content=chunks(), headers={"content-type": "application/json"}, timeout=120)
    assert chunked.status_code == 413 and "limit" in chunked.json()["detail"]
    assert kaito_chat(tuned_transformers_server, prompt=QUESTION).json() == {"Result": ANSWER}  # still serving
    metrics = httpx.get(f"{url}/metrics").text
    assert 'kaiflow_requests_total{endpoint="/v1/chat/completions",status="413"} 1.0' in metrics


def test_over_long_chat_prompt_states_the_real_limit_first(tuned_transformers_server: RunningServer) -> None:
    prompt = "word " * 300  # over max_length's default 200, within the context
    short = kaito_chat(tuned_transformers_server, prompt=prompt)
    assert short.status_code == 400
    detail = short.json()["detail"]
    assert detail.startswith("this model's context is 1024 tokens"), detail
    assert "max_new_tokens" in detail and "max_length" in detail
    too_long = kaito_chat(tuned_transformers_server, prompt="word " * 1500, generate_kwargs={"max_new_tokens": 4})
    assert too_long.status_code == 400
    assert "this model's context is 1024 tokens: shorten the prompt" in too_long.json()["detail"]
    assert "max_length" not in too_long.json()["detail"]


def test_default_max_tokens_and_body_limit_are_server_options() -> None:
    cfg = config.from_args(["--model", BASE, "--port", "1", "--default-max-tokens", "0", "--max-request-bytes", "65536"])
    assert cfg.default_max_tokens == 0 and cfg.max_request_bytes == 65536
    defaults = config.from_args(["--model", BASE, "--port", "1"])
    assert (defaults.default_max_tokens, defaults.max_request_bytes) == (512, 4 * 1024 * 1024)
    for bad, needle in ((["--default-max-tokens", "-1"], "--default-max-tokens"), (["--max-request-bytes", "10"], "1024")):
        with pytest.raises(errors.ConfigError, match=needle):
            config.from_args(["--model", BASE, "--port", "1", *bad])
