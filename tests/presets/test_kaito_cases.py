"""Kaito v0.12's own sizing cases, ported: node count and layout as Kaito decides them.

Each test id names its source in kaito-project/kaito at v0.12.0:

- ``estimator_test.go``: ``pkg/workspace/estimator/nodesestimator/estimator_test.go``
- ``preset_inferences_test.go``: ``pkg/workspace/inference/preset_inferences_test.go``
- ``interface_test.go``: ``pkg/model/interface_test.go``
- ``preset_vllm_test.go``: ``test/e2e/preset_vllm_test.go``
- ``memory-estimator.md``: ``website/docs/memory-estimator.md``

Kaito's test models (``pkg/utils/test/test_model.go``) are rebuilt here with their numbers
(safetensors size, bytes per token); catalog models are kaiflow's presets. Where kaiflow decides
differently on purpose, the case says so and asserts kaiflow's answer (README, "Sizing", lists
each difference with its evidence).
"""

from __future__ import annotations

import dataclasses

import pytest

import presets
from infra.kube import manifests
from presets import sizing
from workspace import plan as plan_mod
from workspace import spec

BASE = presets.get_model("phi-3-mini-4k-instruct")


def kaito_test_model(name: str, weights_gib: float, bytes_per_token: int = 0) -> presets.ModelPreset:
    """One of Kaito's test models: ``bytes_per_token`` = 2 x layers x kv_heads x head_dim x 2."""
    layers, kv_heads, head_dim = {0: (0, 1, 1), 8192: (32, 1, 64), 163840: (40, 8, 128)}[bytes_per_token]
    return dataclasses.replace(BASE, name=name, weights_gib=weights_gib, num_layers=layers, num_kv_heads=kv_heads,
                               head_dim=head_dim, num_attention_heads=64, context_length=131072)


TEST_MODEL = kaito_test_model("test-model", 8)  # 8Gi, BytesPerToken 0
DOWNLOAD_MODEL = kaito_test_model("test-model-download", 64)
FALCON = kaito_test_model("test-falcon-7b", 13.44, 8192)
QWEN32 = kaito_test_model("test-qwen2.5-coder-32b-instruct", 62.5, 163840)


def sku(name: str) -> presets.Sku:
    return presets.get_sku(name)


def gpu_config(gpus: int, total_gib: float, model: str = "A100") -> presets.Sku:
    """Kaito's ``sku.GPUConfig{GPUMem: total, GPUCount: n}`` of interface_test.go / a MIG slice."""
    return presets.Sku("test", "azure", gpus, model, total_gib / gpus, "8.0", 1, 1)


def kaito(case: str):
    """Names the Kaito test or doc section a single case ports, in its pytest id."""
    return pytest.mark.parametrize("kaito_case", [case], ids=[case])


def layout(p: sizing.InferencePlan) -> tuple[int, int, int]:
    return p.tensor_parallel_size, p.pipeline_parallel_size, p.data_parallel_size


# ----------------------------------------------------------------------------- estimator_test.go
@pytest.mark.parametrize("model, instance, count, nodes", [
    pytest.param(TEST_MODEL, "Standard_NC96ads_A100_v4", 4, 1,
                 id="estimator_test.go:EstimateNodeCount/Should optimize node count with valid instance type when NAP enabled"),
    pytest.param(TEST_MODEL, "Standard_NV36ads_A10_v5", 1, 1,
                 id="estimator_test.go:EstimateNodeCount/Should respect user node count when already optimal"),
    pytest.param(TEST_MODEL, "Standard_NV36ads_A10_v5", None, 1,
                 id="estimator_test.go:EstimateNodeCount/Should handle workspace with nil resource count"),
    pytest.param(FALCON, "Standard_NV36ads_A10_v5", 3, 1,
                 id="estimator_test.go:Falcon7B/Should optimize falcon-7b with A10 GPU - single node sufficient"),
    pytest.param(FALCON, "Standard_NV36ads_A10_v5", 1, 1,
                 id="estimator_test.go:Falcon7B/Should respect user choice for falcon-7b when user requests 1 node"),
    pytest.param(FALCON, "Standard_NC24ads_A100_v4", 4, 1,
                 id="estimator_test.go:Falcon7B/Should optimize falcon-7b with A100 GPU - single node more than sufficient"),
    pytest.param(QWEN32, "Standard_NC24ads_A100_v4", 3, 2,
                 id="estimator_test.go:Qwen25Coder32B/Should optimize qwen2.5-coder-32b with A100 GPU - two nodes sufficient"),
    pytest.param(presets.get_model("falcon-7b"), "Standard_NV36ads_A10_v5", 3, 1,
                 id="estimator_test.go:Falcon7B/same case with kaiflow's falcon-7b preset"),
    pytest.param(presets.get_model("qwen2.5-coder-32b-instruct"), "Standard_NC24ads_A100_v4", 3, 2,
                 id="estimator_test.go:Qwen25Coder32B/same case with kaiflow's qwen2.5-coder-32b-instruct preset"),
])
def test_estimator_node_count(model, instance, count, nodes):
    p = sizing.plan_inference(model, sku(instance), count)
    assert p.fits and p.nodes == nodes
    if count is not None and count != nodes:
        assert any(n.startswith(f"resource.count {count} ") for n in p.notes)


