"""The Prefect UI, driven in Debian's Chromium with Playwright, the way a person starts a workspace.

The real UI of the session's Prefect server (V1 UI, the default in Prefect 3.7): Deployments →
``workspace`` → Run → Custom run. The run form is the Workspace schema; the test pre-fills it with
``?parameters=`` (the UI's own pre-fill link) *without* a name, types the name into the form's
metadata.name field (keyboard text input), and submits. The kaiflow worker (``stack``) runs it with the
transformers engine; the run must reach Completed in the API and on the run's page. A workspace
with ``resource.count: 0`` is refused by the form (the server's schema check) with a readable
error under Resource, and no run is created. Screenshots of failures land in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from pathlib import Path

import httpx
import pytest

from flows import teardown
from infra import records
from tests.deployments.conftest import deployment, tiny_workspace, wait_run
from tests.support import workspaces

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME_HELP = "Workspace name: lowercase letters, digits"  # the metadata.name field's description in the form


@pytest.fixture(scope="module")
def browser():
    with workspaces.chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    with workspaces.browser_page(browser) as pg:
        yield pg


@contextlib.contextmanager
def screenshot_on_failure(pg, tmp_path: Path, name: str):
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            pg.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
            print(f"screenshot: {tmp_path / f'{name}.png'} at {pg.url}")
        raise


def open_custom_run(pg, ui: str, dep_id: str, workspace: dict) -> None:
    """Deployments → workspace → Run → Custom run, then the same page pre-filled with ``workspace``."""
    pg.goto(f"{ui}/deployments")
    pg.locator("a[href*='/deployments/deployment/']", has_text="workspace").first.click()
    pg.wait_for_url(f"**/deployments/deployment/{dep_id}")
    pg.get_by_role("button", name="Run", exact=True).click()
    pg.get_by_text("Custom run").click()
    pg.wait_for_url(f"**/deployments/deployment/{dep_id}/run**")
    prefill = urllib.parse.quote(json.dumps({"workspace": workspace}))
    # the form (re)initialises its values from the URL while the deployment and schema load: type after that
    pg.goto(f"{ui}/deployments/deployment/{dep_id}/run?parameters={prefill}", wait_until="networkidle")


def type_name(pg, name: str) -> None:
    """Type the name into the form's metadata.name field from the keyboard, as one text input.

    Key-by-key typing loses keys in this form (Prefect 3.7's V1 UI): a key pressed while the
    controlled field re-renders from the previous key's update is overwritten — measured 7 of 8
    attempts lost letters even when each key waited for the previous one to show ("tiny-ui" ->
    "tin-"). One input event (what a paste or an input method sends) has nothing to race with.
    The run's parameters are checked for the name afterwards, so a lost key cannot pass unseen.
    """
    from playwright.sync_api import expect

    box = pg.get_by_text(NAME_HELP).locator(
        "xpath=ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]//textarea")
    expect(box).to_have_value("")
    box.click()
    pg.keyboard.insert_text(name)
    expect(box).to_have_value(name)


def submit_like_a_person(pg, api: str, dep_id: str, name: str) -> None:
    """Submit the form; if the UI shows its "Something went wrong" toast and made no run, submit once
    more, as a person would. On the loaded 2-core CI machine the SQLite server sometimes answers a
    request with 500 ("database is locked": Prefect's own services write every second); the failing
    requests are printed so a second failure says what broke."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    server_errors: list[str] = []
    pg.on("response", lambda r: server_errors.append(f"{r.request.method} {r.url} -> {r.status}") if r.status >= 500 else None)
    pg.get_by_role("button", name="Submit").click()
    try:
        pg.wait_for_url(f"**/deployments/deployment/{dep_id}?tab=Runs", timeout=30_000)
        return
    except PlaywrightTimeout:
        if runs_named(api, dep_id, name) or not pg.get_by_text("Something went wrong").first.is_visible():
            raise
    print("the UI reported an error on submit; server errors seen:", server_errors or "none")
    pg.get_by_role("button", name="Submit").click()
    pg.wait_for_url(f"**/deployments/deployment/{dep_id}?tab=Runs")


def runs_named(api: str, dep_id: str, name: str) -> list[dict]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [dep_id]}}}, timeout=10)
    r.raise_for_status()
    return [run for run in r.json() if run["parameters"].get("workspace", {}).get("metadata", {}).get("name") == name]


def unnamed(workspace: dict) -> dict:
    ws = json.loads(json.dumps(workspace))
    ws["metadata"].pop("name")
    return ws


def test_custom_run_typed_into_the_form_completes(stack, page, tmp_path):
    from playwright.sync_api import expect

    api, ui, name = stack["api"], stack["api"][: -len("/api")], "tiny-ui"
    dep_id = deployment(api, "workspace/workspace")["id"]
    try:
        with screenshot_on_failure(page, tmp_path, "custom-run"):
            open_custom_run(page, ui, dep_id, unnamed(tiny_workspace(name)))
            type_name(page, name)
            submit_like_a_person(page, api, dep_id, name)  # the UI goes back to the deployment's runs
            runs = runs_named(api, dep_id, name)
            assert len(runs) == 1, runs
            run = wait_run(api, runs[0]["id"])
            assert run["state_type"] == "COMPLETED", run["state"]
            assert run["parameters"]["workspace"]["resource"]["instanceType"] == "local"
            page.goto(f"{ui}/runs/flow-run/{run['id']}")
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        endpoint = records.load(name).endpoint
        assert httpx.get(f"{endpoint}/health", timeout=10).status_code == 200
    finally:
        if records.load(name):
            teardown.delete_workspace(name)


def test_a_malformed_workspace_is_refused_by_the_form_with_a_readable_error(stack, page, tmp_path):
    from playwright.sync_api import expect

    api, ui, name = stack["api"], stack["api"][: -len("/api")], "tiny-ui-bad"
    dep_id = deployment(api, "workspace/workspace")["id"]
    bad = unnamed(tiny_workspace(name))
    bad["resource"]["count"] = 0
    with screenshot_on_failure(page, tmp_path, "malformed"):
        open_custom_run(page, ui, dep_id, bad)
        type_name(page, name)
        page.get_by_role("button", name="Submit").click()
        error = page.get_by_text("'count': 0").filter(has_text="is not valid under any of the given schemas")
        expect(error).to_be_visible()
        # shown under the Resource field, and the page stays on the form
        resource = page.get_by_text("The GPU nodes the workspace needs.").locator(
            "xpath=ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]")
        expect(resource).to_contain_text("is not valid under any of the given schemas")
        assert page.url.startswith(f"{ui}/deployments/deployment/{dep_id}/run")
    assert runs_named(api, dep_id, name) == []

