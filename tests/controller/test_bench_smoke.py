"""bench/controller.py at count 3 on the session's Prefect server: it must run to the end, print its
figures and create exactly one Prefect run per workspace (the numbers mean nothing at this size)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bench_controller_prints_its_figures_and_one_run_per_workspace(prefect_api):
    proc = subprocess.run([sys.executable, "bench/controller.py", "--count", "3", "--worker-limit", "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PREFECT_API_URL": prefect_api})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^all WorkspaceReady after \d+\.\d s: \d+\.\d workspaces/min to WorkspaceReady \(3/3 Ready\)$", out, re.M), out
    assert re.search(r"^controller peak RSS: \d+ MiB$", out, re.M), out
    assert re.search(r"^Prefect runs created: 3 \(COMPLETED 3\); expected 3$", out, re.M), out
