"""Session-wide test settings: offline, isolated state, one tiny model per run.

Every test runs with no hub access (as on the machines CI uses), its own KAIFLOW_HOME and
Hugging Face caches under a temporary folder, and usage statistics off.

Hooks that keep the suite honest:

- strict mode (``KAIFLOW_TESTS_STRICT=1``, what ``make test`` and CI set): a test that skips fails,
  with the skip's reason — a missing package, binary or engine is a failure, not a quiet hole.
  Tests marked ``gpu`` (they need CUDA) are *deselected* on a machine without a GPU, in every mode,
  and say so in the summary; they are never skipped.
- every test fails when a fake server it used (the fake Kubernetes API, the fake ARM) recorded an
  exception inside itself (a controller, a hook, a request handler): ``tests/support/fake_errors.py``.
- the summary counts the tests marked ``fake``: they check the fakes themselves, not kaiflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support import fake_errors

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="kaiflow-tests-"))
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HOME": str(_SESSION_TMP / "hf"),
    "HF_DATASETS_CACHE": str(_SESSION_TMP / "hf-datasets"),
    "VLLM_CACHE_ROOT": str(_SESSION_TMP / "vllm-cache"),
    "KAIFLOW_HOME": str(_SESSION_TMP / "kaiflow-home"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the session's Prefect server runs on SQLite, which answers 500 "database is locked" now and then
    # under a loaded 2-core machine; Prefect's client retries those like 502/503 (its own setting)
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
}.items():
    os.environ[key] = value
os.environ.pop("KAIFLOW_ALLOW_PRIVATE_URLS", None)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The `tiny-phi-3` model directory (random weights, tokenizer trained on the spot)."""
    from presets import tiny

    return tiny.ensure()


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect server (SQLite under the session's KAIFLOW_HOME) for every in-process flow test.

    Sets ``PREFECT_API_URL`` for this process (and children) and returns it; stopped at session end.
    Prefect reads its settings at import, so the fixture also overrides them in Prefect's settings
    context for the session.
    """
    from flows import prefect_server

    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "prefect-results")
    api = prefect_server.ensure()
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    # prefect reads its settings once at import: override them in its own settings context too
    with temporary_settings(updates={PREFECT_API_URL: api,
                                     PREFECT_RESULTS_LOCAL_STORAGE_PATH: os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]}):
        yield api
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # send queued run logs before the server goes away
    prefect_server.stop()
    os.environ.pop("PREFECT_API_URL", None)


STRICT = os.environ.get("KAIFLOW_TESTS_STRICT") == "1"
_GPU_DESELECTED = pytest.StashKey[int]()  # how many gpu tests were deselected
_FAKE_ONLY = pytest.StashKey[int]()  # how many collected tests carry the fake marker


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``gpu`` tests where there is no CUDA (deselected, not skipped: strict mode stays strict).
    Tests that need kaiflow's container image run last, and its build starts now in the background,
    so on a fresh machine (minutes: debootstrap, buildah) it overlaps the rest of the session."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _has_cuda():
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.stash[_GPU_DESELECTED] = len(gpu)
    needs_image = [item for item in items if "kaiflow_image" in getattr(item, "fixturenames", ())]
    if needs_image and not config.option.collectonly:
        from tests.containers import images

        items[:] = [item for item in items if item not in needs_image] + needs_image
        images.start_background_build(_SESSION_TMP / "image-build")


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.containers import images

    images.stop_background_build()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_FAKE_ONLY] = sum(1 for item in session.items if item.get_closest_marker("fake"))


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Strict mode: a skip (in set-up, the test or tear-down) is a failure that gives the skip's reason."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under KAIFLOW_TESTS_STRICT=1, which allows no skips: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Strict mode: a module that skips itself at import (``importorskip`` at the top) fails too."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under KAIFLOW_TESTS_STRICT=1, which allows no skips: {_skip_reason(report.longrepr)}"


@pytest.fixture(autouse=True)
def _fakes_recorded_no_internal_errors() -> Iterator[None]:
    """Fail the test when a fake server recorded an exception inside itself while it ran."""
    before = fake_errors.snapshot()
    yield
    found = fake_errors.new_since(before)
    if found:
        pytest.fail("a fake server failed inside itself during this test (a bug in the fake, or in a hook the test "
                    "gave it):\n" + "\n".join(found), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    fake_only = config.stash.get(_FAKE_ONLY, 0)
    if fake_only:
        terminalreporter.write_line(f"{fake_only} of the tests collected check only the fakes (marker 'fake'); "
                                    "the others check kaiflow")
    gpu = config.stash.get(_GPU_DESELECTED, 0)
    if gpu:
        terminalreporter.write_line(f"{gpu} test(s) marked 'gpu' deselected: this machine has no CUDA")
