"""Tune: train the adapter, or reuse the one an identical run already made (JobStarted).

The cache key is built here, from content, never from the run id: the dataset fingerprint, the fully
resolved training config (preset defaults and hardware choices included) and the base model with
its revision. The platform runs the tuning program (a local process, or a Job on the GPU nodes)
and reuses the adapter of an identical key, so re-applying an unchanged workspace trains nothing.
The loss curve becomes an artifact when the platform saw the run's metrics.
"""

from __future__ import annotations

import hashlib
import json

from prefect import task
from prefect.artifacts import create_markdown_artifact

import presets
from infra.platforms.base import Dataset, Tuned
from tasks.common import on_platform, artifact_key, task_options
from workspace import configmaps, spec
from workspace.errors import SpecError

training_config = configmaps.training_config  # kept: retrain and tests read the config through here


def cache_key(dataset_digest: str, resolved: dict, model: str, method: str) -> str:
    blob = json.dumps(
        {"data": dataset_digest, "config": resolved, "model": model, "revision": presets.resolve_revision(model), "method": method},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def key_for(workspace: spec.Workspace, dataset_digest: str, config_maps: dict[str, dict[str, str]]) -> str:
    """The tuning cache key of ``workspace`` on data ``dataset_digest`` (a bad config is a SpecError)."""
    from tuning import config as tuning_config

    t = workspace.tuning
    try:
        resolved = tuning_config.resolve(configmaps.training_config(workspace, config_maps), model=t.preset.name,
                                         method=t.method)
    except tuning_config.ConfigError as exc:
        raise SpecError(f"tuning.config ({t.config}): {exc}") from None
    return cache_key(dataset_digest, resolved, t.preset.name, t.method)


def _loss_markdown(name: str, metrics: dict) -> str:
    losses = metrics.get("loss") or []
    bars = "▁▂▃▄▅▆▇█"
    values = [loss for _, loss in losses]
    spark = ""
    if values:
        lo, hi = min(values), max(values)
        spark = "".join(bars[int((v - lo) / (hi - lo + 1e-9) * (len(bars) - 1))] for v in values)
    rows = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in losses)
    return (
        f"# Loss curve: {name}\n\n`{spark}`\n\n"
        f"steps {metrics.get('steps')}, tokens {metrics.get('train_tokens')}, "
        f"{metrics.get('tokens_per_second', 0):.0f} tokens/s, {metrics.get('wall_seconds', 0):.1f} s, "
        f"eval loss {metrics.get('eval_loss')}\n\n| step | loss |\n|---|---|\n{rows}\n"
    )


@task(name="tune", **task_options(retries=1))
def tune(workspace: spec.Workspace, dataset: Dataset, config_maps: dict[str, dict[str, str]], platform: str = "local",
         candidate: bool = False) -> Tuned:
    """``candidate``: a retrain candidate, kept apart from what the workspace serves and publishes
    (on a cluster its Job pushes to a candidate tag beside ``tuning.output.image``)."""
    key = key_for(workspace, dataset.digest, config_maps)
    with on_platform(platform) as where:
        tuned = where.tune(workspace, dataset, config_maps, key, where.reporter(workspace), candidate=candidate)
        if tuned.metrics:
            create_markdown_artifact(_loss_markdown(workspace.name, tuned.metrics), key=artifact_key(workspace.name, "loss-curve"),
                                     description=f"loss curve of the tuning run of {workspace.name}")
        return tuned
