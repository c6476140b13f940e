"""API fuzzing of the inference server: property-based requests generated from its own OpenAPI schema.

schemathesis reads the server's `/openapi.json` and generates request bodies for every operation,
both valid ones ("positive": every constraint the schema states is met) and invalid ones
("negative": wrong types, values out of range, missing fields). At least `REQUESTS` of them go to a
real server over HTTP on each engine, and every answer must be:

* not a 5xx other than the documented 503 (429 is a documented 4xx: the queue is full);
* a status the schema documents for that operation (so the schema tells clients the truth);
* in time: a request that takes longer than `HANG_S` is a hang.

Afterwards `/health` still answers 200, no request is left in flight, and the server's memory
(RSS of the server and its engine processes) is back near what it was after a warm-up
(`MEMORY_MARGIN_MIB`, justified there).

Generation is kept tiny so 1,000 requests take a minute or two on 2 cores: the servers run with
``--default-max-tokens 4``, and token counts a case asks for that would fit the context are
lowered to at most 8 (`_tiny`); counts beyond the context are left alone, so the 400 for them is
still exercised. All failures are collected and reported together, each with the request that
caused it.
"""

from __future__ import annotations

import json
import re
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.serving.conftest import RunningServer, running_server

BASE = "tiny-phi-3"
REQUESTS = 1000  # per engine, at least
HANG_S = 60.0  # one tiny generation takes well under a second; a minute is a hang, not a slow machine
CONTEXT = 1024  # tiny-phi-3's context (presets/tiny.py)
ALLOWED_5XX = {503}  # documented: the model is loading (429, the other documented refusal, is a 4xx)
# RSS (server plus engine processes) may grow a little after the warm-up without any leak: glibc and
# torch's CPU allocator keep freed blocks, caches are sized by the longest prompt seen. Measured over
# 1,145 requests: transformers +2 to +8 MiB; vLLM +72 and +95 MiB in two runs, all of it in the engine
# core process (1.6 GiB: weights, 1 GiB KV cache, kernels per batch shape, ~80 adapter loads and
# replacements), the HTTP process +1 MiB. The margins are about twice that: a leak of 100 KiB per
# request (a request's tensors, or its text kept) adds ~110 MiB and is caught on transformers; on
# vLLM, where the engine core's own growth is larger, 2x its largest measured growth is allowed.
MEMORY_MARGIN_MIB = {"transformers": 64, "vllm": 192}

WARM_UP = 15  # valid cases per operation that takes input, before the baseline
# how many examples each operation gets, per generation mode (1,085 requests in all; the 5 GET
# operations take no input and get one each). Generating the cases is about half the run's time.
EXAMPLES = {
    "POST /v1/chat/completions": 150,
    "POST /v1/completions": 150,
    "POST /chat": 150,
    "POST /v1/load_lora_adapter": 60,
    "POST /v1/unload_lora_adapter": 30,
}


def _server_args(engine: str, adapter_dirs: dict[str, Path]) -> list[str]:
    return ["--model", BASE, "--engine", engine, "--default-max-tokens", "4",
            "--adapter", f"alpha={adapter_dirs['alpha']}", "--adapter", f"beta={adapter_dirs['beta']}:0.5"]


@pytest.fixture(scope="module")
def fuzz_transformers_server(adapter_dirs: dict[str, Path]) -> Iterator[RunningServer]:
    with running_server(_server_args("transformers", adapter_dirs)) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_vllm_server(adapter_dirs: dict[str, Path], session_tmp: Path) -> Iterator[RunningServer]:
    if os.environ.get("KAIFLOW_TESTS_STRICT") != "1":
        pytest.importorskip("vllm")
    config = session_tmp / "fuzz_inference_config.yaml"
    config.write_text("vllm:\n  max-model-len: 1024\n")
    args = [*_server_args("vllm", adapter_dirs), "--config", str(config)]
    with running_server(args, env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout_s=400) as server:
        yield server


