"""The engine interface the HTTP layer talks to, and the plain data that crosses it.

The server tokenizes prompts itself (one tokenizer, one chat template) and hands the engine token
ids, so both engines see byte-identical inputs and give the same greedy output. An engine streams
text deltas back; it knows nothing of HTTP, OpenAI or Kaito request shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Protocol


GREEDY_BELOW = 1e-5  # a temperature under this decodes greedily (vLLM's _SAMPLING_EPS)


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. ``temperature`` under `GREEDY_BELOW` means greedy; ``top_k <= 0`` means no top-k."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        # as vLLM does: below this, dividing logits by the temperature overflows (inf, then NaN probabilities)
        return self.temperature < GREEDY_BELOW


@dataclass
class Delta:
    """New text since the last delta; ``finish_reason`` ("stop" | "length") on the last one."""

    text: str
    num_tokens: int
    finish_reason: str | None = None


@dataclass
class LoadedAdapter:
    """One version of a named adapter as the engine serves it.

    ``key`` is unique per version (``name#version``), so replacing an adapter loads the new weights
    under a new key while requests already running keep the old one until they finish.
    """

    name: str
    version: int
    engine_id: int
    source: Path
    served_path: Path
    strength: float
    rank: int
    temp_dir: Path | None = None
    in_use: int = field(default=0, compare=False)
    retired: bool = field(default=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.name}#{self.version}"


class Engine(Protocol):
    """What the server needs from an inference engine."""

    name: str
    max_model_len: int
    capacity: int  # requests the engine runs at once; beyond it, requests wait in its queue

    async def start(self) -> None:
        """Load the model (may take minutes); the server reports ready only after it returns."""

    def stream(
        self, request_id: str, prompt_ids: list[int], sampling: Sampling, adapter: LoadedAdapter | None,
        *, deltas: bool = True,
    ) -> AsyncIterator[Delta]:
        """Generate from ``prompt_ids``; closing the iterator early cancels the request.

        ``deltas=False`` (a non-streamed response) lets the engine send all the text at the end
        in one delta, which spares a wake-up per token under load.
        """

    async def add_adapter(self, adapter: LoadedAdapter) -> None:
        """Make ``adapter`` servable; raise `errors.BadRequest` if the engine cannot serve it."""

    async def remove_adapter(self, adapter: LoadedAdapter) -> None:
        """Free ``adapter`` (called once no request uses it)."""

    async def close(self) -> None:
        """Stop background work and child processes."""
