"""Engine choice: `auto` falls back to transformers where vLLM cannot serve the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving import engines, errors
from serving.engines import hf


def test_transformers_engine_is_chosen_by_name(tiny_model: Path) -> None:
    assert isinstance(engines.select("transformers", str(tiny_model)), hf.TransformersEngine)
    with pytest.raises(errors.ConfigError, match="auto, vllm or transformers"):
        engines.select("tensorrt", str(tiny_model))


@pytest.mark.vllm
@pytest.mark.slow
def test_auto_explains_why_vllm_cannot_serve_a_model(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    assert engines.vllm_unsupported_reason(str(tiny_model)) is None
    config = json.loads((tiny_model / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    assert "NoSuchForCausalLM" in engines.vllm_unsupported_reason(str(tmp_path))
    assert isinstance(engines.select("auto", str(tmp_path)), hf.TransformersEngine)


def test_server_imports_neither_prefect_nor_kubernetes_nor_heavy_engines_at_start() -> None:
    code = ("import sys, serving.app, serving.cli, serving.engines; "
            "bad = [m for m in ('prefect', 'kubernetes', 'vllm', 'torch') if m in sys.modules]; "
            "print(bad); raise SystemExit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
