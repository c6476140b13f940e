"""The server's engine arguments in layers: kaiflow's plan first, the user's inference ConfigMap
last (``--config`` repeated; a later file's keys win), and ``max-model-len: auto`` handed to vLLM
as its own command line would (-1: fit the memory at start-up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import config


def test_later_config_files_override_earlier_ones(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("vllm:\n  max-model-len: auto\n  tensor-parallel-size: 2\n  gpu-memory-utilization: 0.84\n")
    user = tmp_path / "user.yaml"
    user.write_text("max_probe_steps: 6\nvllm:\n  max-model-len: 4096\n")
    cfg = config.from_args(["--model", str(tmp_path), "--port", "1", "--config", str(plan), "--config", str(user)])
    assert cfg.vllm_args == {"max-model-len": 4096, "tensor-parallel-size": 2, "gpu-memory-utilization": 0.84}
    one = config.from_args(["--model", str(tmp_path), "--port", "1", "--config", str(plan)])
    assert one.vllm_args["max-model-len"] == "auto"


@pytest.mark.vllm
def test_max_model_len_auto_reaches_vllm_as_its_command_line_makes_it() -> None:
    pytest.importorskip("vllm")
    from vllm.utils.argparse_utils import human_readable_int_or_auto

    from serving.engines import vllm_engine

    engine = vllm_engine.VllmEngine("some/model", {"max-model-len": "auto", "tensor-parallel-size": 1}, enable_lora=False)
    assert engine._kwargs["max_model_len"] == human_readable_int_or_auto("auto") == -1
    assert vllm_engine.VllmEngine("m", {"max_model_len": 4096}, enable_lora=False)._kwargs["max_model_len"] == 4096
