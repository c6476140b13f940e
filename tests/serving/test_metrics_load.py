"""The autoscaling signals on `/metrics`: vLLM's metric names on both engines, and the waiting count
rising under load (what a KEDA ScaledObject on `vllm:num_requests_waiting` reacts to)."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.serving.conftest import RunningServer

SIGNALS = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")


def _gauges(text: str) -> dict[str, float]:
    """The value of each signal (summed over its label sets) in a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m and m.group(1) in SIGNALS:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def test_metrics_expose_vllms_autoscaling_signal_names(server: RunningServer) -> None:
    # one request first: vLLM's stat logger sets its gauges at the engine's first steps
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    gauges = _gauges(text)
    assert set(gauges) == set(SIGNALS), text[-2000:]
    assert 'model_name="' in next(line for line in text.splitlines() if line.startswith("vllm:num_requests_waiting"))


async def _load_and_watch(url: str, requests: int) -> tuple[float, float, list[int]]:
    """Send ``requests`` long completions at once; meanwhile read /metrics until they are done.
    Returns the highest waiting and running values seen, and the requests' statuses."""
    body = {"prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
    peak_waiting = peak_running = 0.0
    limits = httpx.Limits(max_connections=requests + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tasks = [asyncio.create_task(client.post(f"{url}/v1/completions", json=body)) for _ in range(requests)]
        while not all(t.done() for t in tasks):
            gauges = _gauges((await client.get(f"{url}/metrics")).text)
            peak_waiting = max(peak_waiting, gauges.get("vllm:num_requests_waiting", 0.0))
            peak_running = max(peak_running, gauges.get("vllm:num_requests_running", 0.0))
            await asyncio.sleep(0.05)
        statuses = [(await t).status_code for t in tasks]
        after = _gauges((await client.get(f"{url}/metrics")).text)
    assert after.get("vllm:num_requests_running", 0.0) == 0.0, "nothing runs once every request answered"
    return peak_waiting, peak_running, statuses


def test_waiting_requests_rise_under_load(server: RunningServer) -> None:
    # more requests than the engine runs at once: transformers runs 1, vLLM (the shared server) 128 on CPU
    engine = httpx.get(f"{server.url}/health", timeout=10).json()["engine"]
    capacity = 128 if engine == "vllm" else 1
    waiting, running, statuses = asyncio.run(_load_and_watch(server.url, capacity + 3))
    assert statuses == [200] * len(statuses)
    assert running >= 1
    assert waiting >= 1, f"peak running {running}, waiting {waiting}"
