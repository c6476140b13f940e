"""Tune: train the adapter, or reuse the one an identical run already made (JobStarted).

The cache key is built here, from content, never from the run id: the dataset fingerprint, the fully
resolved training config (preset defaults and hardware choices included) and the base model with
its revision. The platform runs the tuning program (a local process, or a Job on the GPU nodes)
and reuses the adapter of an identical key, so re-applying an unchanged workspace trains nothing.
The loss curve becomes an artifact when the platform saw the run's metrics: a chart (``tasks.charts``)
of training loss, eval loss and learning rate per step, with the same numbers as a table below it.
"""

from __future__ import annotations

import hashlib
import json
import math

from prefect import task
from prefect.artifacts import create_markdown_artifact

import presets
from infra.platforms.base import Dataset, Tuned
from tasks import charts
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
    """The loss-curve artifact: a chart (training loss, eval loss, learning rate per step), one summary
    line, and the table of the same numbers below it. Values the run did not produce are left out."""
    losses = dict(charts.finite_points(metrics.get("loss")))
    evals = dict(charts.finite_points(metrics.get("eval_loss_history")))
    rates = dict(charts.finite_points(metrics.get("learning_rate")))
    parts = [f"# Loss curve: {name}", ""]
    svg = charts.loss_chart(f"tuning run of {name}", metrics.get("loss"), metrics.get("eval_loss_history"),
                            metrics.get("learning_rate"))
    if svg:
        parts += [charts.markdown_image(svg, f"loss curve of {name}"), ""]
    parts += [_summary_line(metrics), ""]
    columns = [("step", None), ("training loss", losses), ("eval loss", evals), ("learning rate", rates)]
    columns = [(title, values) for title, values in columns if values is None or values]  # a column with no values: left out
    steps = sorted({int(s) for s in (*losses, *evals, *rates)})
    if steps:
        parts += ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
        for step in steps:
            cells = [str(step)] + [_cell(values.get(step), title) for title, values in columns[1:] if values is not None]
            parts.append("| " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


def _cell(value: float | None, title: str) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if title == "learning rate" else f"{value:.4f}"


def _summary_line(metrics: dict) -> str:
    """What the run did, in one line, with only the numbers it has (never ``None`` or ``nan``)."""
    def number(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    losses = charts.finite_points(metrics.get("loss"))
    said = []
    if (steps := number("steps")) is not None:
        said.append(f"{steps:.0f} steps")
    if losses:
        said.append(f"final training loss {losses[-1][1]:.4f}")
    if (eval_loss := number("eval_loss")) is not None:
        said.append(f"eval loss {eval_loss:.4f}")
    if tokens := number("train_tokens"):
        said.append(f"{tokens:.0f} tokens")
    if rate := number("tokens_per_second"):
        said.append(f"{rate:.0f} tokens/s")
    if wall := number("wall_seconds"):
        said.append(f"{wall:.1f} s in all")
    return ", ".join(said) if said else "no metrics were recorded"


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
