"""Does a model fit an instance type? The arithmetic, written down, as Kaito v0.12 does it.

All memory in GiB (2**30 bytes). Sources are kaito-project/kaito at v0.12.0: the estimator
``pkg/workspace/estimator/nodesestimator/estimator.go`` (retuned after out-of-memory crashes in
#2139 "harden max-model-len and node estimation" and #2156 "use vLLM native estimation for
max-model-len"), the vLLM command ``pkg/model/interface.go`` and ``website/docs/memory-estimator.md``.

Inference (vLLM) — how many nodes, and how the model is laid out over their GPUs:

    W       = weights_gib * 1.02            WEIGHT_EXPANSION: vLLM's loaded weights are ~2 % larger
                                            than the safetensors (estimator.go weightExpansionFactor)
    U       = 0.84, 0.82 on A10             GPU_MEMORY_UTILIZATION(_BY_GPU): vLLM's
                                            --gpu-memory-utilization as Kaito launches it
                                            (interface.go defaultGPUMemoryUtilization; A10 0.82)
    usable  = gpu_memory_gib * U            per GPU
    C       = the inference ConfigMap's max-model-len, else 2048   (DEFAULT_CONTEXT)
    kv      = C * kv_bytes_per_token / gpus_per_node               per GPU
    reserve = 2.3 + kv                      BASE_OVERHEAD_GIB: CUDA context and NCCL (~0.6) plus a
                                            small model's activations and CUDA graphs (~1.7)
    room    = (usable - reserve) / 1.05     OVERHEAD_WEIGHT_FACTOR 0.05: activations and graphs grow
                                            with the weights each GPU holds
    GPUs    = floor(W / room) + 1
    nodes   = ceil(GPUs / gpus_per_node)    the model's need decides; resource.count is raised or
                                            lowered to it (Kaito's estimator does the same)

Layout (interface.go configureParallelism): every GPU of a node is used and the pod requests them all.

    one node, >1 GPU, weights_gib < 50 % of one GPU   data-parallel = GPUs, tensor-parallel = 1
    otherwise                                         tensor-parallel = GPUs per node,
                                                      pipeline-parallel = nodes

kaiflow departs from that only where vLLM would refuse it: tensor parallelism must divide the
attention heads (falcon's 71), so the largest power of two that does is used and the rest of the
node's GPUs become pipeline stages (tp x pp still = the node's GPUs).

Context length: vLLM gets ``--max-model-len=auto`` (it measures free memory at start-up and picks
the longest context that fits, clamped to the model's limit; Kaito's MaxModelLenAuto), unless the
inference ConfigMap sets a number, which is then what the nodes were sized for. ``plan`` shows the
range auto-fit is expected to choose, per replica (memory-estimator.md "How the Context Size Is
Determined"):

    left    = usable - W / (tp * pp) - overhead        per GPU
    tokens  = left * tp * pp / kv_bytes_per_token, at most context_length
    low end : overhead = 2.3 + 0.05 * W / (tp * pp)    (Kaito's reserve)
    high end: overhead = 0.6                           (NON_TORCH_OVERHEAD_GIB: CUDA context and
                                                        NCCL alone, estimator.go's comment)

Quantised checkpoints (fp8, mxfp4) are sized by the weights vLLM keeps in memory, which is their
checkpoint: vLLM runs FP8 and MXFP4 weight-only on compute capability 8.0 and newer (Marlin kernels
on Ampere), still 1 byte / 4.25 bits a weight. On older GPUs (V100, T4) it cannot run them at all,
so sizing refuses (MIN_QUANTIZED_COMPUTE_CAPABILITY). The ``transformers`` runtime cannot run across
nodes: a model needing more than one node does not fit it.

Tuning (one node; each GPU holds a full copy: data parallel, as Kaito's tuning Job runs it):

    weights  = params * 0.516 bytes (4-bit NF4 with double-quant constants) for qlora,
               params * 2 bytes (bf16/fp16) for lora; plus embeddings and lm_head kept in 16 bit:
               2 * vocab * hidden * 2 bytes
    trainable= r * (hidden + hidden) * targets * layers * 2   (LoRA A and B; MLP targets are wider)
    state    = trainable * 16 bytes   (16-bit weight and grad, fp32 master and two Adam moments)
    activ    = batch * seq * hidden * 2 bytes * (layers + 16)   (gradient checkpointing keeps one
               input per layer plus one layer's intermediates)
             + batch * seq * vocab * 4 bytes                  (fp32 logits for the loss)
    fits iff weights + state + activ + 1.5 GiB (TUNING_OVERHEAD_GIB) <= gpu_memory_gib * 0.95

Compute dtype: bf16 where the GPU's compute capability is >= 8.0 (Ampere and newer), else float16.

Disk per node: ``weights_gib * 1.2 + 30`` GiB (weights, a converted copy's slack, the runtime image).

On the local platform with no GPU, the host itself is the "instance type": a preset runs only if its
weights fit in ``CPU_MAX_WEIGHTS_GB`` (real presets need a GPU; tiny-phi-3 runs anywhere).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import presets
from presets import ModelPreset, Sku

GIB = 2**30
# --- inference, Kaito v0.12 (see the module docstring for each one's source)
GPU_MEMORY_UTILIZATION = 0.84
GPU_MEMORY_UTILIZATION_BY_GPU = {"A10": 0.82}
WEIGHT_EXPANSION = 1.02
BASE_OVERHEAD_GIB = 2.3
OVERHEAD_WEIGHT_FACTOR = 0.05
NON_TORCH_OVERHEAD_GIB = 0.6
DEFAULT_CONTEXT = 2048
DATA_PARALLEL_FRACTION = 0.5
MIN_QUANTIZED_COMPUTE_CAPABILITY = 8.0
MAX_NODES = 64
RUNTIMES = ("vllm", "transformers")
MAX_MODEL_LEN_AUTO = "auto"
GPU_OVERHEAD_GIB = BASE_OVERHEAD_GIB  # a GPU's fixed overhead when serving (``kaiflow presets``)
# --- tuning and the CPU host (kaiflow's own)
TUNING_OVERHEAD_GIB = 1.5
TUNING_HEADROOM = 0.95
CPU_MAX_WEIGHTS_GB = 2.0
DEFAULT_LORA_R = 8
DEFAULT_BATCH = 1
DEFAULT_SEQ_LEN = 1024


def gib(gb: float) -> float:
    return gb * 1e9 / GIB


def kv_bytes_per_token(model: ModelPreset) -> int:
    return model.kv_bytes_per_token


def gpu_memory_utilization(sku: Sku) -> float:
    """vLLM's --gpu-memory-utilization on ``sku``'s GPUs, as Kaito launches it (a host's GPU as
    nvidia-smi names it, "NVIDIA A10", is the catalog's "A10")."""
    return GPU_MEMORY_UTILIZATION_BY_GPU.get(sku.gpu_model.removeprefix("NVIDIA ").strip(), GPU_MEMORY_UTILIZATION)


@dataclass
class InferencePlan:
    fits: bool
    nodes: int
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    max_model_len: int | str  # "auto", or the inference ConfigMap's number
    context_sized: int  # the context the node count reserves KV cache for
    context_low: int  # the range vLLM's auto-fit is expected to choose (per replica)
    context_high: int
    dtype: str
    runtime: str
    gpu_memory_utilization: float
    weights_gib: float  # loaded (x 1.02)
    weights_per_gpu_gib: float
    kv_bytes_per_token: int
    usable_per_gpu_gib: float
    reserve_per_gpu_gib: float
    room_per_gpu_gib: float
    min_gpus: int
    disk_gib: int
    requested_nodes: int | None = None
    notes: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def vllm_args(self) -> dict[str, object]:
        """vLLM engine arguments of this layout (command-line spelling)."""
        args: dict[str, object] = {"max-model-len": self.max_model_len, "dtype": self.dtype,
                                   "gpu-memory-utilization": self.gpu_memory_utilization,
                                   "tensor-parallel-size": self.tensor_parallel_size}
        if self.pipeline_parallel_size > 1:
            args["pipeline-parallel-size"] = self.pipeline_parallel_size
        if self.data_parallel_size > 1:
            args["data-parallel-size"] = self.data_parallel_size
        return args

    def arithmetic(self) -> list[str]:
        """The numbers behind the node count, one line each (``kaiflow plan`` prints them)."""
        if not self.usable_per_gpu_gib:
            return []
        return [
            f"weights {self.weights_gib:.2f} GiB (x{WEIGHT_EXPANSION}); per GPU usable "
            f"{self.usable_per_gpu_gib:.2f} GiB (x{self.gpu_memory_utilization}), reserve "
            f"{self.reserve_per_gpu_gib:.2f} GiB ({BASE_OVERHEAD_GIB} + KV for {self.context_sized:,} tokens "
            f"x {self.kv_bytes_per_token:,} B / {self.gpus_per_node} GPU(s))",
            f"room for weights per GPU ({self.usable_per_gpu_gib:.2f} - {self.reserve_per_gpu_gib:.2f}) / "
            f"{1 + OVERHEAD_WEIGHT_FACTOR:g} = {self.room_per_gpu_gib:.2f} GiB -> floor({self.weights_gib:.2f} / "
            f"{self.room_per_gpu_gib:.2f}) + 1 = {self.min_gpus} GPU(s) -> {self.nodes} node(s) of "
            f"{self.gpus_per_node} GPU(s)",
        ]

    def layout(self) -> str:
        parts = [f"tp={self.tensor_parallel_size}", f"pp={self.pipeline_parallel_size}"]
        if self.data_parallel_size > 1:
            parts.append(f"dp={self.data_parallel_size}")
        return " ".join(parts)

    def context(self) -> str:
        if self.runtime != "vllm":
            return f"{self.runtime} runtime: no vLLM arguments"
        if self.max_model_len != MAX_MODEL_LEN_AUTO:
            return f"max-model-len={self.max_model_len} (the inference ConfigMap's)"
        if self.context_low == self.context_high:
            return f"max-model-len=auto (vLLM picks at start-up: expected {self.context_low:,} tokens, the model's limit)"
        return (f"max-model-len=auto (vLLM picks at start-up: expected {self.context_low:,}-{self.context_high:,} "
                "tokens per replica)")


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


def _serving_dtype(model: ModelPreset, sku: Sku) -> str:
    if model.quantization:
        return "auto"
    return "bfloat16" if sku.supports_bf16 else "float16"


def _tensor_parallel(model: ModelPreset, gpus: int) -> int:
    """``gpus`` if it divides the attention heads (vLLM's rule), else the largest power of two that
    divides both; the node's other GPUs become pipeline stages."""
    if model.num_attention_heads % gpus == 0:
        return gpus
    tp = 1
    while gpus % (tp * 2) == 0 and model.num_attention_heads % (tp * 2) == 0:
        tp *= 2
    return tp


def layout(model: ModelPreset, sku: Sku, nodes: int) -> tuple[int, int, int]:
    """(tensor, pipeline, data) parallel sizes for ``nodes`` nodes of ``sku``, every GPU used
    (Kaito's configureParallelism): one node with more than one GPU and weights under half a GPU:
    data parallel over the GPUs; else tensor parallel over a node's GPUs and a pipeline stage per
    node (tensor parallel narrowed where it would not divide the attention heads)."""
    gpus = max(sku.gpu_count, 1)
    if nodes == 1 and gpus > 1 and model.weights_gib < DATA_PARALLEL_FRACTION * sku.gpu_memory_gib:
        return 1, 1, gpus
    tp = _tensor_parallel(model, gpus)
    return tp, nodes * (gpus // tp), 1


def expected_context(model: ModelPreset, sku: Sku, gpus_per_replica: int, *, overhead_gib: float | None = None,
                     utilization: float | None = None) -> int:
    """Tokens one replica spread over ``gpus_per_replica`` GPUs is expected to hold (memory-estimator.md's
    worked example); ``overhead_gib`` None: Kaito's reserve (2.3 + 5 % of the GPU's weights)."""
    util = gpu_memory_utilization(sku) if utilization is None else utilization
    weights_per_gpu = model.weights_gib * WEIGHT_EXPANSION / gpus_per_replica
    overhead = BASE_OVERHEAD_GIB + OVERHEAD_WEIGHT_FACTOR * weights_per_gpu if overhead_gib is None else overhead_gib
    left = sku.gpu_memory_gib * util - weights_per_gpu - overhead
    if left <= 0 or not model.kv_bytes_per_token:
        return model.context_length if left > 0 else 0
    return min(model.context_length, int(left * GIB * gpus_per_replica // model.kv_bytes_per_token))


def plan_inference(model: ModelPreset, sku: Sku, count: int | None = None, *, context: int | None = None,
                   runtime: str = "vllm") -> InferencePlan:
    """Size ``model`` for serving on ``sku`` (Kaito's estimator and layout; see the module docstring).

    ``count`` is ``resource.count``: reported when the model's need differs, never obeyed over it.
    ``context`` is the inference ConfigMap's max-model-len (None: vLLM's auto-fit, sized for 2048).
    """
    util = gpu_memory_utilization(sku)
    weights = model.weights_gib * WEIGHT_EXPANSION
    per_token = model.kv_bytes_per_token
    sized_for = context or DEFAULT_CONTEXT
    dtype = _serving_dtype(model, sku)
    disk = int(math.ceil(model.weights_gib * 1.2 + 30))
    usable = sku.gpu_memory_gib * util
    gpus_per_node = max(sku.gpu_count, 1)
    reserve = BASE_OVERHEAD_GIB + sized_for * per_token / gpus_per_node / GIB
    room = (usable - reserve) / (1 + OVERHEAD_WEIGHT_FACTOR)
    base = dict(gpus_per_node=gpus_per_node, dtype=dtype, runtime=runtime, gpu_memory_utilization=util,
                weights_gib=round(weights, 2), kv_bytes_per_token=per_token, usable_per_gpu_gib=round(usable, 2),
                reserve_per_gpu_gib=round(reserve, 2), room_per_gpu_gib=round(max(room, 0.0), 2), disk_gib=disk,
                requested_nodes=count, context_sized=sized_for,
                max_model_len=context if context else MAX_MODEL_LEN_AUTO)

    def misfit(reason: str, nodes: int = 0, min_gpus: int = 0) -> InferencePlan:
        return InferencePlan(fits=False, nodes=nodes, tensor_parallel_size=0, pipeline_parallel_size=0,
                             data_parallel_size=0, context_low=0, context_high=0, weights_per_gpu_gib=0.0,
                             min_gpus=min_gpus, reason=reason, **base)  # type: ignore[arg-type]

    if runtime not in RUNTIMES:
        return misfit(f"unknown runtime {runtime!r}; kaiflow serves with {' or '.join(RUNTIMES)}")
    if model.quantization and float(sku.compute_capability) < MIN_QUANTIZED_COMPUTE_CAPABILITY:
        return misfit(f"{model.name} is a {model.quantization.upper()} checkpoint; vLLM runs those on compute "
                      f"capability {MIN_QUANTIZED_COMPUTE_CAPABILITY:.1f} or newer and {sku.name}'s {sku.gpu_model} "
                      f"has {sku.compute_capability}")
    if context and context > model.context_length:
        return misfit(f"the inference ConfigMap's max-model-len {context:,} is longer than {model.name}'s "
                      f"context ({model.context_length:,} tokens); lower it")
    if room <= 0:
        return misfit(f"{sku.gpu_model} {sku.gpu_memory_gib:g} GiB is too small: {usable:.2f} GiB usable per GPU, "
                      f"{reserve:.2f} GiB reserved ({BASE_OVERHEAD_GIB} GiB runtime + KV cache for "
                      f"{sized_for:,} tokens)")
    min_gpus = int(weights / room) + 1
    nodes = -(-min_gpus // gpus_per_node)
    if nodes > MAX_NODES:
        return misfit(f"{model.name} needs {weights:.1f} GiB of weights: more than {MAX_NODES} nodes of {sku.name}",
                      nodes, min_gpus)
    if nodes > 1 and runtime == "transformers":
        return misfit(f"{model.name} needs {nodes} nodes of {sku.name} and the transformers runtime cannot run "
                      "across nodes; use the vllm runtime or an instance type with more GPU memory", nodes, min_gpus)

    notes: list[str] = []
    tp, pp, dp = layout(model, sku, nodes) if runtime == "vllm" else (1, 1, 1)
    if dp > 1:
        notes.append(f"weights under half a GPU: {dp} data-parallel replicas, one per GPU")
    if runtime == "vllm" and dp == 1 and tp != gpus_per_node:
        notes.append(f"tensor-parallel {tp}, not {gpus_per_node}: it must divide the {model.num_attention_heads} "
                     f"attention heads, so each node's {gpus_per_node} GPUs run {gpus_per_node // tp} pipeline "
                     f"stage(s) (Kaito passes tensor-parallel-size {gpus_per_node}, which vLLM refuses)")
    if count is not None and count != nodes:
        verb = "raised" if count < nodes else "lowered"
        notes.append(f"resource.count {count} {verb} to {nodes}: {model.name} needs {min_gpus} GPU(s) of "
                     f"{sku.gpu_model} {sku.gpu_memory_gib:g} GiB ({sku.gpu_count} per node), as Kaito's estimator decides")
    replica_gpus = tp * pp
    low = expected_context(model, sku, replica_gpus)
    high = expected_context(model, sku, replica_gpus, overhead_gib=NON_TORCH_OVERHEAD_GIB)
    return InferencePlan(fits=True, nodes=nodes, tensor_parallel_size=tp, pipeline_parallel_size=pp,
                         data_parallel_size=dp, context_low=low, context_high=max(low, high),
                         weights_per_gpu_gib=round(weights / replica_gpus, 2), min_gpus=min_gpus, notes=notes,
                         **base)  # type: ignore[arg-type]


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
    total = weights + optimizer + activations + TUNING_OVERHEAD_GIB
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
            ok = p.fits and p.nodes == 1
        if ok:
            out.append(sku.name)
        if len(out) >= limit:
            break
    return out


def as_dict(plan: InferencePlan | TuningPlan) -> dict:
    return asdict(plan)
