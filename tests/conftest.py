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
