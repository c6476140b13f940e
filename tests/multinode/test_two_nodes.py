"""Two "nodes" on 127.0.0.1: `python -m serving` as node rank 0 (the leader, serving the API) and
node rank 1 (a pipeline stage), vLLM pipeline-parallel 2 over vLLM's own multi-node launcher.

Its greedy answers, for the base model and for an adapter, equal those of a one-process server
(the transformers engine, which the vLLM engine matches token for token in float32:
tests/serving/test_server.py). A worker that dies makes the leader exit, so the whole group
restarts (tests/multinode/test_group_args.py checks the other way round). The group takes a minute or two to start on two CPU cores: one
group serves the whole module, and the test that kills its leader runs last.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from infra import local_process
from tests.serving.conftest import REPO, RunningServer, build_adapter, running_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PROMPTS = ["What is the capital of France?", "Name three colours.", "Count to five."]


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, session_tmp: Path) -> Path:
    return build_adapter(tiny_model, session_tmp / "multinode-adapter", seed=7)


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


class Group:
    def __init__(self, leader: RunningServer, worker: subprocess.Popen, worker_log: Path, worker_url: str) -> None:
        self.leader, self.worker, self.worker_log, self.worker_url = leader, worker, worker_log, worker_url


@pytest.fixture(scope="module")
def group(adapter: Path, session_tmp: Path) -> Iterator[Group]:
    if os.environ.get("KAIFLOW_TESTS_STRICT") != "1":
        pytest.importorskip("vllm")
    cfg = session_tmp / "multinode-config.yaml"
    cfg.write_text("vllm:\n  dtype: float32\n  max-model-len: 1024\n")
    master_port = local_process.free_port()
    common = ["--model", "tiny-phi-3", "--engine", "vllm", "--config", str(cfg), "--adapter", f"alpha={adapter}",
              "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(master_port)]
    cpus = _cpus()
    base_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    worker_log = Path(tempfile.mkstemp(prefix="serving-worker-", suffix=".log")[1])
    worker_port = local_process.free_port()
    with worker_log.open("w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "serving", *common, "--node-rank", "1",
                                   "--port", str(worker_port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  env={**base_env, "VLLM_CPU_OMP_THREADS_BIND": str(cpus[1 % len(cpus)])})
    try:
        with running_server([*common, "--node-rank", "0"], timeout_s=400,
                            env={"VLLM_CPU_OMP_THREADS_BIND": str(cpus[0]), "VLLM_CPU_KVCACHE_SPACE": "1"}) as leader:
            yield Group(leader, worker, worker_log, f"http://127.0.0.1:{worker_port}")
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


@pytest.fixture(scope="module")
def single(adapter: Path) -> Iterator[RunningServer]:
    with running_server(["--model", "tiny-phi-3", "--engine", "transformers", "--adapter", f"alpha={adapter}"]) as server:
        yield server


def _answer(url: str, model: str, prompt: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("model", ["tiny-phi-3", "alpha"])
def test_two_node_group_answers_as_one_process_does(group: Group, single: RunningServer, model: str) -> None:
    answers = [_answer(group.leader.url, model, p) for p in PROMPTS]
    assert answers == [_answer(single.url, model, p) for p in PROMPTS], group.leader.log_tail()
    assert any(answers), "the prompts make the tiny model say something"


def test_the_leader_runs_pipeline_parallel_two_over_two_nodes(group: Group) -> None:
    log = group.leader.log.read_text(errors="replace")
    assert "pipeline_parallel_size=2" in log
    assert "nnodes 2" in log or "world_size=2" in log or "pipeline stages prepared" in log
    assert "node rank 1 joined" in group.worker_log.read_text(errors="replace")


def test_a_worker_answers_health_and_points_api_calls_at_the_leader(group: Group) -> None:
    health = httpx.get(f"{group.worker_url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["role"] == "worker" and health.json()["node_rank"] == 1
    api = httpx.get(f"{group.worker_url}/v1/models", timeout=10)
    assert api.status_code == 404 and "served by the leader" in api.json()["error"]["message"]


def test_a_worker_that_dies_ends_the_group(group: Group) -> None:
    """Runs last in this module: it ends the group. The leader exits non-zero (its pod restarts, and
    the group with it) instead of answering /health while requests hang on the lost stage."""
    group.worker.kill()
    assert group.leader.proc.wait(timeout=120) != 0
    assert "node rank 1 left the group" in group.leader.log.read_text(errors="replace")
