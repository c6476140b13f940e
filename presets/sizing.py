"""Does a model fit an instance type? The arithmetic, written down.

All memory in GiB (2**30 bytes). ``weights_gb`` in the catalog is in GB (10**9), as model cards give it.

Inference (vLLM, one replica spread over ``T`` GPUs, tensor parallel within a node, pipeline
parallel across nodes):

    W        = weights_gb * 10**9 / 2**30                          model weights
    usable   = gpu_memory_gib * U - O        per GPU, U = 0.90 (vLLM --gpu-memory-utilization),
                                             O = 1.5 GiB (CUDA context, activations, graphs)
    kv/token = 2 (K and V) * layers * kv_heads * head_dim * 2 bytes (fp16/bf16 cache)
    fits on T GPUs  iff  T * usable - W >= kv/token * min(context_length, 2048)
    max-model-len   = min(context_length, floor((T * usable - W) / kv/token)), rounded down to 256

``T`` is the smallest power of two (capped at the GPUs of a node, and dividing the attention heads)
that fits; beyond one node, whole nodes are added (pipeline parallel). ``resource.count`` larger
than needed is kept (more nodes); smaller is an error naming the count needed.

Tuning (one node; each GPU holds a full copy: data parallel, as Kaito's tuning Job runs it):

    weights  = params * 0.516 bytes (4-bit NF4 with double-quant constants) for qlora,
               params * 2 bytes (bf16/fp16) for lora; plus embeddings and lm_head kept in 16 bit:
               2 * vocab * hidden * 2 bytes
    trainable= r * (hidden + hidden) * targets * layers * 2   (LoRA A and B; MLP targets are wider)
    state    = trainable * 16 bytes   (16-bit weight and grad, fp32 master and two Adam moments)
    activ    = batch * seq * hidden * 2 bytes * (layers + 16)   (gradient checkpointing keeps one
               input per layer plus one layer's intermediates)
             + batch * seq * vocab * 4 bytes                  (fp32 logits for the loss)
    fits iff weights + state + activ + O <= gpu_memory_gib * 0.95

Compute dtype: bf16 where the GPU's compute capability is >= 8.0 (Ampere and newer), else float16.

Disk per node: ``W * 1.2 + 30`` GiB (weights, a converted copy's slack, the runtime image).

On the local platform with no GPU, the host itself is the "instance type": a preset runs only if its
weights fit in ``CPU_MAX_WEIGHTS_GB`` (real presets need a GPU; tiny-phi-3 runs anywhere).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import presets
from presets import ModelPreset, Sku

GIB = 2**30
GPU_UTILIZATION = 0.90
GPU_OVERHEAD_GIB = 1.5
TUNING_HEADROOM = 0.95
MIN_CONTEXT = 2048
CPU_MAX_WEIGHTS_GB = 2.0
DEFAULT_LORA_R = 8
DEFAULT_BATCH = 1
DEFAULT_SEQ_LEN = 1024


def gib(gb: float) -> float:
    return gb * 1e9 / GIB


def kv_bytes_per_token(model: ModelPreset) -> int:
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * 2


@dataclass
class InferencePlan:
    fits: bool
    nodes: int
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    dtype: str
    weights_gib: float
    kv_cache_gib: float
    kv_bytes_per_token: int
    disk_gib: int
    reason: str = ""

    def vllm_args(self) -> dict[str, object]:
        args: dict[str, object] = {"max-model-len": self.max_model_len, "dtype": self.dtype}
        if self.tensor_parallel_size > 1:
            args["tensor-parallel-size"] = self.tensor_parallel_size
        if self.pipeline_parallel_size > 1:
            args["pipeline-parallel-size"] = self.pipeline_parallel_size
        return args


@dataclass
class TuningPlan:
    fits: bool
    method: str
    compute_dtype: str
    weights_gib: float
    trainable_params: int
    optimizer_gib: float
    activations_gib: float
    total_gib: float
    per_gpu_gib: float
    reason: str = ""


def _usable_per_gpu(sku: Sku) -> float:
    return sku.gpu_memory_gib * GPU_UTILIZATION - GPU_OVERHEAD_GIB


def _serving_dtype(model: ModelPreset, sku: Sku) -> str:
    if model.dtype in ("fp8", "mxfp4"):
        return "auto"
    return "bfloat16" if sku.supports_bf16 else "float16"


def _gpu_counts(sku: Sku, model: ModelPreset):
    """Candidate GPU totals: powers of two within a node (dividing the heads), then whole nodes."""
    t = 1
    while t <= sku.gpu_count:
        if model.num_attention_heads % t == 0 or t == 1:
            yield t, 1, t
        t *= 2
    nodes = 2
    while nodes <= 64:
        yield sku.gpu_count * nodes, nodes, sku.gpu_count
        nodes += 1


def plan_inference(model: ModelPreset, sku: Sku, count: int | None = None) -> InferencePlan:
    """Size ``model`` for serving on ``sku``; ``count`` (``resource.count``) caps the nodes if given."""
    weights = gib(model.weights_gb)
    per_token = kv_bytes_per_token(model)
    need_tokens = min(model.context_length, MIN_CONTEXT)
    dtype = _serving_dtype(model, sku)
    disk = int(math.ceil(weights * 1.2 + 30))
    for total, nodes, tp in _gpu_counts(sku, model):
        kv_room = total * _usable_per_gpu(sku) - weights
        if kv_room * GIB >= per_token * need_tokens:
            if count is not None and count < nodes:
                return InferencePlan(
                    fits=False, nodes=nodes, gpus_per_node=sku.gpu_count, tensor_parallel_size=tp,
                    pipeline_parallel_size=nodes, max_model_len=0, dtype=dtype, weights_gib=round(weights, 2),
                    kv_cache_gib=0.0, kv_bytes_per_token=per_token, disk_gib=disk,
                    reason=(
                        f"{model.name} needs {nodes} nodes of {sku.name} ({weights:.1f} GiB of weights plus KV "
                        f"cache; {sku.gpu_count} x {sku.gpu_memory_gib:g} GiB {sku.gpu_model} per node) but "
                        f"resource.count is {count}: raise resource.count to {nodes} or pick a larger instance type"
                    ),
                )
            nodes_used = max(nodes, count or 1)
            max_len = min(model.context_length, int(kv_room * GIB // per_token))
            if max_len < model.context_length:
                max_len = max(256, max_len // 256 * 256)
            return InferencePlan(
                fits=True,
                nodes=nodes_used,
                gpus_per_node=sku.gpu_count,
                tensor_parallel_size=tp,
                pipeline_parallel_size=nodes,
                max_model_len=max_len,
                dtype=dtype,
                weights_gib=round(weights, 2),
                kv_cache_gib=round(kv_room, 2),
                kv_bytes_per_token=per_token,
                disk_gib=disk,
            )
    return InferencePlan(
        fits=False, nodes=0, gpus_per_node=sku.gpu_count, tensor_parallel_size=0, pipeline_parallel_size=0,
        max_model_len=0, dtype=dtype, weights_gib=round(weights, 2), kv_cache_gib=0.0,
        kv_bytes_per_token=per_token, disk_gib=disk,
        reason=f"{model.name} needs {weights:.1f} GiB of weights plus KV cache; more than 64 nodes of {sku.name}",
    )


def plan_tuning(
    model: ModelPreset,
    sku: Sku,
    method: str = "qlora",
    *,
    lora_r: int = DEFAULT_LORA_R,
    batch_size: int = DEFAULT_BATCH,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> TuningPlan:
    """Size a LoRA/QLoRA tuning run of ``model`` on one GPU of ``sku`` (data parallel across GPUs)."""
    params = model.params_b * 1e9
    per_param = 0.516 if method == "qlora" else 2.0
    embeddings = 2 * model.vocab_size * model.hidden_size * 2
    weights = (params * per_param + embeddings) / GIB
    targets = max(len(model.lora_target_modules), 1)
    trainable = lora_r * 2 * model.hidden_size * targets * model.num_layers * 2
    optimizer = trainable * 16 / GIB
    activations = (
        batch_size * seq_len * model.hidden_size * 2 * (model.num_layers + 16)
        + batch_size * seq_len * model.vocab_size * 4
    ) / GIB
    total = weights + optimizer + activations + GPU_OVERHEAD_GIB
    budget = sku.gpu_memory_gib * TUNING_HEADROOM
    fits = total <= budget and sku.gpu_count > 0
    reason = ""
    if not model.tuning_supported:
        fits, reason = False, f"preset {model.name} does not support tuning"
    elif not fits:
        reason = (
            f"{method} tuning of {model.name} needs about {total:.1f} GiB per GPU; "
            f"{sku.name} has {sku.gpu_memory_gib:g} GiB ({sku.gpu_model})"
        )
    return TuningPlan(
        fits=fits,
        method=method,
        compute_dtype="bfloat16" if sku.supports_bf16 else "float16",
        weights_gib=round(weights, 2),
        trainable_params=trainable,
        optimizer_gib=round(optimizer, 3),
        activations_gib=round(activations, 2),
        total_gib=round(total, 2),
        per_gpu_gib=sku.gpu_memory_gib,
        reason=reason,
    )


def fitting_skus(model: ModelPreset, *, tuning_method: str | None = None, cloud: str | None = None, limit: int = 5):
    """Instance types where the model fits on one node, smallest total GPU memory first."""
    out = []
    for sku in sorted(presets.skus(), key=lambda s: (s.total_gpu_memory_gib, s.gpu_count)):
        if cloud and sku.cloud != cloud:
            continue
        if tuning_method:
            ok = plan_tuning(model, sku, tuning_method).fits
        else:
            p = plan_inference(model, sku)
            ok = p.fits and p.pipeline_parallel_size == 1
        if ok:
            out.append(sku.name)
        if len(out) >= limit:
            break
    return out


def as_dict(plan: InferencePlan | TuningPlan) -> dict:
    return asdict(plan)
