"""What a workspace's plan hands the inference server: the ConfigMap's max-model-len read for sizing,
and on one machine the plan's vLLM arguments under the user's own (``plan.serving_config_text``)."""

from __future__ import annotations

import pytest
import yaml

from workspace import plan as plan_mod
from workspace import spec
from workspace.errors import SpecError


def _ws(instance: str, config: str | None = None, count: int | None = None) -> spec.Workspace:
    doc = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"instanceType": instance, **({"count": count} if count else {})},
           "inference": {"preset": {"name": "phi-4-mini-instruct"}, **({"config": config} if config else {})}}
    return spec.Workspace.model_validate(doc)


def _maps(text: str) -> dict[str, dict[str, str]]:
    return {"cfg": {"inference_config.yaml": text}}


@pytest.mark.parametrize("text, expected", [
    ("vllm:\n  max-model-len: 8192\n", 8192),
    ("vllm:\n  max_model_len: 8192\n", 8192),
    ("vllm:\n  max-model-len: auto\n", None),
    ("vllm:\n  gpu-memory-utilization: 0.9\n", None),
    ("max_probe_steps: 6\n", None),
])
def test_configured_context(text, expected):
    assert plan_mod.configured_context(_ws("Standard_NV36ads_A10_v5", "cfg"), _maps(text)) == expected


def test_configured_context_that_is_not_a_number_is_a_spec_error():
    with pytest.raises(SpecError, match="max-model-len 'lots'"):
        plan_mod.configured_context(_ws("Standard_NV36ads_A10_v5", "cfg"), _maps("vllm:\n  max-model-len: lots\n"))


def test_plan_sizes_for_the_configmaps_context_and_shows_it():
    ws = _ws("Standard_NV36ads_A10_v5", "cfg")
    p = plan_mod.plan_workspace(ws, "kubernetes", config_maps=_maps("vllm:\n  max-model-len: 65536\n"))
    (part,) = p.parts
    assert part.details["context_sized"] == 65536 and part.details["vllm_args"]["max-model-len"] == 65536
    assert "max-model-len=65536 (the inference ConfigMap's)" in part.summary
    assert "KV for 65,536 tokens" in part.arithmetic[0]
    auto = plan_mod.plan_workspace(ws, "kubernetes").parts[0]
    assert auto.details["vllm_args"]["max-model-len"] == "auto" and "vLLM picks at start-up" in auto.summary


def test_plan_notes_a_size_kaito_dropped_once_and_a_changed_count():
    p = plan_mod.plan_workspace(_ws("Standard_NC6s_v3", count=2), "kubernetes")
    (part,) = p.parts
    assert any("Kaito v0.12 no longer supports this size" in n for n in part.notes)
    assert p.adjustments() == [n for n in part.notes if n.startswith("resource.count 2 lowered to 1")]


def test_serving_config_text_puts_the_plan_under_the_users_keys():
    ws = _ws("Standard_NC96ads_A100_v4", "cfg")
    user = "max_probe_steps: 6\nvllm:\n  max_model_len: 4096\n"
    p = plan_mod.plan_workspace(ws, "local", config_maps=_maps(user))
    merged = yaml.safe_load(plan_mod.serving_config_text(p, user))
    assert merged["max_probe_steps"] == 6
    assert merged["vllm"] == {"max_model_len": 4096, "dtype": "bfloat16", "gpu-memory-utilization": 0.84,
                              "tensor-parallel-size": 1, "data-parallel-size": 4}
    alone = yaml.safe_load(plan_mod.serving_config_text(plan_mod.plan_workspace(_ws("Standard_NC96ads_A100_v4"), "local"), None))
    assert alone["vllm"]["max-model-len"] == "auto"


def test_serving_config_text_on_a_cpu_host_is_the_users_file():
    ws = spec.Workspace.model_validate({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "t"},
                                        "resource": {"instanceType": "local"},
                                        "inference": {"preset": {"name": "tiny-phi-3"}}})
    p = plan_mod.plan_workspace(ws, "local", on_host=True)
    if p.parts[0].details.get("device") != "cpu":
        pytest.skip("this machine has a GPU")
    assert plan_mod.serving_config_text(p, None) is None
    assert plan_mod.serving_config_text(p, "vllm:\n  dtype: float32\n") == "vllm:\n  dtype: float32\n"
