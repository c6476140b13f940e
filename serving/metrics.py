"""Prometheus metrics for `GET /metrics`, on a registry of the server's own.

A pure ASGI middleware times every request to its *last* body chunk, so streamed responses count
their full duration and every status (429s included) is counted without touching the handlers.
A registry per app (not the global one) keeps vLLM's own collectors and test servers apart.

**Autoscaling signals.** Autoscalers (KEDA, HPA through an adapter, Kaito's InferenceSet
annotations) key on vLLM's metric names: ``vllm:num_requests_waiting``, ``vllm:num_requests_running``
and ``vllm:kv_cache_usage_perc``, labelled ``model_name`` and ``engine``. On the vLLM engine these
are vLLM's own (its Prometheus stat logger registers them in the process's global registry, and
they are forwarded from there: every ``vllm:`` family vLLM keeps). The transformers engine has no
scheduler of its own, so the server reports the same three names from its admission: running =
requests the engine runs (at most its capacity), waiting = admitted requests queued behind them,
and KV-cache usage = the share of the engine's batch slots in use (it has no paged KV cache).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import prometheus_client as prom

ROUTES = {"/", "/chat", "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/healthz",
          "/metrics", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, engine: str, model: str) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter("kaiflow_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram("kaiflow_request_latency_seconds", "Time to the last byte of the response",
                                      ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = prom.Histogram("kaiflow_time_to_first_token_seconds", "Time to the first generated text",
                                          ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = prom.Counter("kaiflow_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = prom.Counter("kaiflow_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.in_flight = prom.Gauge("kaiflow_requests_in_flight", "Generation requests admitted and not finished", registry=r)
        self.queue_depth = prom.Gauge("kaiflow_queue_depth", "Generation requests waiting beyond the engine's capacity", registry=r)
        self.rejected = prom.Counter("kaiflow_rejected_overload", "Requests answered 429 because the queue was full", registry=r)
        self.adapters = prom.Gauge("kaiflow_adapters_loaded", "LoRA adapters loaded", registry=r)
        self.ready = prom.Gauge("kaiflow_ready", "1 once the model is loaded", registry=r)
        self.info = prom.Info("kaiflow_engine", "Engine serving the model", registry=r)
        self.info.info({"engine": engine, "model": model})
        self.model = model
        self._load: tuple[prom.Gauge, prom.Gauge, prom.Gauge] | None = None
        if engine == "vllm":
            r.register(VllmForward())
        else:
            labels = ["model_name", "engine"]
            self._load = (
                prom.Gauge("vllm:num_requests_running", "Requests the engine is running", labels, registry=r),
                prom.Gauge("vllm:num_requests_waiting", "Requests admitted and waiting for the engine", labels, registry=r),
                prom.Gauge("vllm:kv_cache_usage_perc", "Share of the engine's batch slots in use (1 = full); the "
                           "transformers engine has no paged KV cache", labels, registry=r))
            self.set_load(0, 0, 1)

    def set_load(self, running: int, waiting: int, capacity: int) -> None:
        """The vLLM-named load gauges, for an engine that does not report them itself."""
        if self._load is None:
            return
        run, wait, usage = self._load
        run.labels(self.model, "0").set(running)
        wait.labels(self.model, "0").set(waiting)
        usage.labels(self.model, "0").set(running / max(capacity, 1))

    def render(self) -> tuple[bytes, str]:
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class VllmForward:
    """vLLM's own metric families (``vllm:*``), read from the global registry its stat logger uses."""

    PREFIX = "vllm:"

    def describe(self) -> list:
        return []  # nothing at registration: vLLM registers its collectors only once the engine starts

    def collect(self):  # -> Iterator[Metric]
        for family in prom.REGISTRY.collect():
            if family.name.startswith(self.PREFIX):
                yield family


class MetricsMiddleware:
    """Counts and times every HTTP request by route and status."""

    def __init__(self, app: Callable, metrics: Callable[[], Metrics | None]) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        metrics = self.metrics()
        if scope["type"] != "http" or metrics is None:
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        start, status = time.perf_counter(), 500

        async def timed_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
