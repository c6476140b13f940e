"""bench/gpu_check.py is run by hand on a GPU machine (CI has none); here it runs its own checks on
the CPU (``--cpu``) so the script still works the day a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_script_passes_on_the_cpu(tmp_path: Path):
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KAIFLOW_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"environment", "qlora_4bit_modules_on_gpu", "qlora_4bit_program_learns",
                            "serving_transformers_engine_with_adapter", "qlora_8bit_program_runs",
                            "kaito_qlora_config_unchanged"}
    assert all(r["ok"] for r in results.values()), results
    assert results["qlora_4bit_modules_on_gpu"]["devices"] == ["cpu"]
    assert results["qlora_4bit_program_learns"]["answers_with_adapter"] == ["Paris.", "Eight.", "Blue.",
                                                                             "Shakespeare.", "Four."]
