"""Sizing numbers, checked by hand (the arithmetic is in presets/sizing.py's docstring)."""

from __future__ import annotations

import pytest

import presets
from presets import sizing


def plan(model, sku, count=None):
    return sizing.plan_inference(presets.get_model(model), presets.get_sku(sku), count)


def test_phi3_mini_on_v100():
    # W = 7.64e9 / 2**30 = 7.115 GiB; usable = 16*0.9 - 1.5 = 12.9; KV room = 5.785 GiB
    # kv/token = 2*32*32*96*2 = 393216 B -> 15796 tokens >= 4096 context
    p = plan("phi-3-mini-4k-instruct", "Standard_NC6s_v3")
    assert p.fits and p.nodes == 1 and p.tensor_parallel_size == 1
    assert p.weights_gib == pytest.approx(7.12, abs=0.01)
    assert p.kv_cache_gib == pytest.approx(5.78, abs=0.01)
    assert p.kv_bytes_per_token == 393216
    assert p.max_model_len == 4096
    assert p.dtype == "float16"  # V100: compute capability 7.0, no bf16
    assert p.disk_gib == 39  # ceil(7.115*1.2 + 30)


def test_llama31_8b_on_a100_gets_full_context():
    # W = 14.957 GiB; usable = 80*0.9-1.5 = 70.5; room 55.54 GiB; kv/token = 2*32*8*128*2 = 131072 B
    p = plan("llama-3.1-8b-instruct", "Standard_NC24ads_A100_v4")
    assert p.fits and p.max_model_len == 131072 and p.dtype == "bfloat16"
    assert p.kv_cache_gib == pytest.approx(55.54, abs=0.01)


def test_qwen32b_on_a10_needs_four_nodes():
    # W = 61.0 GiB; per GPU 24*0.9-1.5 = 20.1; n*20.1 - 61.0 >= 2048 tokens * 262144 B (0.5 GiB) -> n = 4
    p = plan("qwen2.5-coder-32b-instruct", "Standard_NV36ads_A10_v5")
    assert p.fits and p.nodes == 4 and p.pipeline_parallel_size == 4
    assert p.max_model_len == 32768  # room 19.4 GiB -> 79k tokens, capped at the context length
    capped = plan("qwen2.5-coder-32b-instruct", "Standard_NV36ads_A10_v5", count=1)
    assert not capped.fits
    assert "needs 4 nodes" in capped.reason and "resource.count is 1" in capped.reason


def test_llama70b_context_is_limited_by_kv_room():
    # 2 x A100 80: room = 2*70.5 - 131.41 = 9.59 GiB; kv/token 327680 B -> 31,436 tokens -> 31232 (x256)
    p = plan("llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4", count=2)
    assert p.fits and p.tensor_parallel_size == 2 and p.nodes == 2
    assert p.max_model_len == 31232


def test_qlora_phi3_mini_on_v100():
    t = sizing.plan_tuning(presets.get_model("phi-3-mini-4k-instruct"), presets.get_sku("Standard_NC6s_v3"), "qlora")
    # weights 3.82e9*0.516 + 2*32064*3072*2 = 2.203 GiB; trainable 8*2*3072*4*32*2 = 12,582,912
    # optimizer 0.1875 GiB; activations (1024*3072*2*48 + 1024*32064*4) B = 0.404 GiB; + 1.5 overhead
    assert t.fits and t.compute_dtype == "float16"
    assert t.trainable_params == 12_582_912
    assert t.weights_gib == pytest.approx(2.20, abs=0.01)
    assert t.total_gib == pytest.approx(4.29, abs=0.01)


def test_lora_phi3_medium_does_not_fit_v100_and_names_what_does():
    model = presets.get_model("phi-3-medium-4k-instruct")
    t = sizing.plan_tuning(model, presets.get_sku("Standard_NC6s_v3"), "lora")
    assert not t.fits and "needs about" in t.reason and "16 GiB (V100)" in t.reason
    fits = sizing.fitting_skus(model, tuning_method="lora", cloud="azure")
    assert fits and all(presets.get_sku(s).gpu_memory_gib >= 32 for s in fits)


def test_qlora_on_ampere_computes_in_bf16():
    t = sizing.plan_tuning(presets.get_model("phi-3-mini-4k-instruct"), presets.get_sku("Standard_NC24ads_A100_v4"), "qlora")
    assert t.compute_dtype == "bfloat16"


def test_unknown_names_suggest_close_ones():
    with pytest.raises(presets.UnknownPreset, match="did you mean phi-3-mini-4k-instruct"):
        presets.get_model("phi3-mini-4k-instruct")
    with pytest.raises(presets.UnknownSku, match="Standard_NC6s_v3"):
        presets.get_sku("Standard_NC6_v3")


def test_catalog_covers_kaito_presets():
    names = set(presets.model_names())
    for required in ["phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct", "phi-3-medium-4k-instruct",
                     "phi-3-medium-128k-instruct", "phi-3.5-mini-instruct", "phi-4", "phi-4-mini-instruct",
                     "llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "mistral-7b", "mistral-7b-instruct",
                     "qwen2.5-coder-7b-instruct", "qwen2.5-coder-32b-instruct", "falcon-7b", "falcon-7b-instruct",
                     "falcon-40b", "falcon-40b-instruct", "deepseek-r1-distill-llama-8b",
                     "deepseek-r1-distill-qwen-14b", "gemma-3-4b-instruct", "gemma-3-27b-instruct",
                     "gpt-oss-20b", "gpt-oss-120b", "tiny-phi-3"]:
        assert required in names
    for m in presets.models():
        assert m.hf_id and m.revision and m.weights_gb > 0 and m.context_length > 0
    assert presets.get_model("llama-3.1-8b-instruct").gated
    assert presets.get_sku("Standard_NC6s_v3").gpu_model == "V100"
