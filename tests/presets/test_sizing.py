"""Sizing numbers, checked by hand (the arithmetic is in presets/sizing.py's docstring)."""

from __future__ import annotations

import pytest

import presets
from presets import sizing


def plan(model, sku, count=None, **kw):
    return sizing.plan_inference(presets.get_model(model), presets.get_sku(sku), count, **kw)


def test_phi3_mini_on_v100_the_seed_still_fits():
    # W = 7.12 * 1.02 = 7.2624 GiB; usable 16 * 0.84 = 13.44; reserve 2.3 + 2048 * 393216 B = 3.05
    # room (13.44 - 3.05) / 1.05 = 9.895 -> floor(7.2624 / 9.895) + 1 = 1 GPU
    p = plan("phi-3-mini-4k-instruct", "Standard_NC6s_v3")
    assert p.fits and p.nodes == 1 and (p.tensor_parallel_size, p.pipeline_parallel_size, p.data_parallel_size) == (1, 1, 1)
    assert p.weights_gib == pytest.approx(7.26, abs=0.01)
    assert p.usable_per_gpu_gib == pytest.approx(13.44) and p.reserve_per_gpu_gib == pytest.approx(3.05)
    assert p.room_per_gpu_gib == pytest.approx(9.9, abs=0.01)
    assert p.kv_bytes_per_token == 393216
    assert p.max_model_len == "auto" and p.context_low == p.context_high == 4096  # the model's limit
    assert p.dtype == "float16"  # V100: compute capability 7.0, no bf16
    assert p.disk_gib == 39  # ceil(7.12*1.2 + 30)
    assert p.vllm_args() == {"max-model-len": "auto", "dtype": "float16", "gpu-memory-utilization": 0.84,
                             "tensor-parallel-size": 1}


def test_llama31_8b_on_a10_gets_a_context_range_not_a_pinned_figure():
    # the example: a pinned 41,984 was over what vLLM could hold. A10: vLLM runs at 0.82.
    # usable 19.68; W = 15.259; left = 19.68 - 15.259 - (2.3 + 0.763) = 1.358 GiB -> 11,123 tokens (low end);
    # with only 0.6 GiB of non-torch overhead: 3.821 GiB -> 31,299 tokens (high end)
    p = plan("llama-3.1-8b-instruct", "Standard_NV36ads_A10_v5")
    assert p.fits and p.nodes == 1 and p.gpu_memory_utilization == 0.82
    assert p.max_model_len == "auto"
    assert (p.context_low, p.context_high) == (11123, 31299)
    assert "expected 11,123-31,299 tokens" in p.context()


def test_user_max_model_len_is_sized_for_and_passed_on():
    # llama-3.3-70b on NC48ads (2 x A100 80): with 16384 tokens the KV reserve is 2.3 + 16384 * 327680 B / 2
    p = plan("llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4", context=16384)
    assert p.reserve_per_gpu_gib == pytest.approx(4.8, abs=0.01)
    assert p.max_model_len == 16384 and p.vllm_args()["max-model-len"] == 16384
    assert p.nodes == 2
    # a context so long that its KV cache takes more GPUs: 131072 tokens -> 2.3 + 20 GiB reserve per GPU
    long = plan("llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4", context=131072)
    assert long.reserve_per_gpu_gib == pytest.approx(22.3, abs=0.01) and long.nodes == 2 and long.min_gpus == 4
    too_long = plan("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", context=8192)
    assert not too_long.fits and "longer than phi-3-mini-4k-instruct's context (4,096 tokens)" in too_long.reason


def test_count_is_raised_or_lowered_to_the_models_need_and_said():
    up = plan("qwen2.5-coder-32b-instruct", "Standard_NV36ads_A10_v5", count=1)
    # W = 62.25 GiB; room (19.68 - 2.3 - 0.5) / 1.05 = 16.08 -> 4 GPUs -> 4 nodes, one pipeline stage each
    assert up.fits and up.nodes == 4 and up.pipeline_parallel_size == 4 and up.tensor_parallel_size == 1
    assert any(n.startswith("resource.count 1 raised to 4") for n in up.notes)
    down = plan("phi-3-mini-4k-instruct", "Standard_NC6s_v3", count=3)
    assert down.fits and down.nodes == 1
    assert any(n.startswith("resource.count 3 lowered to 1") for n in down.notes)
    same = plan("phi-3-mini-4k-instruct", "Standard_NC6s_v3", count=1)
    assert not any("resource.count" in n for n in same.notes)


