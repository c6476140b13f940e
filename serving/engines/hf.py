"""The transformers engine: the fallback for small models and machines without vLLM.

It starts in seconds and decodes exactly like `model.generate`. One worker thread owns the model:
requests run one at a time (`capacity = 1`) and queue behind it, adapter loads and removals run on
the same thread between requests, so nothing mutates the model while it generates. Adapters are
peft LoRA adapters on one `PeftModel`, each under its versioned key; a request selects its adapter
(or disables them all for the base model) right before it generates.

Text is decoded incrementally in the worker, which also watches for stop strings and stops
`generate` when one appears or the client goes away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, AsyncIterator, Callable

from serving import errors
from serving.engines import base

log = logging.getLogger(__name__)


class TransformersEngine:
    name = "transformers"
    capacity = 1

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.max_model_len = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self._model: Any = None
        self._peft: Any = None
        self._tokenizer: Any = None
        self._eos_ids: list[int] = []

    async def start(self) -> None:
        await self._on_worker(self._load)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import torch

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        # on a GPU machine without vLLM the model goes to the GPU(s) (accelerate places it), else the CPU
        placement = {"device_map": "auto"} if torch.cuda.is_available() else {}
        self._model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype="auto", **placement).eval()
        config, gen = self._model.config, self._model.generation_config
        self.max_model_len = int(getattr(config, "max_position_embeddings", 0) or self._tokenizer.model_max_length)
        eos = gen.eos_token_id if gen.eos_token_id is not None else self._tokenizer.eos_token_id
        self._eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self._tokenizer.eos_token_id is not None and self._tokenizer.eos_token_id not in self._eos_ids:
            self._eos_ids.append(self._tokenizer.eos_token_id)
        log.info("transformers engine: %s loaded (%s on %s, context %d)", self.model_path, self._model.dtype,
                 self._model.device, self.max_model_len)

    async def _on_worker(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def add_adapter(self, adapter: base.LoadedAdapter) -> None:
        try:
            await self._on_worker(self._add, adapter)
        except errors.ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - peft and safetensors raise many kinds (SafetensorError is none of the usual)
            raise errors.BadRequest(f"adapter {adapter.name!r} from {adapter.source} cannot be loaded into this model: "
                                    f"{type(exc).__name__}: {exc}", param="lora_path") from exc

    def _add(self, adapter: base.LoadedAdapter) -> None:
        from peft import PeftModel

        # the weights were read once already (adapters.prepare), so a corrupt file never gets here
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._model, str(adapter.served_path), adapter_name=adapter.key,
                                                   is_trainable=False)
            self._peft.eval()
            return
        try:
            self._peft.load_adapter(str(adapter.served_path), adapter_name=adapter.key, is_trainable=False)
        except BaseException:  # e.g. weights of other shapes: remove what was injected, the model stays as it was
            if adapter.key in self._peft.peft_config:
                self._peft.delete_adapter(adapter.key)
            raise

    async def remove_adapter(self, adapter: base.LoadedAdapter) -> None:
        await self._on_worker(self._remove, adapter)

    def _remove(self, adapter: base.LoadedAdapter) -> None:
        if self._peft is not None and adapter.key in self._peft.peft_config:
            self._peft.delete_adapter(adapter.key)

    async def stream(self, request_id: str, prompt_ids: list[int], sampling: base.Sampling,
                     adapter: base.LoadedAdapter | None, *, deltas: bool = True) -> AsyncIterator[base.Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: base.Delta | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._pool, self._generate, prompt_ids, sampling, adapter, emit, cancelled)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    break
        finally:
            cancelled.set()
            if not future.done():
                future.add_done_callback(lambda f: f.exception())  # don't warn about an unretrieved error

    def _generate(self, prompt_ids: list[int], sampling: base.Sampling, adapter: base.LoadedAdapter | None,
                  emit: Callable, cancelled: threading.Event) -> None:
        try:
            self._generate_unsafe(prompt_ids, sampling, adapter, emit, cancelled)
        except BaseException as exc:  # surfaces in the request's coroutine
            emit(exc)

    def _generate_unsafe(self, prompt_ids: list[int], sampling: base.Sampling, adapter: base.LoadedAdapter | None,
                         emit: Callable, cancelled: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        if cancelled.is_set():
            return
        streamer = _TextStreamer(self._tokenizer, sampling.stop, emit)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancelled.is_set() or streamer.hit_stop
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        model, context = self._select(adapter)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self._model.device)
        with torch.inference_mode(), context:
            model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(sampling),
                streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()]),
            )
        emit(streamer.finish(self._finish_reason(streamer, sampling)))

    def _select(self, adapter: base.LoadedAdapter | None) -> tuple[Any, Any]:
        import contextlib

        if self._peft is None:
            return self._model, contextlib.nullcontext()
        if adapter is None:
            return self._peft, self._peft.disable_adapter()
        self._peft.set_adapter(adapter.key)
        return self._peft, contextlib.nullcontext()

    def _generation_config(self, sampling: base.Sampling) -> Any:
        from transformers import GenerationConfig

        sample = not sampling.greedy
        return GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=sampling.min_tokens or None,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_k=(sampling.top_k if sampling.top_k > 0 else 0) if sample else None,
            top_p=sampling.top_p if sample else None,
            repetition_penalty=sampling.repetition_penalty,
            eos_token_id=None if sampling.ignore_eos else self._eos_ids,
            pad_token_id=self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self._eos_ids[0],
        )

    def _finish_reason(self, streamer: "_TextStreamer", sampling: base.Sampling) -> str:
        if streamer.hit_stop:
            return "stop"
        if streamer.ids and streamer.ids[-1] in self._eos_ids and not sampling.ignore_eos:
            return "stop"
        return "length"

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _TextStreamer:
    """Receives token ids from `generate` and emits text deltas, holding back what may be a stop string."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], emit: Callable) -> None:
        self.tokenizer, self.stops, self.emit = tokenizer, stops, emit
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.pending_tokens = 0
        self.hit_stop = False
        self._prompt_seen = False
        self._hold = max((len(s) for s in stops), default=1) - 1

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        if self.hit_stop:
            return
        new = [int(t) for t in value.reshape(-1).tolist()]
        self.ids.extend(new)
        self.pending_tokens += len(new)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stops:
            index = self.text.find(stop)
            if index >= 0:
                self.text, self.hit_stop = self.text[:index], True
        if self.hit_stop:
            return
        safe = len(self.text) - self._hold
        if self.text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            safe = min(safe, len(self.text.rstrip("\ufffd")))
        if safe > self.sent:
            self.emit(base.Delta(self.text[self.sent:safe], self.pending_tokens))
            self.sent, self.pending_tokens = safe, 0

    def end(self) -> None:
        pass

    def finish(self, reason: str) -> base.Delta:
        # like vLLM's detokenizer, drop bytes of a UTF-8 sequence the generation left unfinished
        self.text = self.text.rstrip("\ufffd") if len(self.text.rstrip("\ufffd")) >= self.sent else self.text
        delta = base.Delta(self.text[self.sent:], self.pending_tokens, reason)
        self.sent, self.pending_tokens = len(self.text), 0
        return delta
