"""Quick runs of each bench/ script behind the README's ratios, at tiny sizes: each must still run to
the end and print its ratio line (the numbers themselves mean nothing at these sizes).
bench/gpu_check.py has its own test (tests/test_gpu_check_script.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RATIO = r"\d+\.\d+"


def bench(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    proc = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_tuning_prints_its_ratio():
    out = bench("tuning.py", "--rows", "8", "--rounds", "1", "--dataset", "mixed", "--method", "lora")
    assert re.search(rf"mixed: program \d+ tok/s, trl baseline \d+ tok/s, ratio {RATIO}", out), out
    assert re.search(rf"^RESULT mixed_ratio={RATIO}$", out, re.M), out


def test_bench_transfer_prints_its_ratios(tmp_path: Path):
    out = bench("transfer.py", "--mb", "1", "--runs", "1", "--work", str(tmp_path))
    for line in ("push: kaiflow", "pull: kaiflow"):
        assert re.search(rf"^{line} \d+ MB/s .* ratio {RATIO} ", out, re.M), out


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_orchestration_prints_its_overhead_ratio(prefect_api, tmp_path: Path):
    out = bench("orchestration.py", "--smoke", env={"PREFECT_API_URL": prefect_api})
    result = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert result["overhead_ratio"] > 0 and result["unchanged_reapply_s"] > 0, out


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_serving_prints_its_ratio():
    out = bench("serving.py", "--rounds", "1", "--max-tokens", "4", "--requests-per-client", "1", "--concurrency", "1",
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}, timeout=1500)
    assert re.search(rf"^\s+1 \| +\d+\.\d \| +\d+\.\d \| +{RATIO} \|", out, re.M), out


def test_bench_datasets_prints_its_ratio_rss_and_resume(tmp_path: Path):
    out = bench("datasets.py", "--mb", "2", "--runs", "1", "--work", str(tmp_path))
    assert re.search(rf"^pull: kaiflow \d+ MB/s vs curl -o \d+ MB/s  ratio {RATIO} ", out, re.M), out
    assert re.search(r"^peak RSS of the pulling process: \d+ MB", out, re.M), out
    # the cut at 50 % is resumed with a Range request, and the file crosses the wire once
    assert re.search(r"^resume: cut at 50 %, requests \[\(None, 200\), \('bytes=\d+-', 206\)\], 1\.00x", out, re.M), out
    assert list(tmp_path.iterdir()) == [], "the bench left files behind"


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_coldstart_prints_its_ratio_and_where_the_seconds_go(prefect_api):
    out = bench("coldstart.py", "--runs", "1", "--prefect-api", prefect_api)
    assert re.search(rf"^RESULT coldstart_ratio={RATIO}$", out, re.M), out
    assert re.search(r"^\s+\d+\.\d+ s\s+nan s  task deploy", out, re.M), out
    assert re.search(r"^  of the first line: importing kaiflow's CLI \d+\.\d+ s, then Prefect and the workspace flow "
                     r"\d+\.\d+ s", out, re.M), out


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_adapters_prints_its_ratios():
    out = bench("adapters.py", "--adapters", "2", "--rounds", "1", "--concurrency", "2", "--requests-per-client", "1",
                "--max-tokens", "2", env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}, timeout=1500)
    assert re.search(rf"^\s+2 \| spread \| +\d+\.\d \| +\d+\.\d \| +{RATIO} \| +{RATIO} \| +{RATIO}$", out, re.M), out
    assert re.search(rf"^RESULT adapters2_vs_vllm={RATIO}$", out, re.M), out
    assert re.search(rf"^RESULT adapters2_vs_one={RATIO}$", out, re.M), out
    # both servers start once with no adapter; the two are loaded into each at run time
    assert re.search(r"^N=2: 2 adapters loaded into both servers", out, re.M), out
    assert re.search(rf"^ +\(kaiflow/vLLM spread by round: {RATIO}\)$", out, re.M), out
