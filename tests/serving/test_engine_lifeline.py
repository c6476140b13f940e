"""A server killed with SIGKILL (what the OOM killer sends) takes its vLLM engine processes with it.

Before `serving.engines.lifeline`, the engine core and its worker outlived a `kill -9` of the
server under PID 1, ~2 GB each, spinning a core. Real processes, a real SIGKILL, psutil to look.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.serving.conftest import REPO, running_server


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {proc.name()!r} ppid={proc.ppid()} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return str(proc.pid)


@pytest.mark.vllm
@pytest.mark.slow
def test_sigkill_of_the_server_leaves_no_vllm_engine_process_running() -> None:
    if os.environ.get("KAIFLOW_TESTS_STRICT") != "1":
        pytest.importorskip("vllm")
    args = ["--model", "tiny-phi-3", "--engine", "vllm", "--no-lora"]
    with running_server(args, env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout_s=400) as server:
        body = {"model": "tiny-phi-3", "prompt": "Hello", "max_tokens": 2}
        assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).status_code == 200
        engine = psutil.Process(server.proc.pid).children(recursive=True)
        names = [p.name() for p in engine]
        assert any("EngineCore" in n for n in names), f"no engine core among the server's children: {names}"
        try:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
            deadline = time.monotonic() + 10
            while any(alive(p) for p in engine) and time.monotonic() < deadline:
                time.sleep(0.1)
            survivors = [describe(p) for p in engine if alive(p)]
            assert not survivors, f"engine processes outlived the killed server: {survivors}"
        finally:
            for p in engine:  # never leave a stray engine behind on this machine, even when the test fails
                if alive(p):
                    p.kill()
            psutil.wait_procs(engine, timeout=10)


def test_engine_processes_arm_a_parent_death_signal(tmp_path: Path) -> None:
    """What vLLM's spawned children run first: afterwards the kernel kills them when their parent goes."""
    script = tmp_path / "spawn_child.py"
    script.write_text("import multiprocessing as mp\n"
                      "from serving.engines import lifeline\n"
                      "def child(q):\n"
                      "    q.put((lifeline.parent_death_signal(), lifeline.die_with_parent(), lifeline.parent_death_signal()))\n"
                      "if __name__ == '__main__':\n"
                      "    ctx = mp.get_context('spawn'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,))\n"
                      "    p.start(); print(*q.get(timeout=60)); p.join()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True", str(int(signal.SIGKILL))]


def test_the_wrapped_vllm_entry_points_exist() -> None:
    """vLLM moves fast: if it renames its process entry points, say so here, not in production."""
    pytest.importorskip("vllm")
    from serving.engines import lifeline

    assert lifeline.install() == []
    from vllm.v1.engine.core import EngineCoreProc
    from vllm.v1.executor.multiproc_executor import WorkerProc

    assert EngineCoreProc.run_engine_core is lifeline.run_engine_core
    assert WorkerProc.worker_main is lifeline.worker_main
