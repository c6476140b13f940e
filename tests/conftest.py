"""Session-wide test settings: offline, isolated state, one tiny model per run.

Every test runs with no hub access (as on the machines CI uses), its own KAIFLOW_HOME and
Hugging Face caches under a temporary folder, and usage statistics off.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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
