"""Evaluate: score adapters on the tuning data's held-out rows (``python -m tuning.evaluate``).

The work is the evaluation program, run as a local process like the tuning program, or on
kubernetes/aks as an evaluation Job beside the tuning Job (``evaluate_images``: the Job pulls the
adapter images by digest and leaves its scores in its termination message); this task only runs
it, retries transient faults, and turns its exit status and ``error:`` line into a TuningError that
says what to fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task

from infra import local_state
from tasks.common import task_options
from workspace import spec
from workspace.errors import SpecError, TuningError

EXIT_BAD_INPUT = 2


@task(name="evaluate-adapters", **task_options(retries=1))
def evaluate(workspace: spec.Workspace, data_dir: str, training_config: dict | None, adapters: dict[str, str]) -> dict:
    """Scores per adapter name (``{"rows", "shape", "exact_match_applicable", "adapters", "samples"}``)."""
    log = get_run_logger()
    name, t = workspace.name, workspace.tuning
    wdir = local_state.workspace_dir(name)
    wdir.mkdir(parents=True, exist_ok=True)
    out = wdir / "evaluation.json"
    out.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"training_config": training_config or {}}, f)
        cfg_path = f.name
    cmd = [sys.executable, "-m", "tuning.evaluate", "--model", t.preset.name, "--data", data_dir, "--config", cfg_path,
           "--method", t.method, "--output", str(out)]
    for adapter, path in adapters.items():
        cmd += ["--adapter", f"{adapter}={path}"]
    log.info("running: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.unlink(cfg_path)
    (wdir / "evaluation.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.startswith("error:")), "")
        msg = f"evaluating adapters of {name}: {last or f'program exited with status {proc.returncode}'}"
        if proc.returncode == EXIT_BAD_INPUT:
            raise SpecError(msg + f" (tuning.config {t.config or '(preset defaults)'})")
        raise TuningError(msg + f"; see {wdir / 'evaluation.log'}", reason="EvaluationFailed")
    scores = json.loads(Path(out).read_text())
    _log_scores(log, scores)
    return scores


@task(name="evaluate-adapter-images", **task_options(retries=1))
def evaluate_images(workspace: spec.Workspace, adapters: dict[str, str], config_maps: dict[str, dict[str, str]],
                    cache_key: str, platform: str) -> dict:
    """Scores per adapter image (name -> digest-pinned image) from an evaluation Job on the cluster;
    ``workspace.tuning.config`` names the candidate's training config (its held-out split).
    The same shape as ``evaluate`` less the samples."""
    from infra.kube import platform as kube_platform

    scores = kube_platform.run_evaluation(workspace, cache_key=cache_key, adapters=adapters, platform=platform,
                                          config_maps=config_maps)
    _log_scores(get_run_logger(), scores)
    return scores


def _log_scores(log: Any, scores: dict) -> None:
    for adapter, s in scores["adapters"].items():
        log.info("%s: held-out loss %.4f, exact-match %s on %d rows", adapter, s["loss"], s["exact_match"], scores["rows"])
