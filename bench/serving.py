"""Benchmark: kaiflow's server (vLLM engine) against vLLM's own OpenAI server, same model, same run.

Both servers run at once on 127.0.0.1 with the same engine settings (float32, LoRA enabled with
4 slots of rank 16: kaiflow's defaults) and are measured alternately, round after round, by the
same asyncio client, so machine noise hits both alike. For 1, 8 and 32 concurrent clients it
prints tokens/s and p50/p99 request latency for each, and kaiflow/vLLM ratios (throughput: higher
is better; target ≥ 0.95 at 32 concurrent).

    .venv/bin/python bench/serving.py [--model tiny-phi-3] [--rounds 2] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

from infra import local_process

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 32)
PROMPTS = ["The capital of France is", "def main():", "Hello, how are you today?", "Numbers 0 1 2 3",
           "Kaiflow fine-tunes and serves", "Monday Tuesday Wednesday", "Please summarise the following"]


Started = tuple[str, str, int, list[str], Path]   # name, url, pid, argv, log


@contextlib.contextmanager
def started_servers(specs: list[tuple[str, list[str], int, dict[str, str]]], prefix: str = "bench",
                    ) -> Iterator[list[Started]]:
    """Start every server (name, argv, port, env) at once, so their engines load side by side; yield
    each as soon as it is started (wait with :func:`wait_up`); stop them all at the end."""
    procs: list[subprocess.Popen] = []
    try:
        started: list[Started] = []
        for name, argv, port, env in specs:
            log = Path(tempfile.mkstemp(prefix=f"{prefix}-{name}-", suffix=".log")[1])
            with log.open("w") as out:
                procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                              env=env))
            started.append((name, f"http://127.0.0.1:{port}", procs[-1].pid, argv, log))
        yield started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_up(servers: list[Started], timeout: float = 600) -> None:
    for name, url, pid, argv, log in servers:
        local_process.wait_healthy(f"{url}/health", pid=pid, marker=" ".join(argv[:2]), timeout=timeout, log_path=log)
        print(f"{name}: up at {url} (log {log})", flush=True)


async def one_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    latencies: list[float] = []
    tokens = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/completions", json=body)
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {"tok_s": tokens / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-phi-3")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    import presets

    model_path = presets.resolve_model_source(args.model)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "VLLM_NO_USAGE_STATS": "1"}
    config = Path(tempfile.mkstemp(suffix=".yaml")[1])
    config.write_text("vllm:\n  dtype: float32\n  max-model-len: 1024\n")
    k_port, v_port = local_process.free_port(), local_process.free_port()
    kaiflow_argv = ["-m", "serving", "--model", args.model, "--engine", "vllm", "--config", str(config),
                    "--port", str(k_port), "--served-model-name", "m", "--max-queue-depth", "1024"]
    vllm_argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--dtype", "float32",
                 "--max-model-len", "1024", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16",
                 "--served-model-name", "m", "--host", "127.0.0.1", "--port", str(v_port)]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with started_servers([("vllm", vllm_argv, v_port, env), ("kaiflow", kaiflow_argv, k_port, env)]) as started:
        wait_up(started)
        v_url, k_url = (url for _, url, *_ in started)
        for url in (v_url, k_url):  # warm-up: first requests compile and fill caches
            asyncio.run(one_level(url, "m", 4, 8, args.max_tokens))
        for r in range(args.rounds):
            for c in args.concurrency:
                order = [("vllm", v_url), ("kaiflow", k_url)]
                for name, url in (order if r % 2 == 0 else order[::-1]):
                    res = asyncio.run(one_level(url, "m", c, c * args.requests_per_client, args.max_tokens))
                    results.setdefault((name, c), []).append(res)
                    print(f"round {r} c={c:>2} {name:>7}: {res['tok_s']:8.1f} tok/s  p50 {res['p50'] * 1000:7.1f} ms"
                          f"  p99 {res['p99'] * 1000:7.1f} ms", flush=True)
    report(results, args.concurrency)


def report(results: dict[tuple[str, int], list[dict[str, float]]], levels: list[int]) -> None:
    print("\nconcurrency | vLLM tok/s | kaiflow tok/s | ratio | vLLM p50/p99 ms | kaiflow p50/p99 ms")
    for c in levels:
        v = {k: statistics.median(r[k] for r in results[("vllm", c)]) for k in ("tok_s", "p50", "p99")}
        k = {k: statistics.median(r[k] for r in results[("kaiflow", c)]) for k in ("tok_s", "p50", "p99")}
        print(f"{c:>11} | {v['tok_s']:10.1f} | {k['tok_s']:13.1f} | {k['tok_s'] / v['tok_s']:5.2f} | "
              f"{v['p50'] * 1000:6.0f}/{v['p99'] * 1000:6.0f}   | {k['p50'] * 1000:6.0f}/{k['p99'] * 1000:6.0f}")


if __name__ == "__main__":
    main()
