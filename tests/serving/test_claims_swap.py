"""An adapter swap that lands while a request holds the old version: the request still runs on the
old version, which goes only when the request lets go — on the real transformers engine and the real
adapter set, with the tiny model, in this process.

Why not over HTTP: the transformers engine runs generation, adapter loads and removals on its one
worker thread, in order, so a swap sent while a request generates is applied after it, whatever the
swap does with the old version (tests/serving/test_server.py's in-flight test passes by
construction on that engine). The order that can hurt is the one the server's request path goes
through: the request has taken its adapter (``Server._enter``) and the swap lands before its
generation runs. The test builds that order with the same calls, step by step, so a swap that
removed the old version at once (in ``AdapterSet`` or in the engine) makes the request fail or
answer with the new adapter.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from serving import adapters
from serving.engines import base, hf

PROMPT = "The quick brown fox"


async def _text(engine: hf.TransformersEngine, ids: list[int], adapter: base.LoadedAdapter | None) -> str:
    sampling = base.Sampling(max_tokens=24, ignore_eos=True)
    return "".join([d.text async for d in engine.stream("r", ids, sampling, adapter)])


def test_swap_landing_while_a_request_holds_the_old_version_lets_it_finish_on_it(
        tiny_model: Path, adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = hf.TransformersEngine(str(tiny_model))
        await engine.start()
        try:
            store = adapters.AdapterSet(engine.add_adapter, engine.remove_adapter, tmp_path)
            ids = engine._tokenizer(PROMPT)["input_ids"]
            old = await store.load(adapters.make_spec("roll", adapter_dirs["gamma"]))
            on_old = await _text(engine, ids, old)

            held = store.acquire(store.get("roll"))        # a request takes the serving version ...
            new = await store.load(adapters.make_spec("roll", adapter_dirs["beta"]))  # ... the swap lands ...
            await store.drain()                            # ... and whatever it scheduled has run
            assert store.get("roll") is new and held is old
            assert await _text(engine, ids, held) == on_old  # ... the request still runs on the old version
            on_new = await _text(engine, ids, new)
            assert on_new != on_old, "the two adapters must answer differently for this test to mean anything"

            assert old.key in engine._peft.peft_config      # kept while held
            store.release(held)
            await store.drain()
            assert old.key not in engine._peft.peft_config  # gone once the request let go
            assert await _text(engine, ids, store.get("roll")) == on_new
        finally:
            await engine.close()

    asyncio.run(scenario())