def test_every_gpu_of_a_node_is_used():
    small = plan("phi-4-mini-instruct", "Standard_NC96ads_A100_v4")  # 7.15 GiB < 40: a replica per GPU
    assert (small.tensor_parallel_size, small.pipeline_parallel_size, small.data_parallel_size) == (1, 1, 4)
    assert small.vllm_args()["data-parallel-size"] == 4
    big = plan("qwen2.5-coder-32b-instruct", "Standard_NC96ads_A100_v4")  # 61 GiB: split over the 4 GPUs
    assert (big.tensor_parallel_size, big.pipeline_parallel_size, big.data_parallel_size) == (4, 1, 1)
    for p in (small, big):
        assert p.tensor_parallel_size * p.pipeline_parallel_size * p.data_parallel_size == p.gpus_per_node * p.nodes


def test_tensor_parallel_that_vllm_would_refuse_becomes_pipeline_stages():
    # falcon-7b has 71 attention heads: tensor-parallel 2 would fail at vLLM's start-up
    p = plan("falcon-7b", "Standard_NV72ads_A10_v5")
    assert p.fits and (p.tensor_parallel_size, p.pipeline_parallel_size) == (1, 2)
    assert any("must divide the 71 attention heads" in n for n in p.notes)


def test_quantized_checkpoints_are_sized_by_what_vllm_loads_and_refused_where_it_cannot_run_them():
    oss = plan("gpt-oss-120b", "Standard_NC24ads_A100_v4")
    # 60.77 GiB of MXFP4 weights (Kaito's catalog counts the repo's second copy, 121.54): W = 61.99 GiB,
    # room (67.2 - 2.3 - 0.14) / 1.05 = 61.67 -> 2 GPUs: one A100 would be over its budget (Kaito's e2e OOM)
    assert oss.fits and oss.nodes == 2 and oss.dtype == "auto"
    assert presets.get_model("gpt-oss-120b").kaito_weights_gib == pytest.approx(2 * 60.77)
    fp8 = plan("ministral-3-3b-instruct", "Standard_NC6s_v3")
    assert not fp8.fits and "FP8 checkpoint" in fp8.reason and "compute capability 8.0" in fp8.reason
    assert plan("ministral-3-3b-instruct", "Standard_NV36ads_A10_v5").fits


def test_transformers_runtime_cannot_run_across_nodes():
    one = plan("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", runtime="transformers")
    assert one.fits and one.nodes == 1 and one.runtime == "transformers"
    two = plan("llama-3.3-70b-instruct", "Standard_NC24ads_A100_v4", runtime="transformers")
    assert not two.fits and "cannot run across nodes" in two.reason
    assert not plan("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", runtime="sglang").fits


def test_plan_shows_its_arithmetic():
    lines = plan("qwen2.5-coder-32b-instruct", "Standard_NC24ads_A100_v4").arithmetic()
    assert "weights 62.25 GiB (x1.02)" in lines[0] and "usable 67.20 GiB (x0.84)" in lines[0]
    assert "floor(62.25 / 61.33) + 1 = 2 GPU(s) -> 2 node(s) of 1 GPU(s)" in lines[1]


def test_kaito_sku_names_and_sizes_kaito_dropped():
    assert presets.get_sku("Standard_ND96asr_A100_v4").gpu_count == 8
    assert presets.get_sku("Standard_ND96asr_A100_v4").gpu_memory_gib == 40
    assert "Standard_ND96asr_A100_v4" in presets.get_sku("Standard_ND96asr_v4").kaito
    assert "no longer supports" in presets.get_sku("Standard_NC6s_v3").kaito
    assert not presets.get_sku("Standard_NC24ads_A100_v4").kaito


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
        assert m.hf_id and m.revision and m.weights_gib > 0 and m.context_length > 0
    assert presets.get_model("llama-3.1-8b-instruct").gated
    assert presets.get_sku("Standard_NC6s_v3").gpu_model == "V100"