@kaito("estimator_test.go:EstimateNodeCount/Should return error for invalid instance type when NAP enabled")
def test_estimator_invalid_instance_type(kaito_case):
    """estimator_test.go:EstimateNodeCount/Should return error for invalid instance type when NAP enabled"""
    with pytest.raises(presets.UnknownSku, match="unknown instance type 'Invalid_Instance_Type'"):
        presets.get_sku("Invalid_Instance_Type")


def _workspace(body: str) -> spec.Workspace:
    import yaml

    return spec.Workspace.model_validate(yaml.safe_load(body))


@pytest.mark.parametrize("resource, part, nodes", [
    pytest.param("count: 3\n  instanceType: Standard_NV36ads_A10_v5", "tuning", 3,
                 id="estimator_test.go:EstimateNodeCount/Should return resource count when inference is nil"),
    pytest.param("instanceType: Standard_NV36ads_A10_v5", "tuning", 1,
                 id="estimator_test.go:EstimateNodeCount/Should return 1 when inference is nil and count is nil"),
    pytest.param("count: 2\n  instanceType: Standard_NV36ads_A10_v5", "template", 2,
                 id="estimator_test.go:EstimateNodeCount/Should return resource count when preset is nil"),
    pytest.param("labelSelector:\n    matchLabels: {apps: byo}", "inference", 1,
                 id="estimator_test.go:BYO/Should use GPU config from ready nodes (NAP disabled)"),
])
def test_estimator_without_a_sized_preset_keeps_the_count(resource, part, nodes):
    body = {
        "tuning": ("tuning:\n  preset:\n    name: phi-3-mini-4k-instruct\n  method: qlora\n  input:\n"
                   "    urls: ['https://example.com/d.jsonl']\n  output:\n    image: 'example.com/a:1'\n"),
        "template": "inference:\n  template:\n    spec:\n      containers: [{name: c, image: 'example.com/i:1'}]\n",
        "inference": "inference:\n  preset:\n    name: phi-3-mini-4k-instruct\n",
    }[part]
    ws = _workspace(f"apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata:\n  name: w\nresource:\n  {resource}\n{body}")
    assert manifests.node_count(ws, plan_mod.plan_workspace(ws, "kubernetes")) == nodes


@pytest.mark.parametrize("slice_gib, fits_one", [
    pytest.param(24, True, id="estimator_test.go:MIG/Model fits in a large MIG slice (2g.24gb)"),
    pytest.param(47, True, id="estimator_test.go:MIG/Model fits in a 3g.47gb slice"),
    pytest.param(10, False, id="estimator_test.go:MIG/Model does not fit in a small MIG slice (1g.10gb)"),
])
def test_estimator_mig_slice_arithmetic(slice_gib, fits_one):
    """kaiflow has no MIG partitions; the arithmetic of a one-GPU slice is the same: does the model need
    more than the one GPU (Kaito then refuses: a slice cannot be sharded)."""
    p = sizing.plan_inference(TEST_MODEL, gpu_config(1, slice_gib))
    assert (p.min_gpus == 1) is fits_one


@kaito("estimator_test.go:MIG_ContextSize")
def test_estimator_mig_context_size(kaito_case):
    """estimator_test.go:MIG_ContextSize: BytesPerToken 0, so 131072 tokens reserve nothing more (1g.24gb)"""
    p = sizing.plan_inference(TEST_MODEL, gpu_config(1, 24), context=131072)
    assert p.fits and p.min_gpus == 1 and p.nodes == 1 and p.max_model_len == 131072


