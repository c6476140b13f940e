"""Evaluate: score the serving adapter and a retrain candidate on held-out rows.

The platform runs the evaluation program (``python -m tuning.evaluate``: a local process, or an
evaluation Job on the GPU nodes that pulls both images by digest); this task logs the scores.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from infra.platforms.base import Dataset, Scores, Tuned
from tasks.common import on_platform, task_options
from workspace import spec


@task(name="evaluate-adapters", **task_options(retries=1))
def evaluate(workspace: spec.Workspace, dataset: Dataset, config_maps: dict[str, dict[str, str]], serving_image: str,
             candidate: Tuned, platform: str = "local") -> Scores:
    """``workspace.tuning.config`` names the candidate's training config (its held-out split)."""
    with on_platform(platform) as where:
        scores = where.evaluate(workspace, dataset, config_maps, serving_image, candidate, where.reporter(workspace))
        log = get_run_logger()
        for adapter, s in scores.adapters.items():
            log.info("%s: held-out loss %.4f, exact-match %s on %d rows", adapter, s["loss"], s["exact_match"], scores.rows)
        return scores