def rss_mib(pid: int) -> float:
    """Resident memory of the server and every process under it (vLLM's engine core), in MiB."""
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def rss_by_process(pid: int) -> str:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return ", ".join(f"{p.pid}: {p.memory_info().rss / 2**20:.0f}" for p in procs if p.is_running())


def _tiny(value: Any, limit: int = 8) -> Any:
    """A token count that would fit the context, lowered to at most ``limit``; anything else unchanged.

    ``832.0`` counts too: pydantic reads a whole float as an int, so the server would generate 832 tokens.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and limit < value <= CONTEXT \
            and float(value).is_integer():
        return int(value) % limit + 1
    return value


MODELS = (BASE, "alpha", "beta")  # what the fuzz servers serve
VOCAB = 600  # token ids below the tokenizer's size (615 for tiny-phi-3's trained tokenizer)


def steer(label: str, body: Any, adapter: Path) -> Any:
    """Keep generation tiny, and send a share of the cases down the paths random values rarely reach.

    Random strings are almost never a served model, an adapter directory or token ids inside the
    vocabulary, so without this nearly every case would stop at a 404 or a 400. Which cases are
    steered depends on the generated values themselves (a length's remainder), so each run stays
    reproducible from Hypothesis' seed.
    """
    if not isinstance(body, dict):
        return body
    model = body.get("model")
    if isinstance(model, str) and model not in MODELS and len(model) % 4 != 3:  # a quarter stay unknown: 404
        body["model"] = MODELS[len(model) % 3]
    if label == "POST /chat" and body.get("prompt") is None and not body.get("messages") and len(body) % 2:
        body["prompt"] = "Hello"  # one of the two is required, which the schema cannot say field by field
    prompt = body.get("prompt")
    if label == "POST /v1/completions" and isinstance(prompt, list) and len(prompt) % 2 == 0 \
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        body["prompt"] = [abs(t) % VOCAB for t in prompt]
    name = body.get("lora_name")
    if label == "POST /v1/load_lora_adapter" and isinstance(name, str) and len(name) % 3 != 2:
        # load and replace two names at run time (the retire path, scaled copies) with a real adapter
        body["lora_name"], body["lora_path"] = f"fuzz-{len(name) % 2}", str(adapter)
    if label == "POST /v1/unload_lora_adapter" and isinstance(name, str) and len(name) % 3 == 0:
        body["lora_name"] = f"fuzz-{len(name) % 2}"
    for key in ("max_tokens", "max_completion_tokens", "min_tokens"):
        if key in body:
            body[key] = _tiny(body[key])
    if label == "POST /v1/completions" and "max_tokens" not in body:
        body["max_tokens"] = 4  # its default (16, as OpenAI's) would otherwise dominate the run time
    kwargs = body.get("generate_kwargs")
    if label == "POST /chat" and isinstance(kwargs, dict):
        for key in ("max_new_tokens", "min_length"):
            if key in kwargs:
                kwargs[key] = _tiny(kwargs[key])
        if "max_length" in kwargs:
            kwargs["max_length"] = _tiny(kwargs["max_length"], 24)
        elif kwargs.get("max_new_tokens") is None:
            kwargs["max_new_tokens"] = 4  # max_length's default (200) would otherwise generate ~190 tokens
    elif label == "POST /chat" and "generate_kwargs" not in body:
        body["generate_kwargs"] = {"max_new_tokens": 4}
    return body


class Fuzzer:
    """Sends generated cases to a running server and records what it sees."""

    def __init__(self, server: RunningServer, adapter: Path) -> None:
        self.url, self.adapter = server.url, adapter
        self.raw = httpx.get(f"{self.url}/openapi.json", timeout=30).json()
        self.schema = schemathesis.openapi.from_dict(self.raw)
        self.session = requests.Session()
        self.sent = 0
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []
        self.kinds: Counter[tuple[str, str]] = Counter()
        self.refusals: Counter[str] = Counter()
        self.waited = 0.0
        self.mode = GenerationMode.POSITIVE
        self.slowest = 0.0

    def documented(self, label: str, status: int) -> bool:
        method, path = label.split(" ", 1)
        responses = self.raw["paths"][path][method.lower()].get("responses", {})
        return str(status) in responses or "default" in responses

    def send(self, label: str, case: Any) -> None:
        case.body = steer(label, case.body, self.adapter)
        start = time.perf_counter()
        try:
            response = case.call(base_url=self.url, session=self.session, timeout=HANG_S)
        except requests.Timeout:
            self.fail(label, f"no answer within {HANG_S:.0f} s (a hang)", case.body)
            return
        except requests.ConnectionError as exc:
            self.fail(label, f"connection failed ({exc})", case.body)
            return
        finally:
            self.sent += 1
        elapsed = time.perf_counter() - start
        self.slowest, self.waited = max(self.slowest, elapsed), self.waited + elapsed
        status = response.status_code
        self.statuses[(label, status)] += 1
        if status == 400 and self.mode == GenerationMode.POSITIVE:  # what stops valid-looking cases (steering hints)
            self.refusals[f"{label} {_message(response)[:70]}"] += 1
        if status >= 500 and status not in ALLOWED_5XX:
            self.fail(label, f"{status} {response.text[:300]}", case.body)
        elif not self.documented(label, status):
            self.fail(label, f"status {status} is not in the schema: {response.text[:200]}", case.body)

    def fail(self, label: str, what: str, body: Any) -> None:
        """Record a failure; only the first few of each kind, so one bug does not hide the others."""
        kind = (label, what[:60])
        self.kinds[kind] += 1
        if self.kinds[kind] <= 2:
            self.failures.append(f"{label}: {what}\n  body: {_show(body)}")

    def run(self, label: str, mode: GenerationMode, examples: int) -> None:
        method, path = label.split(" ", 1)
        operation = self.schema[path][method]
        strategy = operation.as_strategy(generation_mode=mode)
        self.mode = mode

        @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def fuzz(case: Any) -> None:
            self.send(label, case)

        fuzz()

    def labels(self) -> list[str]:
        return [f"{method.upper()} {path}" for path, methods in self.raw["paths"].items() for method in methods]


def server_engine(server: RunningServer) -> str:
    return httpx.get(f"{server.url}/health", timeout=10).json()["engine"]


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return str(body.get("detail") or body.get("error", {}).get("message", "")) if isinstance(body, dict) else str(body)


def _show(body: Any) -> str:
    text = json.dumps(body, ensure_ascii=True, default=repr) if not isinstance(body, (bytes, str)) else repr(body)
    return text if len(text) < 600 else text[:600] + "…"


def fuzz_server(server: RunningServer, adapter: Path) -> Fuzzer:
    fuzzer = Fuzzer(server, adapter)
    missing = set(EXAMPLES) - set(fuzzer.labels())
    assert not missing, f"operations gone from the schema: {missing}"
    # warm-up: valid cases on every operation, so what is allocated once on first use (caches sized by the
    # longest prompt seen, kernels per batch shape, both fuzz adapters) counts in the baseline
    for label in fuzzer.labels():
        fuzzer.run(label, GenerationMode.POSITIVE, WARM_UP if label in EXAMPLES else 1)
    before = rss_mib(server.proc.pid)
    print(f"\nRSS after the warm-up: {before:.0f} MiB ({rss_by_process(server.proc.pid)})")
    fuzzer.sent = 0
    start = time.perf_counter()
    while fuzzer.sent < REQUESTS:
        for label in fuzzer.labels():
            fuzzer.run(label, GenerationMode.POSITIVE, EXAMPLES.get(label, 1))
            if label in EXAMPLES:  # an operation that takes no input has no invalid input
                fuzzer.run(label, GenerationMode.NEGATIVE, EXAMPLES[label])
            print(f"  after {fuzzer.sent:4} requests: RSS {rss_mib(server.proc.pid):.0f} MiB")
    seconds = time.perf_counter() - start
    health = httpx.get(f"{server.url}/health", timeout=10)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    after = rss_mib(server.proc.pid)
    print(f"RSS at the end: {after:.0f} MiB ({rss_by_process(server.proc.pid)})")
    by_status = Counter(status for (_, status), n in fuzzer.statuses.items() for _ in range(n))
    print(f"\n{fuzzer.sent} requests in {seconds:.0f} s (slowest {fuzzer.slowest:.2f} s); statuses {dict(sorted(by_status.items()))}; "
          f"RSS {before:.0f} MiB before, {after:.0f} MiB after")
    print(f"  {fuzzer.waited:.0f} s of it waiting for the server, the rest generating cases")
    for (label, status), n in sorted(fuzzer.statuses.items()):
        print(f"  {label:32} {status}: {n}")
    print("  most frequent 400s of valid-looking cases:")
    for what, n in fuzzer.refusals.most_common(8):
        print(f"    {n:4} {what}")
    assert not fuzzer.failures, f"{len(fuzzer.failures)} failures:\n" + "\n".join(fuzzer.failures[:30])
    assert health.status_code == 200, health.text
    assert "kaiflow_requests_in_flight 0.0" in metrics, "a request never left the server"
    margin = MEMORY_MARGIN_MIB[server_engine(server)]
    assert after - before < margin, f"RSS grew from {before:.0f} to {after:.0f} MiB over {fuzzer.sent} requests (margin {margin})"
    return fuzzer


def test_fuzz_transformers(fuzz_transformers_server: RunningServer, adapter_dirs: dict[str, Path]) -> None:
    fuzz_server(fuzz_transformers_server, adapter_dirs["gamma"])


@pytest.mark.vllm
@pytest.mark.slow
def test_fuzz_vllm(fuzz_vllm_server: RunningServer, adapter_dirs: dict[str, Path]) -> None:
    fuzz_server(fuzz_vllm_server, adapter_dirs["gamma"])


# ---- regressions: what the fuzzer (and probing around its findings) turned up, on both engines ----------
def _post(server: RunningServer, path: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, content=content, timeout=60,
                      headers={"content-type": "application/json"})


def _text(server: RunningServer, **extra: Any) -> str:
    body = {"model": BASE, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, **extra}
    response = _post(server, "/v1/completions", body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_empty_prompt_is_400_not_500(server: RunningServer) -> None:
    """Found by the fuzzer: `"prompt": ""` made transformers' generate fail (500)."""
    response = _post(server, "/v1/completions", {"model": BASE, "prompt": "", "max_tokens": 4})
    assert response.status_code == 400 and "empty" in response.json()["error"]["message"], response.text
    raw = _post(server, "/chat", {"prompt": "", "apply_chat_template": False, "generate_kwargs": {"max_new_tokens": 4}})
    assert raw.status_code == 400 and "empty" in raw.json()["detail"]
    assert _text(server)


def test_empty_stop_string_is_400_not_500(server: RunningServer) -> None:
    """Found by the fuzzer on vLLM: `"stop": [""]` made vLLM's SamplingParams raise outside the engine's 400s."""
    for stop in ("", ["a", ""]):
        response = _post(server, "/v1/completions", {"model": BASE, "prompt": "hi", "max_tokens": 2, "stop": stop})
        assert response.status_code == 400 and "stop" in response.json()["error"]["message"], response.text
    assert isinstance(_text(server, stop=["\n", "."]), str)


def test_numbers_no_engine_takes_are_400_naming_the_field(server: RunningServer) -> None:
    """A seed over 64 bits made torch.manual_seed raise (500); NaN/Infinity are not JSON but Python reads them."""
    for field, value in (("seed", 2**64), ("seed", -(2**63) - 1), ("top_k", 2**31), ("repetition_penalty", 0.001)):
        response = _post(server, "/v1/completions", {"model": BASE, "prompt": "hi", "max_tokens": 2, field: value})
        assert response.status_code == 400 and field in response.json()["error"]["message"], (field, response.text)
    infinite = _post(server, "/v1/completions", content=b'{"prompt": "hi", "max_tokens": 2, "temperature": Infinity}')
    assert infinite.status_code == 400 and "finite" in infinite.json()["error"]["message"]
    kaito = _post(server, "/chat", {"prompt": "hi", "handle_long_generation": "middle"})
    assert kaito.status_code == 400 and "handle_long_generation" in kaito.json()["detail"]
    # the limits themselves are served, and a temperature too small to divide by decodes greedily on both engines
    for extra in ({"seed": 2**63 - 1}, {"seed": -(2**63)}, {"top_k": 2**31 - 1, "temperature": 1.0}):
        assert isinstance(_text(server, **extra), str)
    assert _text(server, temperature=1e-30, seed=1) == _text(server)


def test_unusable_adapters_are_400_and_change_nothing(server: RunningServer, adapter_dirs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """Found by probing: a path too long for the file system, or `~nouser`, raised from pathlib (500);
    corrupt weights raised SafetensorError from peft (500) after peft had already changed the model."""
    from tests.serving.test_soak import corrupt_adapter

    before = _text(server)
    bad = corrupt_adapter(adapter_dirs["alpha"], tmp_path / "corrupt")
    for path in ("a" * 5000, "~no-such-user-kaiflow/adapter", str(bad)):
        response = _post(server, "/v1/load_lora_adapter", {"lora_name": "unusable", "lora_path": path})
        assert response.status_code == 400 and response.json()["error"]["param"] == "lora_path", response.text
    scaled = _post(server, "/v1/load_lora_adapter", {"lora_name": "unusable", "lora_path": str(bad), "strength": 0.5})
    assert scaled.status_code == 400, scaled.text
    assert "unusable" not in {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert _text(server) == before


def test_refused_scaled_copy_leaves_nothing_behind(adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    from serving import adapters, errors
    from tests.serving.test_soak import corrupt_adapter

    bad = corrupt_adapter(adapter_dirs["alpha"], tmp_path / "corrupt")
    (tmp_path / "work").mkdir()
    with pytest.raises(errors.BadRequest, match="cannot be read as adapter weights"):
        adapters.prepare(adapters.make_spec("x", bad, 0.5), 1, 1, tmp_path / "work")
    assert not list((tmp_path / "work").iterdir())


def test_fastapi_refusals_have_the_openai_error_shape(server: RunningServer) -> None:
    """JSON nested too deeply for the parser got FastAPI's own `{"detail": ...}` on /v1 paths."""
    deep = _post(server, "/v1/completions", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and deep.json()["error"]["type"] == "BadRequestError", deep.text
    missing = httpx.get(f"{server.url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    assert _text(server)


def test_openapi_schema_documents_what_the_server_answers(server: RunningServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/chat", "/v1/chat/completions", "/v1/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "404", "413", "429", "503"} <= set(responses) and "422" not in responses, (path, responses)
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    seed = next(s for s in components["CompletionRequest"]["properties"]["seed"]["anyOf"] if s.get("type") == "integer")
    assert seed["maximum"] == 2**63 - 1
    assert components["LoadAdapterRequest"]["properties"]["lora_name"]["pattern"].startswith("^[A-Za-z0-9]")


def test_abandoned_plain_request_stops_generating(transformers_server: RunningServer) -> None:
    """Seen while fuzzing: a client that timed out on a non-streamed request left the engine generating
    (hundreds of tokens, for nobody) and every request after it queued behind. Now the server notices the
    disconnect and cancels the generation (counted as status 499)."""
    url = transformers_server.url

    def gone() -> float:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        match = re.search(r'kaiflow_requests_total\{endpoint="/v1/completions",status="499"\} (\S+)', metrics)
        return float(match.group(1)) if match else 0.0

    before = gone()
    body = {"model": BASE, "prompt": "Hello", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # 1,000 tokens take seconds; the client leaves after half of one
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + HANG_S
    while gone() == before or "kaiflow_requests_in_flight 0.0" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the abandoned request was not stopped"
        time.sleep(0.1)
    assert _text(transformers_server)
