"""The charts kaiflow leaves as artifacts, looked at in the Prefect UI as a person would (issue 21).

A real tuning run (the workspace flow in-process against the session's Prefect server, real QLoRA on
tiny-phi-3, data over HTTP, an eval split, a few steps) leaves its loss-curve artifact; Debian's
Chromium, driven by Playwright as in test_ui.py, opens the artifact's page. The chart is a markdown
image with an SVG data URI: the UI's sanitiser must keep it and the browser must draw it (its natural
size is non-zero), and no ``None`` or ``nan`` may appear in the artifact (nor ``nan`` anywhere on the
page: Prefect's own side panel says "Tags None" for a run without tags, which is not ours to change). The retrain decision's
chart (serving and candidate scores side by side) is checked the same way, as ``decision_markdown``
writes it. Screenshots are kept in the test's tmp folder (printed with ``-s``).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.support import fileserver, workspaces
from tests.support.workspaces import QA_PAIRS as PAIRS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "ui-loss-curve"
BUNDLE = workspaces.SHORT_TUNING_WITH_EVAL
ENV = {"KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_RETRY_BACKOFF_S": "0.2", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def browser():
    with workspaces.chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    with workspaces.browser_page(browser) as pg:
        yield pg


@pytest.fixture(scope="module")
def tuned_run(prefect_api, tiny_model, tmp_path_factory):
    """One real tuning run of a tuning-only workspace; yields the flow run's id."""
    from flows import teardown
    from flows.workspace_flow import workspace_flow
    from infra import records
    from workspace import loader

    with workspaces.environ(ENV), fileserver.FileServer(tmp_path_factory.mktemp("www")) as srv:
        try:
            fileserver.write_qa_jsonl(srv.root / "qa.jsonl", PAIRS)
            bundle = loader.load_text(BUNDLE.format(name=NAME, url=srv.url_for("qa.jsonl")), source=f"{NAME}.yaml")
            workspace_flow(workspace=bundle.workspaces[0], config_maps=bundle.config_maps, platform="local")
            yield records.load(NAME).last_flow_run
        finally:
            if records.load(NAME):
                teardown.delete_workspace(NAME)


def artifact(api: str, key: str) -> dict:
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}, timeout=10)
    r.raise_for_status()
    assert r.json(), f"no artifact {key}"
    return r.json()[0]


def look_at(pg, ui: str, artifact_id: str, alt_prefix: str, shot: Path) -> dict:
    """Open an artifact's page; return the chart image's natural size and the page's text."""
    from playwright.sync_api import expect

    pg.goto(f"{ui}/artifacts/artifact/{artifact_id}")
    img = pg.locator(f"img[alt^='{alt_prefix}']")
    expect(img).to_be_visible()
    pg.wait_for_function("(el) => el.complete", arg=img.element_handle())
    size = img.evaluate("(el) => ({width: el.naturalWidth, height: el.naturalHeight, src: el.src.slice(0, 32)})")
    pg.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    # the artifact as rendered; the page's side panel is Prefect's own (it says "Tags None" for a run without tags)
    return {**size, "text": pg.locator("article.artifact-data-markdown").inner_text(), "page": pg.inner_text("body")}


def test_the_loss_curve_of_a_real_tuning_run_is_drawn_in_the_ui(tuned_run, prefect_api, page, tmp_path):
    a = artifact(prefect_api, f"{NAME}-loss-curve")
    assert a["flow_run_id"] == tuned_run
    data = a["data"]  # the real run's numbers: training and eval loss, and the learning rate, per step
    assert "| step | training loss | eval loss | learning rate |" in data
    seen = look_at(page, prefect_api[: -len("/api")], a["id"], f"loss curve of {NAME}", tmp_path / "loss-curve.png")
    assert seen["src"].startswith("data:image/svg+xml;base64,")  # kept by the UI's sanitiser
    assert seen["width"] > 0 and seen["height"] > 0  # and drawn
    assert "Loss curve: ui-loss-curve" in seen["text"] and "eval loss" in seen["text"]
    assert not re.search(r"\b(None|nan|NaN)\b", seen["text"]), seen["text"]
    assert not re.search(r"\b(nan|NaN)\b", seen["page"]), seen["page"]


def test_a_retrain_decision_chart_is_drawn_in_the_ui(prefect_api, page, tmp_path):
    from flows import retrain

    scores = {"rows": 2, "shape": "messages", "exact_match_applicable": True,
              "adapters": {"serving": {"loss": 1.42, "exact_match": 0.5}, "candidate": {"loss": 0.87, "exact_match": None}}}
    d = retrain.Decision("Promoted", "candidate is not worse", "sha256:" + "ab" * 32, scores=scores)
    # stored as the retrain flow stores it (a markdown artifact); Playwright's loop makes Prefect's helper async here
    r = httpx.post(f"{prefect_api}/artifacts/", json={"key": "ui-decision-retrain", "type": "markdown",
                                                      "data": retrain.decision_markdown("ui-decision", d, None)}, timeout=30)
    assert r.status_code == 201, r.text
    seen = look_at(page, prefect_api[: -len("/api")], r.json()["id"], "held-out scores", tmp_path / "retrain-decision.png")
    assert seen["width"] > 0 and seen["height"] > 0
    assert "Retrain decision: ui-decision" in seen["text"]
    assert not re.search(r"\b(None|nan|NaN)\b", seen["text"]), seen["text"]
