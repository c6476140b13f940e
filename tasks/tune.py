"""Tune: run the tuning program, or reuse the adapter an identical run already made (JobStarted).

The cache key is built from content, never from the run id: the dataset fingerprint, the fully
resolved training config (preset defaults and hardware choices included) and the base model with
its revision. An adapter directory named after that key with a ``COMPLETE`` marker is reused as is,
so re-applying an unchanged workspace trains nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

import presets
from infra import local_state
from tasks.common import artifact_key, task_options
from workspace import settings, spec, status
from workspace.errors import SpecError, TuningError

PROGRESS = "KAIFLOW_PROGRESS "


def training_config(workspace: spec.Workspace, config_maps: dict[str, dict[str, str]]) -> dict | None:
    """The ``training_config.yaml`` of the ConfigMap ``tuning.config`` names (None: preset defaults)."""
    name = workspace.tuning.config
    if not name:
        return None
    cm = config_maps.get(name)
    if cm is None:
        raise SpecError(
            f"tuning.config: ConfigMap '{name}' was not given; put it in the same file as the workspace "
            "(a ConfigMap whose data has training_config.yaml)"
        )
    text = cm.get("training_config.yaml")
    if text is None:
        raise SpecError(f"tuning.config: ConfigMap '{name}' has no training_config.yaml key (keys: {', '.join(cm)})")
    return yaml.safe_load(text) or {}


def cache_key(dataset_digest: str, resolved: dict, model: str, method: str) -> str:
    blob = json.dumps(
        {"data": dataset_digest, "config": resolved, "model": model, "revision": presets.resolve_revision(model), "method": method},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _loss_markdown(name: str, metrics: dict) -> str:
    losses = metrics.get("loss") or []
    bars = "▁▂▃▄▅▆▇█"
    values = [l for _, l in losses]
    spark = ""
    if values:
        lo, hi = min(values), max(values)
        spark = "".join(bars[int((v - lo) / (hi - lo + 1e-9) * (len(bars) - 1))] for v in values)
    rows = "\n".join(f"| {s} | {l:.4f} |" for s, l in losses)
    return (
        f"# Loss curve: {name}\n\n`{spark}`\n\n"
        f"steps {metrics.get('steps')}, tokens {metrics.get('train_tokens')}, "
        f"{metrics.get('tokens_per_second', 0):.0f} tokens/s, {metrics.get('wall_seconds', 0):.1f} s, "
        f"eval loss {metrics.get('eval_loss')}\n\n| step | loss |\n|---|---|\n{rows}\n"
    )


@task(name="tune", **task_options(retries=1))
def tune(workspace: spec.Workspace, dataset: dict, config_maps: dict[str, dict[str, str]], platform: str = "local",
         candidate: bool = False) -> dict:
    """``candidate`` (retrain, kubernetes/aks): the Job pushes to a candidate tag beside
    ``tuning.output.image`` (``manifests.candidate_reference``), which keeps its tag until promotion.
    On the local platform nothing is pushed here anyway."""
    from tuning import config as tuning_config

    log = get_run_logger()
    name, t = workspace.name, workspace.tuning
    model, method = t.preset.name, t.method
    raw = training_config(workspace, config_maps)
    try:
        resolved = tuning_config.resolve(raw, model=model, method=method)
    except tuning_config.ConfigError as exc:
        raise SpecError(f"tuning.config ({t.config}): {exc}") from None
    key = cache_key(dataset["digest"], resolved, model, method)
    if platform != "local":  # a Job on the GPU nodes, labelled with the key; an identical re-apply reuses its result
        from infra.kube import manifests as kube_manifests
        from infra.kube import platform as kube_platform

        if candidate:
            return kube_platform.run_tuning(workspace, cache_key=key, platform=platform, config_maps=config_maps,
                                            output_image=kube_manifests.candidate_reference(t.output.image, key))
        return kube_platform.run_tuning(workspace, cache_key=key, platform=platform, config_maps=config_maps)
    out = settings.load().home_dir / "adapters" / key[:24]
    if (out / "COMPLETE").exists():
        log.info("adapter for this data and config already exists (%s): no tuning needed", key[:12])
        metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
        return {"adapter_dir": str(out), "cache_key": key, "reused": True, "steps": metrics.get("steps")}

    local_state.set_condition(name, status.JOB_STARTED, True, "TuningJobStarted", f"{method} tuning of {model} started")
    local_state.add_event(name, "TuningStarted", f"{method} on {model}, data {dataset['digest'][:19]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = local_state.workspace_dir(name) / "tuning.log"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"training_config": tuning_config.sections_of(raw)}, f)  # Kaito's file is wrapped already
        cfg_path = f.name
    cmd = [sys.executable, "-m", "tuning", "--config", cfg_path, "--data", dataset["dir"], "--model", model,
           "--output", str(out), "--method", method]
    log.info("running: %s", " ".join(cmd))
    last_error = ""
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            logf.write(line)
            if line.startswith(PROGRESS):
                try:
                    ev = json.loads(line[len(PROGRESS):])
                except json.JSONDecodeError:
                    continue
                if "step" in ev and "loss" in ev:
                    total = ev.get("max_steps") or "?"
                    done = int(20 * ev["step"] / total) if isinstance(total, int) and total else 0
                    log.info("tuning [%s%s] step %s/%s loss %.4f", "#" * done, "." * (20 - done), ev["step"], total, ev["loss"])
            elif line.startswith("error:"):
                last_error = line.strip()
        rc = proc.wait()
    os.unlink(cfg_path)
    if rc != 0 or not (out / "COMPLETE").exists():
        msg = last_error or f"tuning program exited with status {rc}; see `kaiflow logs {name} --tuning`"
        local_state.set_condition(name, status.JOB_STARTED, False, "TuningFailed", msg)
        raise TuningError(f"tuning {name}: {msg}")
    metrics = json.loads((out / "metrics.json").read_text())
    create_markdown_artifact(_loss_markdown(name, metrics), key=artifact_key(name, "loss-curve"),
                             description=f"loss curve of the tuning run of {name}")
    local_state.set_condition(name, status.JOB_STARTED, True, "TuningCompleted",
                              f"{metrics.get('steps')} steps, final loss {metrics['loss'][-1][1]:.4f}" if metrics.get("loss") else "done")
    local_state.add_event(name, "TuningCompleted", f"adapter {key[:12]} in {metrics.get('wall_seconds', 0):.1f} s")
    return {"adapter_dir": str(out), "cache_key": key, "reused": False, "steps": metrics.get("steps")}
