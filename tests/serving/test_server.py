"""The server over real HTTP, on both engines: Kaito's /chat, the OpenAI API (official client),
adapter selection and strength, run-time adapter changes, bad requests, metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.serving.conftest import RunningServer

BASE = "tiny-phi-3"
PROMPT = "The capital of France is"


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-checked", max_retries=0, timeout=120)


def complete(server: RunningServer, model: str, prompt: str = PROMPT, max_tokens: int = 16) -> str:
    out = client(server).completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return out.choices[0].text


def test_health_and_models_list_base_and_adapters(server: RunningServer) -> None:
    for path in ("/", "/health", "/healthz"):
        assert httpx.get(server.url + path).status_code == 200
    models = {m.id: m for m in client(server).models.list().data}
    assert set(models) == {BASE, "alpha", "alpha-zero", "alpha-half", "beta"}
    assert models["alpha-half"].model_extra["strength"] == 0.5
    assert models["beta"].model_extra["parent"] == BASE


def test_kaito_chat_answers_prompt_deterministically(server: RunningServer) -> None:
    """Kaito's text generation, asked for explicitly: the raw prompt is continued, and repeated in Result."""
    body = {"prompt": PROMPT, "model": BASE, "generate_kwargs": {"max_length": 24}, "apply_chat_template": False}
    first = httpx.post(f"{server.url}/chat", json=body, timeout=60)
    assert first.status_code == 200, first.text
    result = first.json()["Result"]
    assert result.startswith(PROMPT) and len(result) > len(PROMPT)  # return_full_text defaults to true
    assert httpx.post(f"{server.url}/chat", json=body, timeout=60).json()["Result"] == result
    short = httpx.post(f"{server.url}/chat", json={**body, "return_full_text": False}, timeout=60).json()["Result"]
    assert PROMPT + short == result


def test_kaito_chat_with_messages_uses_the_chat_template(server: RunningServer) -> None:
    body = {"messages": [{"role": "user", "content": "Hello"}], "model": BASE, "generate_kwargs": {"max_new_tokens": 8}}
    answer = httpx.post(f"{server.url}/chat", json=body, timeout=60).json()["Result"]
    chat = client(server).chat.completions.create(model=BASE, messages=body["messages"], max_tokens=8, temperature=0)
    assert answer == chat.choices[0].message.content


def test_kaito_chat_without_prompt_or_messages_is_400(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/chat", json={"generate_kwargs": {"max_length": 10}})
    assert response.status_code == 400
    assert "prompt" in response.json()["detail"] and "messages" in response.json()["detail"]


def test_openai_chat_and_completions_stream_the_same_text(server: RunningServer) -> None:
    c = client(server)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = c.chat.completions.create(model="beta", messages=messages, max_tokens=20, temperature=0)
    assert whole.model == "beta" and whole.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model="beta", messages=messages, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = complete(server, "beta")
    pieces = c.completions.create(model="beta", prompt=PROMPT, max_tokens=16, temperature=0, stream=True)
    assert "".join(p.choices[0].text for p in pieces) == text


def test_adapter_selection_changes_output_and_strength_zero_is_base(server: RunningServer) -> None:
    base, alpha, beta = complete(server, BASE), complete(server, "alpha"), complete(server, "beta")
    assert len({base, alpha, beta}) == 3
    assert complete(server, "alpha-zero") == base
    assert complete(server, "alpha-half") not in (base, alpha)


def test_bad_requests_get_4xx_with_reason_and_server_keeps_serving(server: RunningServer) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError, match="nope"):
        c.completions.create(model="nope", prompt="hi", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.completions.create(model=BASE, prompt="hi", max_tokens=-3)
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model=BASE, prompt="word " * 1200, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="context"):
        c.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    malformed = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]
    bad_kwarg = httpx.post(f"{server.url}/chat", json={"prompt": "hi", "generate_kwargs": {"max_lenght": 5}})
    assert bad_kwarg.status_code == 400 and "max_lenght" in bad_kwarg.json()["detail"]
    assert complete(server, BASE, max_tokens=4)


def test_adapters_load_replace_and_unload_at_run_time(server: RunningServer, adapter_dirs: dict[str, Path]) -> None:
    url, gamma = server.url, adapter_dirs["gamma"]
    base = complete(server, BASE)
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "rolling", "lora_path": str(gamma)}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    with_gamma = complete(server, "rolling")
    assert with_gamma != base
    replaced = httpx.post(f"{url}/v1/load_lora_adapter",
                          json={"lora_name": "rolling", "lora_path": str(gamma), "strength": 0.0}, timeout=60)
    assert replaced.status_code == 200 and replaced.json()["version"] > loaded.json()["version"]
    assert complete(server, "rolling") == base
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "rolling"}).status_code == 200
    assert "rolling" not in {m.id for m in client(server).models.list().data}
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "rolling"}).status_code == 404
    missing = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/nonexistent"})
    assert missing.status_code == 400 and "/nonexistent" in missing.json()["error"]["message"]


def test_replacing_an_adapter_lets_requests_in_flight_finish_on_the_old_one(
        server: RunningServer, adapter_dirs: dict[str, Path]) -> None:
    """Over HTTP, on both engines. On the transformers engine the swap is applied after the streamed
    request's generation (one worker thread, in order), so there this passes whatever the swap does
    with the old version; tests/serving/test_claims_swap.py builds the order that can hurt."""
    url, c = server.url, client(server)
    load = {"lora_name": "roll2", "lora_path": str(adapter_dirs["gamma"])}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=60).status_code == 200
    params = {"model": "roll2", "prompt": PROMPT, "max_tokens": 300, "temperature": 0, "extra_body": {"ignore_eos": True}}
    expected = c.completions.create(**params).choices[0].text
    stream = c.completions.create(stream=True, **params)
    received = [next(iter(stream)).choices[0].text]
    swap = {"lora_name": "roll2", "lora_path": str(adapter_dirs["beta"])}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=swap, timeout=60).status_code == 200
    received += [p.choices[0].text for p in stream]
    assert "".join(received) == expected
    assert complete(server, "roll2") == complete(server, "beta")
    httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "roll2"})


def test_metrics_are_prometheus_text(server: RunningServer) -> None:
    complete(server, BASE, max_tokens=4)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'kaiflow_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "kaiflow_request_latency_seconds_bucket" in text and "kaiflow_time_to_first_token_seconds" in text
    assert 'kaiflow_generation_tokens_total{model="tiny-phi-3"}' in text
    assert "kaiflow_queue_depth" in text and "kaiflow_requests_in_flight" in text
    assert "kaiflow_engine_info{" in text


@pytest.mark.vllm
@pytest.mark.slow
def test_both_engines_give_the_same_greedy_output(transformers_server: RunningServer, vllm_server: RunningServer) -> None:
    for model in (BASE, "alpha", "alpha-half", "beta"):
        for prompt in (PROMPT, "def main():"):
            assert complete(transformers_server, model, prompt) == complete(vllm_server, model, prompt), (model, prompt)
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    answers = [client(s).chat.completions.create(model="alpha", messages=messages, max_tokens=16, temperature=0)
               .choices[0].message.content for s in (transformers_server, vllm_server)]
    assert answers[0] == answers[1]
