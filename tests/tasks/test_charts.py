"""The loss-curve and retrain-decision artifacts (issue 21): a chart the Prefect UI shows inline (an SVG
as a base64 data URI in a markdown image), the numbers as a table below it, and no missing value ever
printed as ``None`` or ``nan``. The browser half is tests/deployments/test_ui_artifacts.py."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

from flows import retrain
from tasks import charts
from tasks import tune as tune_task

SVG_NS = "{http://www.w3.org/2000/svg}"
METRICS = {"loss": [[10, 2.5], [20, 1.25], [30, float("nan")], [40, 0.5]], "eval_loss_history": [[20, 1.5], [40, 0.75]],
           "eval_loss": 0.75, "learning_rate": [[10, 2e-4], [20, 1.5e-4], [30, 1e-4], [40, 5e-5]], "steps": 40,
           "train_tokens": 1234, "tokens_per_second": None, "wall_seconds": 3.5}


def images(markdown: str) -> list[ET.Element]:
    """The SVG documents embedded in ``markdown`` as data-URI images, parsed."""
    found = re.findall(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return [ET.fromstring(base64.b64decode(x)) for x in found]


def shown(markdown: str) -> str:
    """``markdown`` without its data URIs (base64 text may spell anything)."""
    return re.sub(r"\(data:[^)]*\)", "(data)", markdown)


def texts(svg: ET.Element) -> list[str]:
    return [t.text or "" for t in svg.iter(f"{SVG_NS}text")]


def test_the_loss_artifact_is_a_chart_with_axes_then_a_table_without_none_or_nan():
    md = tune_task._loss_markdown("ws", METRICS)
    [svg] = images(md)
    labels = texts(svg)
    assert {"step", "loss (nats per token)", "learning rate", "training loss", "eval loss"} <= set(labels)
    lines = svg.findall(f"{SVG_NS}polyline")
    assert len(lines) == 3  # training loss, eval loss, learning rate
    assert len(lines[0].get("points", "").split()) == 3  # the nan point is left out, not drawn
    assert len(svg.findall(f"{SVG_NS}circle")) == 2  # eval points are marked
    assert md.index("data:image/svg+xml") < md.index("| step | training loss | eval loss | learning rate |")
    assert "| 30 |  |  | 1.0e-04 |" in md or "| 30 |  |  | 0.0001 |" in md
    assert "40 steps, final training loss 0.5000, eval loss 0.7500, 1234 tokens, 3.5 s in all" in md
    assert not re.search(r"\b(None|nan|NaN|inf)\b", shown(md))


def test_a_run_without_eval_split_or_learning_rate_has_neither_line_nor_column():
    md = tune_task._loss_markdown("ws", {"loss": [[1, 2.0], [2, 1.0]], "eval_loss": None, "eval_loss_history": [], "steps": 2})
    [svg] = images(md)
    assert "eval loss" not in texts(svg) and "learning rate" not in texts(svg)
    assert "| step | training loss |\n|---|---|\n| 1 | 2.0000 |\n| 2 | 1.0000 |" in md
    assert "None" not in shown(md) and "eval loss" not in shown(md)


def test_no_finite_loss_means_no_chart_and_no_table():
    md = tune_task._loss_markdown("ws", {"loss": [[1, float("nan")]], "eval_loss": None})
    assert images(md) == [] and "|" not in md and "None" not in md and "nan" not in md


def test_ticks_are_round_numbers_that_cover_the_data():
    assert charts.nice_ticks(0, 60) == [0, 20, 40, 60] and charts.nice_ticks(0, 60, 7) == [0, 10, 20, 30, 40, 50, 60]
    ticks = charts.nice_ticks(0.31, 2.57)
    assert ticks[0] <= 0.31 and ticks[-1] >= 2.57 and ticks == [0.0, 1.0, 2.0, 3.0]
    assert charts.nice_ticks(1.0, 1.0)  # one value: still an axis
    assert charts.nice_ticks(0, 12, 6, integer=True) == [0, 5, 10, 15] and charts.nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]
    assert charts.tick_label(1e-4, [0, 5e-5, 1e-4]) == "1.0e-04" and charts.tick_label(40, [0, 20, 40]) == "40"


def scores(exact_match_applicable: bool, serving_em: float | None, candidate_em: float | None) -> dict:
    return {"rows": 4, "shape": "messages", "exact_match_applicable": exact_match_applicable,
            "adapters": {"serving": {"loss": 1.2, "exact_match": serving_em}, "candidate": {"loss": 0.9, "exact_match": candidate_em}}}


def test_the_retrain_decision_draws_both_adapters_scores_side_by_side():
    d = retrain.Decision("Promoted", "candidate is not worse", "sha256:abc", scores=scores(True, 0.5, 0.75))
    md = retrain.decision_markdown("ws", d, "0.25 held out")
    [svg] = images(md)
    bars = [r for r in svg.findall(f"{SVG_NS}rect") if r.get("fill") in (charts.SERVING, charts.CANDIDATE)]
    assert [b.get("fill") for b in bars] == [charts.SERVING, charts.CANDIDATE] * 2  # loss, then exact-match
    assert {"serving", "candidate", "1.2", "0.9", "0.5", "0.75", "held-out loss (nats per answer token)"} <= set(texts(svg))
    assert md.index("data:image/svg+xml") < md.index("| metric | serving | candidate |")


def test_a_retrain_decision_without_exact_match_draws_the_loss_only():
    d = retrain.Decision("Rejected", "worse", "sha256:abc", scores=scores(False, None, None))
    [svg] = images(retrain.decision_markdown("ws", d, None))
    assert len([r for r in svg.findall(f"{SVG_NS}rect") if r.get("fill") == charts.CANDIDATE]) == 1
    assert "exact-match (fraction of answers)" not in texts(svg) and "None" not in "".join(texts(svg))


def test_the_tuning_reporter_records_the_learning_rate_of_each_logged_step():
    from transformers import TrainerControl, TrainerState

    from tuning import progress

    reporter, state = progress.Reporter(), TrainerState(max_steps=20)
    for step, lr in ((10, 2e-4), (20, 1e-4)):
        state.global_step = step
        reporter.on_log(None, state, TrainerControl(), logs={"loss": 1.0 / step, "learning_rate": lr, "num_tokens": 100 * step})
    state.global_step = 20
    reporter.on_log(None, state, TrainerControl(), logs={"eval_loss": 0.4})
    metrics = reporter.summary(eval_loss=0.4, wall_seconds=1.0, resolved={}, steps=20)
    assert metrics["learning_rate"] == [[10, 2e-4], [20, 1e-4]] and metrics["eval_loss_history"] == [[20, 0.4]]