# ----------------------------------------------------------------------------- preset_inferences_test.go
@pytest.mark.parametrize("model, instance, count, nodes, expected", [
    pytest.param(TEST_MODEL, "Standard_NC24ads_A100_v4", 1, 1,
                 {"gpu-memory-utilization": 0.84, "max-model-len": "auto", "tensor-parallel-size": 1},
                 id="preset_inferences_test.go:GeneratePresetInference/test-model/vllm"),
    pytest.param(kaito_test_model("test-no-tensor-parallel-model", 8), "Standard_NC24ads_A100_v4", 1, 1,
                 {"gpu-memory-utilization": 0.84, "max-model-len": "auto", "tensor-parallel-size": 1},
                 id="preset_inferences_test.go:GeneratePresetInference/test-model-no-parallel/vllm"),
    pytest.param(kaito_test_model("test-model-download-a100", 64), "Standard_NC48ads_A100_v4", 1, 1,
                 {"gpu-memory-utilization": 0.84, "max-model-len": "auto", "tensor-parallel-size": 2},
                 id="preset_inferences_test.go:GeneratePresetInference/test-model-download-a100/vllm"),
    pytest.param(DOWNLOAD_MODEL, "Standard_NV36ads_A10_v5", 2, 4,
                 {"gpu-memory-utilization": 0.82, "max-model-len": "auto", "tensor-parallel-size": 1,
                  "pipeline-parallel-size": 4},
                 id="preset_inferences_test.go:GeneratePresetInference/test-model-download-distributed/vllm"),
    pytest.param(DOWNLOAD_MODEL, "Standard_NV36ads_A10_v5", 8, 4,
                 {"gpu-memory-utilization": 0.82, "max-model-len": "auto", "tensor-parallel-size": 1,
                  "pipeline-parallel-size": 4},
                 id="preset_inferences_test.go:GeneratePresetInference/test-model-download-distributed/vllm (more nodes than required)"),
])
def test_generate_preset_inference(model, instance, count, nodes, expected):
    p = sizing.plan_inference(model, sku(instance), count)
    assert p.fits and p.nodes == nodes
    args = p.vllm_args()
    assert {k: v for k, v in args.items() if k != "dtype"} == expected


