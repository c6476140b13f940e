"""The HTTP layer: Kaito's `/chat`, the OpenAI API, adapter management, health and metrics.

Thin on purpose: it validates bodies (`protocol`), turns them into token ids and `Sampling`, asks
the engine for text deltas and shapes the answer. Rules it owns:

* **Which model a request uses.** `"model": "<adapter name>"` picks that adapter; the base model's
  name (``--served-model-name``, default ``--model``) picks the base. A request with no `model`
  — on `/chat` and the OpenAI endpoints alike — uses the adapter when exactly one is loaded (a
  workspace serving what it tuned; Kaito merges a workspace's adapters into the model it serves)
  and the base model otherwise.
* **Prompts.** `/chat`'s `prompt` is a user turn in the model's chat template when the tokenizer
  has one (``"apply_chat_template": false``: the raw text, continued as Kaito's text-generation
  pipeline did); `messages` always go through the template; `/v1/completions` is raw text, as
  OpenAI defines it.
* **Lengths.** `/v1/chat/completions` without `max_tokens` generates at most
  ``--default-max-tokens`` (512) tokens, not the rest of the context; bodies over
  ``--max-request-bytes`` (4 MiB) get 413 before they are read further.
* **Admission.** A request is admitted while fewer than ``capacity + max_queue_depth`` are in
  flight (``capacity``: what the engine runs at once). Beyond that it gets 429 with a
  `Retry-After` estimated from recent latencies — never a hang.
* **Streaming** responses start only after the first text arrives, so a request the engine
  refuses still gets a proper status code; errors after that arrive as an SSE `error` event.
* **Readiness.** The model loads in the background: `/health` answers 503 until it is loaded,
  then 200; generation requests meanwhile get 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import adapters, config, errors, metrics, protocol
from serving.engines import base

log = logging.getLogger(__name__)


class Server:
    """State shared by the routes: the engine, tokenizer, adapters, admission and metrics."""

    def __init__(self, cfg: config.ServerConfig, engine: base.Engine) -> None:
        self.cfg, self.engine = cfg, engine
        self.metrics = metrics.Metrics(engine.name, cfg.served_model_name)
        self.workdir = Path(tempfile.mkdtemp(prefix="kaiflow-serving-"))
        self.adapters = adapters.AdapterSet(engine.add_adapter, engine.remove_adapter, self.workdir)
        self.tokenizer: Any = None
        self.ready = False
        self.failure: str | None = None
        self.in_flight = 0
        self.mean_latency_s = 1.0
        self.on_fatal: Callable[[str], None] = lambda reason: None

    # ---- start-up -------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.engine.start()
            self.tokenizer = await asyncio.to_thread(_load_tokenizer, self.cfg.model_path)
            if self.cfg.chat_template is not None:
                self.tokenizer.chat_template = self.cfg.chat_template.read_text()
            for spec in self.cfg.adapters:
                await self.adapters.load(spec)
            self.metrics.adapters.set(len(self.adapters.names()))
            _freeze_heap()
            self.ready = True
            self.metrics.ready.set(1)
            log.info("ready: %s on %s, adapters %s, http://%s:%d", self.cfg.served_model_name, self.engine.name,
                     self.adapters.names() or "none", self.cfg.host, self.cfg.port)
        except Exception as exc:  # noqa: BLE001 - reported, then the process exits non-zero
            self.failure = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            log.exception("start-up failed")
            self.on_fatal(self.failure)

    async def close(self) -> None:
        await self.adapters.drain()
        await self.engine.close()

    def require_ready(self) -> None:
        if not self.ready:
            raise errors.NotReady(self.failure or "the model is still loading; retry shortly")

    # ---- model / adapter choice -------------------------------------------------------------
    def base_names(self) -> set[str]:
        return {self.cfg.served_model_name, self.cfg.model, self.cfg.model_path}

    def pick_adapter(self, model: str | None) -> base.LoadedAdapter | None:
        if not model:
            return self.adapters.only()
        if model in self.base_names():
            return None
        adapter = self.adapters.get(model)
        if adapter is None:
            available = [self.cfg.served_model_name, *self.adapters.names()]
            raise errors.NotFound(f"The model `{model}` does not exist; available: {', '.join(available)}", param="model")
        return adapter

    def model_label(self, adapter: base.LoadedAdapter | None) -> str:
        return adapter.name if adapter else self.cfg.served_model_name

    # ---- prompts -------------------------------------------------------------------------
    def chat_ids(self, messages: list[protocol.Message]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise errors.BadRequest("this model has no chat template: send a plain prompt to /v1/completions instead")
        turns = [{"role": m.role, "content": m.text()} for m in messages]
        text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def check_prompt(self, prompt_len: int, param: str = "messages") -> None:
        limit = self.engine.max_model_len
        if prompt_len == 0:  # nothing to continue from: transformers' generate fails on it, vLLM refuses it
            raise errors.BadRequest("the prompt is empty (0 tokens): give some text to continue", param=param)
        if prompt_len >= limit:
            raise errors.BadRequest(f"the prompt is {prompt_len} tokens; this model's context is {limit} tokens: "
                                    "shorten the prompt", param=param)

    def check_length(self, prompt_len: int, max_tokens: int | None, field: str = "max_tokens") -> int:
        """``max_tokens`` (default: ``--default-max-tokens`` within the context), refusing what cannot fit."""
        limit = self.engine.max_model_len
        self.check_prompt(prompt_len)
        if max_tokens is None:
            room = limit - prompt_len
            return min(room, self.cfg.default_max_tokens) if self.cfg.default_max_tokens else room
        if prompt_len + max_tokens > limit:
            raise errors.BadRequest(f"the prompt ({prompt_len} tokens) plus {field} ({max_tokens}) exceeds this model's "
                                    f"context of {limit} tokens: shorten the prompt or lower {field}", param=field)
        return max_tokens

    # ---- generation -----------------------------------------------------------------------
    def admit(self) -> None:
        self.require_ready()
        limit = self.engine.capacity + self.cfg.max_queue_depth
        if self.in_flight >= limit:
            self.metrics.rejected.inc()
            waves = math.ceil((self.in_flight - self.engine.capacity + 1) / max(self.engine.capacity, 1))
            retry = int(min(60, max(1, math.ceil(waves * self.mean_latency_s))))
            raise errors.Overloaded(f"the server is at capacity ({self.in_flight} requests in flight, queue of "
                                    f"{self.cfg.max_queue_depth}); retry in {retry} s", retry_after_s=retry)

    async def generate(self, endpoint: str, prompt_ids: list[int], sampling: base.Sampling,
                       adapter: base.LoadedAdapter | None, *, deltas: bool = True) -> AsyncIterator[base.Delta]:
        """Admit, run and account one request; the first ``__anext__`` raises if it is refused."""
        self.admit()
        self._enter(adapter)
        start, first, tokens = time.perf_counter(), True, 0
        try:
            async for delta in self.engine.stream(uuid.uuid4().hex, prompt_ids, sampling, adapter, deltas=deltas):
                if first and (delta.text or delta.finish_reason):
                    self.metrics.first_token.labels(endpoint).observe(time.perf_counter() - start)
                    first = False
                tokens += delta.num_tokens
                yield delta
        finally:
            self._leave(adapter, time.perf_counter() - start, len(prompt_ids), tokens)

    def _enter(self, adapter: base.LoadedAdapter | None) -> None:
        self.in_flight += 1
        if adapter:
            self.adapters.acquire(adapter)
        self._set_gauges()

    def _leave(self, adapter: base.LoadedAdapter | None, seconds: float, prompt_tokens: int, tokens: int) -> None:
        self.in_flight -= 1
        if adapter:
            self.adapters.release(adapter)
        self._set_gauges()
        self.mean_latency_s = 0.9 * self.mean_latency_s + 0.1 * seconds
        label = self.model_label(adapter)
        self.metrics.prompt_tokens.labels(label).inc(prompt_tokens)
        self.metrics.generation_tokens.labels(label).inc(tokens)

    def _set_gauges(self) -> None:
        self.metrics.in_flight.set(self.in_flight)
        self.metrics.queue_depth.set(max(0, self.in_flight - self.engine.capacity))
        running = min(self.in_flight, self.engine.capacity)
        self.metrics.set_load(running, self.in_flight - running, self.engine.capacity)


def _freeze_heap() -> None:
    """Move the start-up heap (torch, transformers, the tokenizer) out of the collector's sight.

    Under load, full collections otherwise walk millions of objects that never die; vLLM's own
    server does the same after start-up.
    """
    gc.collect()
    gc.freeze()


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ---- sampling from request bodies ---------------------------------------------------------------
def openai_sampling(req: protocol._OpenAISampling, max_tokens: int) -> base.Sampling:
    if req.presence_penalty or req.frequency_penalty:
        raise errors.BadRequest("presence_penalty and frequency_penalty are not supported; use repetition_penalty",
                                param="presence_penalty")
    if req.logprobs:
        raise errors.BadRequest("logprobs are not supported by this server", param="logprobs")
    return base.Sampling(
        max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
        top_p=req.top_p, top_k=req.top_k, seed=req.seed, stop=req.stops(),
        repetition_penalty=req.repetition_penalty, min_tokens=min(req.min_tokens, max_tokens), ignore_eos=req.ignore_eos,
    )


def kaito_sampling(gk: protocol.GenerateKwargs, prompt_len: int, max_new: int) -> base.Sampling:
    sample = gk.do_sample and gk.temperature > 0
    return base.Sampling(
        max_tokens=max_new, temperature=gk.temperature if sample else 0.0, top_p=gk.top_p,
        top_k=gk.top_k, seed=gk.seed, repetition_penalty=gk.repetition_penalty,
        min_tokens=min(max(0, gk.min_length - prompt_len), max_new),
    )


# ---- response shapes --------------------------------------------------------------------------
def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _collect(first: base.Delta, rest: AsyncIterator[base.Delta]) -> tuple[str, int, str]:
    parts, tokens, reason = [first.text], first.num_tokens, first.finish_reason
    async for delta in rest:
        parts.append(delta.text)
        tokens += delta.num_tokens
        reason = delta.finish_reason or reason
    return "".join(parts), tokens, reason or "stop"


async def _collect_while_connected(request: Request, first: base.Delta,
                                   rest: AsyncIterator[base.Delta]) -> tuple[str, int, str]:
    """`_collect` for a non-streamed answer, stopped (and the engine's work with it) if the client goes away.

    A client that gave up (a timeout) would otherwise keep the engine generating for nobody; a
    stream is stopped by its failed write, a plain answer has nothing to write until the end.
    """
    task = asyncio.ensure_future(_collect(first, rest))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise errors.ClientGone("the client closed the connection; the generation was stopped")
    finally:
        if not task.done():
            task.cancel()  # the cancellation reaches the engine's stream, which cancels the request
            await asyncio.gather(task, return_exceptions=True)


DISCONNECT_POLL_S = 0.25


async def _start(gen: AsyncIterator[base.Delta]) -> base.Delta:
    """The first delta; refusals (429, 400 from the engine) surface here, before any byte is sent."""
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return base.Delta("", 0, "stop")
    except BaseException:
        await gen.aclose()
        raise


def create_app(cfg: config.ServerConfig, engine: base.Engine) -> FastAPI:
    server = Server(cfg, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(server.start())
        try:
            yield
        finally:
            task.cancel()
            await server.close()

    app = FastAPI(title="kaiflow inference server", lifespan=lifespan, description=API_DESCRIPTION)
    app.state.server = server
    _document_errors_as_sent(app)
    app.add_middleware(RequestBody, max_bytes=cfg.max_request_bytes)  # inside the metrics: 413s are counted
    app.add_middleware(metrics.MetricsMiddleware, metrics=lambda: server.metrics)
    _install_error_handlers(app)

    @app.get("/")
    async def root() -> dict[str, str]:  # Kaito's liveness answer
        return {"message": "Server is running"}

    @app.get("/health", responses=HEALTH_503)
    @app.get("/healthz", responses=HEALTH_503)
    async def health() -> JSONResponse:
        if server.ready:
            return JSONResponse({"status": "ok", "engine": engine.name, "model": cfg.served_model_name})
        body = {"status": "failed" if server.failure else "loading", "detail": server.failure}
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        created = int(time.time())
        data = [{"id": cfg.served_model_name, "object": "model", "created": created, "owned_by": "kaiflow",
                 "root": cfg.model_path, "parent": None, "max_model_len": engine.max_model_len or None}]
        for name in server.adapters.names():
            adapter = server.adapters.get(name)
            if adapter:
                data.append({"id": name, "object": "model", "created": created, "owned_by": "kaiflow",
                             "root": str(adapter.source), "parent": cfg.served_model_name, "strength": adapter.strength})
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter", responses=_errors(400, 413, 503))
    async def load_lora_adapter(req: protocol.LoadAdapterRequest) -> dict[str, Any]:
        server.require_ready()
        if req.lora_name in server.base_names():
            raise errors.BadRequest(f"lora_name {req.lora_name!r} is the base model's name; choose another", param="lora_name")
        adapter = await server.adapters.load(adapters.make_spec(req.lora_name, req.lora_path, req.strength))
        server.metrics.adapters.set(len(server.adapters.names()))
        return {"status": "ok", "lora_name": adapter.name, "version": adapter.version, "strength": adapter.strength,
                "message": f"Success: LoRA adapter '{adapter.name}' added successfully."}

    @app.post("/v1/unload_lora_adapter", responses=_errors(400, 404, 413, 503))
    async def unload_lora_adapter(req: protocol.UnloadAdapterRequest) -> dict[str, Any]:
        server.require_ready()
        await server.adapters.unload(req.lora_name)
        server.metrics.adapters.set(len(server.adapters.names()))
        return {"status": "ok", "lora_name": req.lora_name,
                "message": f"Success: LoRA adapter '{req.lora_name}' removed successfully."}

    @app.post("/chat", responses=_errors(400, 404, 413, 429, 503, kaito=True))
    async def kaito_chat(req: protocol.KaitoChatRequest, request: Request) -> dict[str, str]:
        server.require_ready()
        if req.prompt is None and not req.messages:
            raise errors.BadRequest("give 'prompt' (text generation) or 'messages' (a chat), e.g. {\"prompt\": \"Hello\"}",
                                    param="prompt")
        adapter = server.pick_adapter(req.model)
        gk = req.generate_kwargs
        templated = bool(req.messages) or _use_chat_template(server, req.apply_chat_template)
        prompt_text = (req.prefix or "") + (req.prompt or "")
        if req.messages:
            ids = server.chat_ids(req.messages)
        elif templated:  # the prompt is the user's turn; the Result is the assistant's reply alone
            ids = server.chat_ids([protocol.Message(role="user", content=prompt_text)])
        else:  # Kaito's text generation: continue the text; the Result repeats it (return_full_text)
            ids = server.text_ids(prompt_text)
        limit = engine.max_model_len
        max_new = gk.max_new_tokens or gk.max_length - len(ids)
        if req.handle_long_generation == "hole" and max_new >= 1 and len(ids) + max_new > limit:
            ids = ids[-max(1, limit - max_new):]  # Kaito's "hole": keep the prompt's end
        server.check_prompt(len(ids), param="prompt")  # the model's real limit first
        if max_new < 1:
            raise errors.BadRequest(
                f"this model's context is {limit} tokens and the prompt is {len(ids)} of them, but "
                f"generate_kwargs.max_length ({gk.max_length}, prompt plus new tokens) leaves nothing to generate: "
                f"set generate_kwargs.max_new_tokens (at most {limit - len(ids)}) or raise max_length (above "
                f"{len(ids)}, at most {limit})", param="max_length")
        max_new = server.check_length(len(ids), max_new, field="generate_kwargs.max_length")
        gen = server.generate("/chat", ids, kaito_sampling(gk, len(ids), max_new), adapter, deltas=False)
        text, _, _ = await _collect_while_connected(request, await _start(gen), gen)
        full = req.return_full_text and not templated
        return {"Result": (prompt_text + text) if full else text}

    @app.post("/v1/chat/completions", responses=_errors(400, 404, 413, 429, 503))
    async def chat_completions(req: protocol.ChatCompletionRequest, request: Request) -> Any:
        server.require_ready()
        adapter = server.pick_adapter(req.model)
        ids = server.chat_ids(req.messages)
        max_tokens = server.check_length(len(ids), req.max_completion_tokens or req.max_tokens)
        gen = server.generate("/v1/chat/completions", ids, openai_sampling(req, max_tokens), adapter, deltas=req.stream)
        first = await _start(gen)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_label(adapter)}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream_response(_chat_events(head, first, gen, len(ids), usage))
        text, tokens, reason = await _collect_while_connected(request, first, gen)
        return {**head, "object": "chat.completion", "usage": _usage(len(ids), tokens),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                             "logprobs": None}]}

    @app.post("/v1/completions", responses=_errors(400, 404, 413, 429, 503))
    async def completions(req: protocol.CompletionRequest, request: Request) -> Any:
        server.require_ready()
        if req.suffix:
            raise errors.BadRequest("suffix is not supported by this server", param="suffix")
        adapter = server.pick_adapter(req.model)
        prompt_text, ids = _completion_prompt(server, req.prompt)
        max_tokens = server.check_length(len(ids), req.max_tokens)
        gen = server.generate("/v1/completions", ids, openai_sampling(req, max_tokens), adapter, deltas=req.stream)
        first = await _start(gen)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_label(adapter)}
        echo = prompt_text if req.echo else ""
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream_response(_completion_events(head, echo, first, gen, len(ids), usage))
        text, tokens, reason = await _collect_while_connected(request, first, gen)
        return {**head, "object": "text_completion", "usage": _usage(len(ids), tokens),
                "choices": [{"index": 0, "text": echo + text, "finish_reason": reason, "logprobs": None}]}

    return app


def _use_chat_template(server: Server, requested: bool | None) -> bool:
    """Whether `/chat` sends its `prompt` through the chat template (None: when the model has one)."""
    if requested is None:
        return server.has_chat_template()
    if requested and not server.has_chat_template():
        raise errors.BadRequest("apply_chat_template is true but this model has no chat template: leave it out for "
                                "raw text generation, or give the server a template (chat-template in --config)",
                                param="apply_chat_template")
    return requested


def _completion_prompt(server: Server, prompt: Any) -> tuple[str, list[int]]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, server.text_ids(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        vocab = len(server.tokenizer)
        if any(t < 0 or t >= vocab for t in prompt):
            raise errors.BadRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return server.tokenizer.decode(prompt), list(prompt)
    raise errors.BadRequest("prompt must be one string or one list of token ids (batches are not served)", param="prompt")


def _stream_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(first: base.Delta, rest: AsyncIterator[base.Delta], chunk: Callable[[base.Delta], dict],
                  usage_chunk: Callable[[int], dict] | None) -> AsyncIterator[str]:
    tokens = 0
    try:
        delta = first
        while True:
            tokens += delta.num_tokens
            if delta.text or delta.finish_reason:
                yield _sse(chunk(delta))
            if delta.finish_reason:
                break
            delta = await rest.__anext__()
        if usage_chunk:
            yield _sse(usage_chunk(tokens))
    except StopAsyncIteration:
        pass
    except Exception as exc:  # noqa: BLE001 - the status line is gone; report in-band
        log.exception("stream failed")
        yield _sse({"error": {"message": str(exc), "type": type(exc).__name__, "code": 500}})
    finally:
        await rest.aclose()
    yield "data: [DONE]\n\n"


def _chat_events(head: dict, first: base.Delta, rest: AsyncIterator[base.Delta], prompt_len: int,
                 usage: bool) -> AsyncIterator[str]:
    base_chunk = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: base.Delta) -> dict:
        return {**base_chunk, "choices": [{"index": 0, "delta": {"content": delta.text} if delta.text else {},
                                           "finish_reason": delta.finish_reason, "logprobs": None}]}

    async def events() -> AsyncIterator[str]:
        yield _sse({**base_chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None, "logprobs": None}]})
        usage_chunk = (lambda n: {**base_chunk, "choices": [], "usage": _usage(prompt_len, n)}) if usage else None
        async for event in _events(first, rest, chunk, usage_chunk):
            yield event

    return events()


def _completion_events(head: dict, echo: str, first: base.Delta, rest: AsyncIterator[base.Delta], prompt_len: int,
                       usage: bool) -> AsyncIterator[str]:
    base_chunk = {**head, "object": "text_completion"}
    if echo:
        first = base.Delta(echo + first.text, first.num_tokens, first.finish_reason)

    def chunk(delta: base.Delta) -> dict:
        return {**base_chunk, "choices": [{"index": 0, "text": delta.text, "finish_reason": delta.finish_reason,
                                           "logprobs": None}]}

    usage_chunk = (lambda n: {**base_chunk, "choices": [], "usage": _usage(prompt_len, n)}) if usage else None
    return _events(first, rest, chunk, usage_chunk)


# ---- the OpenAPI schema ---------------------------------------------------------------------------
API_DESCRIPTION = (
    "Kaito's `/chat` and the OpenAI API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`), run-time "
    "LoRA adapter loading, `/health` and Prometheus `/metrics`. Every refusal is a 4xx whose message says what to "
    "change; the only 5xx is 503 while the model loads (with Retry-After). A full queue answers 429 with Retry-After."
)
ERROR_DESCRIPTIONS = {
    400: "Invalid request: the message names the field and what to change",
    404: "No model or adapter by that name: the message lists those available",
    413: "The body is over the server's --max-request-bytes",
    429: "The queue is full: retry after the Retry-After header's seconds",
    503: "The model is still loading (or failed to load): retry after the Retry-After header's seconds",
}
HEALTH_503: dict[int | str, dict[str, Any]] = {
    503: {"description": "Loading, or failed to load: {\"status\": \"loading\" | \"failed\", \"detail\": ...}"}}


def _errors(*statuses: int, kaito: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the refusals a route answers (`/v1/*`: OpenAI's error shape; elsewhere Kaito's)."""
    model = protocol.KaitoError if kaito else protocol.OpenAIError
    return {status: {"model": model, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _document_errors_as_sent(app: FastAPI) -> None:
    """Drop FastAPI's automatic 422 from the schema: invalid bodies get 400 here (`validation_error`), as in OpenAI's API."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            _exact_int64_bounds(schema)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _exact_int64_bounds(node: Any) -> None:
    """FastAPI's schema model keeps bounds as floats: 2**63 - 1 would read 9.223372036854776e18, i.e. 2**63."""
    exact = {float(v): v for v in protocol.INT64.values()}
    if isinstance(node, dict):
        for key in ("minimum", "maximum"):
            if isinstance(node.get(key), float) and node[key] in exact:
                node[key] = exact[node[key]]
        for value in node.values():
            _exact_int64_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _exact_int64_bounds(value)


# ---- request size -------------------------------------------------------------------------------
class RequestBody:
    """ASGI middleware for request bodies: a size cap, and curl's default content type read as JSON.

    * A body over ``max_bytes`` gets 413, and no more than that is ever held: a declared
      ``Content-Length`` over the limit is refused before the body is read, a chunked body is
      counted as it arrives. The rest of a refused body is read and dropped (up to `DRAIN_BYTES`)
      so the client, still sending, receives the 413 instead of a reset connection.
    * ``curl -d '{...}'`` without ``-H 'Content-Type: application/json'`` sends
      ``application/x-www-form-urlencoded``; every endpoint here takes JSON only, so such a body
      that is a JSON object is read as JSON instead of being refused as "not an object".
    """

    DRAIN_BYTES = 64 * 1024 * 1024

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        size = int(declared) if declared.isdigit() else None
        if size is not None and size > self.max_bytes:
            # a client waiting for "100 Continue" has sent nothing yet: reading would ask for the body
            waiting = headers.get(b"expect", b"").lower() == b"100-continue"
            return await self._refuse(scope, receive, send, size, more_body=not waiting)
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return await self.app(scope, _replay([message], receive), send)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                return await self._refuse(scope, receive, send, size, more_body=message.get("more_body", False))
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == b"application/x-www-form-urlencoded" and body.lstrip().startswith(b"{"):
            scope = {**scope, "headers": [(k, b"application/json" if k == b"content-type" else v)
                                          for k, v in scope["headers"]]}
        message = {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, _replay([message], receive), send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable, size: int | None, *, more_body: bool) -> None:
        drained = 0
        while more_body and drained < self.DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            more_body = message.get("more_body", False)
        limit = self.max_bytes
        what = f"the request body ({size} bytes)" if size is not None else "the request body"
        message = (f"{what} is over this server's limit of {limit} bytes ({limit / 1048576:.1f} MiB): send a "
                   "shorter prompt (the server's --max-request-bytes sets the limit)")
        path = scope.get("path", "")
        if path.startswith("/v1/"):
            body: dict[str, Any] = {"object": "error", "error": {"message": message, "type": "RequestTooLargeError",
                                                                 "param": None, "code": 413}}
        else:
            body = {"detail": message}
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def _replay(messages: list[dict], receive: Callable) -> Callable:
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


# ---- errors -------------------------------------------------------------------------------------
def _error_response(request: Request, status: int, message: str, kind: str, param: str | None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = {"object": "error", "error": {"message": message, "type": kind, "param": param, "code": status}}
    else:
        body = {"detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServingError)
    async def serving_error(request: Request, exc: errors.ServingError) -> JSONResponse:
        headers = None
        if isinstance(exc, errors.Overloaded):
            headers = {"Retry-After": str(exc.retry_after_s)}
        elif isinstance(exc, errors.NotReady):
            headers = {"Retry-After": "5"}
        return _error_response(request, exc.status, exc.message, exc.kind, exc.param, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body it cannot parse, an unknown path, a wrong method): the same shapes as ours
        kinds = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError"}
        return _error_response(request, exc.status_code, str(exc.detail), kinds.get(exc.status_code, "HTTPError"), None,
                               dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                message = f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
                return _error_response(request, 400, message, "BadRequestError", None)
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{loc or 'body'}: {err.get('msg')}")
        message = "invalid request: " + "; ".join(problems)
        return _error_response(request, 400, message, "BadRequestError", None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error_response(request, 500, f"internal error ({type(exc).__name__}); see the server log",
                               "InternalServerError", None)