@kaito("preset_inferences_test.go:GeneratePresetInference/test-model/vllm-with-user-config")
def test_generate_preset_inference_with_user_config_puts_the_users_file_last(kaito_case):
    """preset_inferences_test.go:GeneratePresetInference/test-model/vllm-with-user-config: Kaito appends
    --kaito-config-file after its own flags; kaiflow passes the plan's file first and the user's last."""
    ws = _workspace("apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata:\n  name: w\nresource:\n"
                    "  instanceType: Standard_NC24ads_A100_v4\ninference:\n  preset:\n    name: phi-3-mini-4k-instruct\n"
                    "  config: my-inference-config\n")
    user = {"my-inference-config": {"inference_config.yaml": "vllm:\n  max-model-len: 4096\n"}}
    plan = plan_mod.plan_workspace(ws, "kubernetes", config_maps=user)
    pod = manifests.inference_statefulset(ws, plan, "default", "img")["spec"]["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    configs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"]
    assert configs == ["/mnt/plan/inference_config.yaml", "/mnt/config/inference_config.yaml"]
    assert {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {
        "config": "my-inference-config", "plan-config": "w-inference-params"}
    assert plan.parts[0].details["vllm_args"]["max-model-len"] == 4096


@pytest.mark.parametrize("model, nodes", [
    pytest.param(TEST_MODEL, 1, id="preset_inferences_test.go:GeneratePresetInference/test-model/transformers"),
    pytest.param(DOWNLOAD_MODEL, 0, id="preset_inferences_test.go:GeneratePresetInference/test-model-download/transformers"),
])
def test_generate_preset_inference_transformers(model, nodes):
    """Kaito's transformers runtime gets no vLLM flags. test-model-download (64Gi) on NC24ads_A100_v4
    needs 2 GPUs by the estimator; Kaito then runs 2 pods that each load the whole model (transformers
    pods do not split it); kaiflow refuses instead (deliberate difference)."""
    p = sizing.plan_inference(model, sku("Standard_NC24ads_A100_v4"), 1, runtime="transformers")
    if nodes:
        assert p.fits and p.nodes == nodes and layout(p) == (1, 1, 1)
    else:
        assert not p.fits and p.min_gpus == 2 and "cannot run across nodes" in p.reason


# ----------------------------------------------------------------------------- interface_test.go
@pytest.mark.parametrize("weights_gib, gpus, total_gib, expected", [
    pytest.param(8, 4, 160, (1, 1, 4), id="interface_test.go:ModelFitsOnSingleGPU/model size < 50% single GPU memory, use data parallelism"),
    pytest.param(20, 4, 160, (4, 1, 1), id="interface_test.go:ModelFitsOnSingleGPU/model size == 50% single GPU memory, no data parallelism"),
    pytest.param(30, 4, 160, (4, 1, 1), id="interface_test.go:ModelFitsOnSingleGPU/model size > 50% single GPU memory, no data parallelism"),
    pytest.param(8, 1, 80, (1, 1, 1), id="interface_test.go:ModelFitsOnSingleGPU/single GPU, returns false"),
    pytest.param(8, 4, 320, (1, 1, 4), id="interface_test.go:GetInferenceCommandVLLMDataParallelism"),
    pytest.param(64, 4, 320, (4, 1, 1), id="interface_test.go:GetInferenceCommandVLLMTensorParallelismWhenModelLarge"),
])
def test_layout_on_one_node(weights_gib, gpus, total_gib, expected):
    model = kaito_test_model("m", weights_gib)
    assert sizing.layout(model, gpu_config(gpus, total_gib), 1) == expected
    p = sizing.plan_inference(model, gpu_config(gpus, total_gib))
    assert p.nodes == 1 and layout(p) == expected


@pytest.mark.parametrize("weights_gib, nodes, expected", [
    pytest.param(256, 2, (4, 2, 1), id="interface_test.go:GetInferenceCommandVLLMMultiNodePPAndTP"),
    pytest.param(8, 2, (4, 2, 1), id="interface_test.go:GetInferenceCommandVLLMSmallModelOnMultiNodeUsesTP"),
    pytest.param(256, 2, (4, 2, 1), id="interface_test.go:GetInferenceCommandVLLMMultiNode"),
])
def test_layout_across_nodes(weights_gib, nodes, expected):
    model = kaito_test_model("m", weights_gib)
    assert sizing.layout(model, gpu_config(4, 320), nodes) == expected


@kaito("interface_test.go:GetInferenceCommandVLLMMultiNodePPAndTP/sized by the estimator")
def test_multi_node_pp_and_tp_from_the_estimator(kaito_case):
    """interface_test.go:GetInferenceCommandVLLMMultiNodePPAndTP, sized end to end: 256Gi on 4 x A100 80
    -> floor(261.12 / 61.76) + 1 = 5 GPUs -> 2 nodes, tensor-parallel 4 x pipeline-parallel 2."""
    p = sizing.plan_inference(kaito_test_model("m", 256), sku("Standard_NC96ads_A100_v4"))
    assert p.nodes == 2 and layout(p) == (4, 2, 1)


@kaito("interface_test.go:GetInferenceCommandVLLMSingleNode")
def test_single_node_two_gpus_tensor_parallel(kaito_case):
    """interface_test.go:GetInferenceCommandVLLMSingleNode: 2 GPUs, one node -> tensor-parallel-size=2"""
    p = sizing.plan_inference(presets.get_model("qwen2.5-coder-7b-instruct"), sku("Standard_NV72ads_A10_v5"))
    assert p.nodes == 1 and layout(p) == (2, 1, 1)


@pytest.mark.parametrize("instance, utilization", [
    pytest.param("Standard_NV36ads_A10_v5", 0.82, id="interface_test.go:GetInferenceCommandVLLMGpuMemoryUtilization/A10 0.82"),
    pytest.param("Standard_NC24ads_A100_v4", 0.84, id="interface_test.go:GetInferenceCommandVLLMGpuMemoryUtilization/A100 0.84"),
])
def test_gpu_memory_utilization(instance, utilization):
    p = sizing.plan_inference(TEST_MODEL, sku(instance))
    assert p.gpu_memory_utilization == utilization and p.vllm_args()["gpu-memory-utilization"] == utilization


@kaito("interface_test.go:GetInferenceCommandVLLMGpuMemoryUtilization/NVIDIA A10 as nvidia-smi names it")
def test_gpu_memory_utilization_of_a_host_gpu_named_by_nvidia_smi(kaito_case):
    """interface.go keys the A10 override by "NVIDIA A10", the name nvidia-smi gives a local GPU."""
    assert sizing.gpu_memory_utilization(gpu_config(1, 24, "NVIDIA A10")) == 0.82
    assert sizing.gpu_memory_utilization(gpu_config(1, 24, "NVIDIA A10G")) == 0.84


# ----------------------------------------------------------------------------- preset_vllm_test.go (e2e)
@pytest.mark.parametrize("model, instance, count, nodes", [
    pytest.param("llama-3.1-8b-instruct", "Standard_NV36ads_A10_v5", 1, 1,
                 id="preset_vllm_test.go:should create a single-node llama-3.1-8b-instruct workspace"),
    pytest.param("llama-3.1-8b-instruct", "Standard_NV36ads_A10_v5", 2, 1,
                 id="preset_vllm_test.go:should create a multi-node llama-3.1-8b-instruct workspace (Skip'd; the estimator says 1)"),
    pytest.param("phi-4", "Standard_NC24ads_A100_v4", 1, 1, id="preset_vllm_test.go:should create a phi4 workspace with adapter"),
    pytest.param("llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4", 2, 2,
                 id="preset_vllm_test.go:should create a llama-3.3-70b-instruct workspace"),
    pytest.param("llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4", 1, 2,
                 id="preset_vllm_test.go:llama-3.3-70b-instruct with count 1 is raised to 2"),
    pytest.param("gpt-oss-20b", "Standard_NC24ads_A100_v4", 1, 1, id="preset_vllm_test.go:should create a gpt-oss-20b workspace"),
    pytest.param("ministral-3-3b-instruct", "Standard_NV36ads_A10_v5", 1, 1,
                 id="preset_vllm_test.go:should create a ministral-3-3b-instruct-2512 workspace"),
])
def test_e2e_node_counts(model, instance, count, nodes):
    p = sizing.plan_inference(presets.get_model(model), sku(instance), count)
    assert p.fits and p.nodes == nodes


@kaito("preset_vllm_test.go:should create a gpt-oss-120b workspace (Skip'd for OOM)")
def test_e2e_gpt_oss_120b_does_not_go_on_one_a100(kaito_case):
    """preset_vllm_test.go:should create a gpt-oss-120b workspace (Skip'd: "OOM issues ... better support
    for quantized models"): one NC24ads_A100_v4 ran out of memory. Kaito v0.12's estimator now says 3
    nodes, from a catalog size (121.54 GiB) that counts the repo's MXFP4 weights twice; kaiflow sizes
    the 60.77 GiB vLLM loads: 2 nodes (deliberate difference)."""
    model = presets.get_model("gpt-oss-120b")
    p = sizing.plan_inference(model, sku("Standard_NC24ads_A100_v4"), 1)
    assert p.fits and p.nodes == 2
    as_kaito = dataclasses.replace(model, weights_gib=model.kaito_weights_gib)
    assert sizing.plan_inference(as_kaito, sku("Standard_NC24ads_A100_v4"), 1).nodes == 3


# ----------------------------------------------------------------------------- memory-estimator.md
@kaito("memory-estimator.md:Worked Example/Phi-4-mini-instruct on A100")
def test_memory_estimator_phi4_mini_on_a100(kaito_case):
    """memory-estimator.md:Worked Example/Phi-4-mini-instruct on Standard_NC24ads_A100_v4: modelSize 7.29,
    availablePerGPU 67.2, fixedReserve 2.55, memForWeightsPerGPU 61.57 -> 1 node; context 131,072 (clamped)."""
    p = sizing.plan_inference(presets.get_model("phi-4-mini-instruct"), sku("Standard_NC24ads_A100_v4"))
    assert p.weights_gib == pytest.approx(7.29, abs=0.01) and p.usable_per_gpu_gib == pytest.approx(67.2)
    assert p.reserve_per_gpu_gib == pytest.approx(2.55, abs=0.01) and p.room_per_gpu_gib == pytest.approx(61.57, abs=0.01)
    assert p.nodes == 1 and p.context_low == 131072


@kaito("memory-estimator.md:Worked Example/What If We Used a Smaller GPU (A10)")
def test_memory_estimator_phi4_mini_on_a10(kaito_case):
    """memory-estimator.md:What If We Used a Smaller GPU?: at 0.84, 20.16 - 7.29 - 2.66 = 10.21 GiB ->
    ~83,640 tokens. Kaito launches vLLM at 0.82 on A10, so kaiflow's low end uses 0.82 (deliberate
    difference): 19.68 - 7.29 - 2.66 = 9.72 GiB -> 79,645."""
    model, a10 = presets.get_model("phi-4-mini-instruct"), sku("Standard_NV36ads_A10_v5")
    assert sizing.expected_context(model, a10, 1, utilization=0.84) == pytest.approx(83640, rel=0.001)
    p = sizing.plan_inference(model, a10)
    assert p.nodes == 1 and p.context_low == 79645 and p.context_low < p.context_high < model.context_length
