"""LoRA adapters: parse `NAME=DIR[:STRENGTH]`, check a directory, scale weights, track versions.

Strength scales the adapter's update ``B·A·x``. Scaling ``lora_B`` by the strength does exactly
that on any engine that can load a LoRA directory, so both engines serve a *scaled copy* of the
adapter written to a temporary directory (strength 1 serves the original files). Strength 0 zeroes
``B``: the update is an exact zero and the output equals the base model's.

`AdapterSet` keeps, per name, the version requests should use now. Replacing an adapter loads the
new version first, then swaps the name over; requests already running hold the old version (a
reference count) and it is removed from the engine only after the last of them finishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from serving import errors, protocol
from serving.engines import base

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(protocol.ADAPTER_NAME)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    strength: float = 1.0


def parse_spec(text: str) -> AdapterSpec:
    """``NAME=DIR[:STRENGTH]`` → spec; ``DIR`` may itself contain ``:`` if no strength follows."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise errors.ConfigError(f"--adapter {text!r}: expected NAME=DIR[:STRENGTH], e.g. my-adapter=/adapters/a:0.5")
    path, strength = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            strength = float(tail)
            path = head
        except ValueError:
            pass
    return make_spec(name, path, strength)


def make_spec(name: str, path: str | Path, strength: float = 1.0) -> AdapterSpec:
    check_name(name)
    check_strength(name, strength)
    try:
        expanded = Path(path).expanduser()
    except RuntimeError:  # "~someone" with no such user: left as given, refused below as not existing
        expanded = Path(path)
    return AdapterSpec(name=name, path=expanded, strength=float(strength))


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name or ""):
        raise errors.BadRequest(
            f"adapter name {name!r} is not valid: use letters, digits, '.', '_' or '-' (at most 128 characters)",
            param="lora_name",
        )


def check_strength(name: str, strength: float) -> None:
    if not (0.0 <= float(strength) <= 10.0):
        raise errors.BadRequest(f"adapter {name!r}: strength {strength} is out of range; use 0.0 to 10.0", param="strength")


def adapter_dir(path: Path) -> Path:
    """The directory holding ``adapter_config.json``: ``path`` or its ``data/`` (Kaito's image layout)."""
    try:
        for candidate in (path, path / "data"):
            if (candidate / "adapter_config.json").is_file():
                return candidate
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a permission: not a usable directory
        raise errors.BadRequest(f"adapter directory {str(path)!r} cannot be read: {exc}", param="lora_path") from exc
    if not exists:
        raise errors.BadRequest(f"adapter directory {path} does not exist", param="lora_path")
    raise errors.BadRequest(
        f"adapter directory {path} has no adapter_config.json (nor data/adapter_config.json): "
        "point it at a directory written by peft's save_pretrained",
        param="lora_path",
    )


def read_config(directory: Path) -> dict:
    config_file = directory / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.BadRequest(f"{config_file} is not readable JSON: {exc}", param="lora_path") from exc
    if not isinstance(config, dict):
        raise errors.BadRequest(f"{config_file} is not a JSON object: point lora_path at a peft adapter", param="lora_path")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise errors.BadRequest(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LORA adapters are served")
    if not any((directory / f).is_file() for f in WEIGHT_FILES):
        raise errors.BadRequest(f"adapter directory {directory} has no {' or '.join(WEIGHT_FILES)}", param="lora_path")
    return config


def max_rank(config: dict) -> int:
    try:
        ranks = [int(config.get("r", 8))] + [int(r) for r in (config.get("rank_pattern") or {}).values()]
    except (TypeError, ValueError, AttributeError) as exc:
        raise errors.BadRequest(f"adapter_config.json: r and rank_pattern must hold integers ({exc})", param="lora_path") from exc
    return max(ranks)


def load_weights(source: Path) -> dict:
    """The adapter's tensors; a file that is not readable tensors is a 400 naming it, before any engine sees it.

    An engine handed corrupt weights fails deep inside (peft has already changed the model by then;
    vLLM's engine process loads them), so both engines get only adapters whose weights were read here.
    """
    import torch
    from safetensors.torch import load_file

    weights = source / "adapter_model.safetensors"
    try:
        if weights.is_file():
            return load_file(str(weights))
        weights = source / "adapter_model.bin"
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, pickle errors, OSError: all mean "not usable"
        raise errors.BadRequest(f"{weights} cannot be read as adapter weights ({type(exc).__name__}: {exc})",
                                param="lora_path") from exc


def write_scaled_copy(source: Path, dest: Path, strength: float) -> None:
    """Copy the adapter at ``source`` to ``dest`` with every ``lora_B`` tensor multiplied by ``strength``."""
    from safetensors.torch import save_file

    tensors = load_weights(source)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "adapter_config.json", dest / "adapter_config.json")
    scaled = {k: (v * strength if _is_b_matrix(k) else v).contiguous() for k, v in tensors.items()}
    save_file(scaled, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})


def _is_b_matrix(key: str) -> bool:
    return ".lora_B." in key or ".lora_embedding_B" in key


def prepare(spec: AdapterSpec, version: int, engine_id: int, workdir: Path) -> base.LoadedAdapter:
    """Check ``spec``'s directory and write the copy the engine will load (blocking file work)."""
    source = adapter_dir(spec.path)
    config = read_config(source)
    if config.get("use_dora") and spec.strength != 1.0:
        raise errors.BadRequest(f"adapter {spec.name!r} is a DoRA adapter: its strength must be 1.0", param="strength")
    rank = max_rank(config)
    served, temp_dir = source, None
    if spec.strength == 1.0:
        load_weights(source)  # read, not kept: the engine loads its own copy (a scaled copy reads them below)
    else:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-v{version}-", dir=workdir))
        try:
            write_scaled_copy(source, temp_dir, spec.strength)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        served = temp_dir
    return base.LoadedAdapter(
        name=spec.name, version=version, engine_id=engine_id, source=source,
        served_path=served, strength=spec.strength, rank=rank, temp_dir=temp_dir,
    )


class AdapterSet:
    """Named adapters on one engine, with atomic replacement and deferred removal."""

    def __init__(self, add: Callable[[base.LoadedAdapter], Awaitable[None]],
                 remove: Callable[[base.LoadedAdapter], Awaitable[None]], workdir: Path) -> None:
        self._add, self._remove, self._workdir = add, remove, workdir
        self._current: dict[str, base.LoadedAdapter] = {}
        self._next_id = 1
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def names(self) -> list[str]:
        return sorted(self._current)

    def get(self, name: str) -> base.LoadedAdapter | None:
        return self._current.get(name)

    def only(self) -> base.LoadedAdapter | None:
        """The single loaded adapter, or None when there are none or several."""
        return next(iter(self._current.values())) if len(self._current) == 1 else None

    async def load(self, spec: AdapterSpec) -> base.LoadedAdapter:
        """Load (or replace) ``spec.name``; the old version keeps serving requests already running."""
        async with self._lock:
            engine_id, self._next_id = self._next_id, self._next_id + 1
            adapter = await asyncio.to_thread(prepare, spec, engine_id, engine_id, self._workdir)
            try:
                await self._add(adapter)
            except BaseException:
                _delete_temp(adapter)
                raise
            old = self._current.get(spec.name)
            self._current[spec.name] = adapter
            if old is not None:
                self._retire(old)
            log.info("adapter %s loaded from %s at strength %s", adapter.key, adapter.source, adapter.strength)
            return adapter

    async def unload(self, name: str) -> None:
        async with self._lock:
            adapter = self._current.pop(name, None)
            if adapter is None:
                raise errors.NotFound(f"no adapter named {name!r} is loaded; loaded: {self.names() or 'none'}", param="lora_name")
            self._retire(adapter)

    def acquire(self, adapter: base.LoadedAdapter) -> base.LoadedAdapter:
        adapter.in_use += 1
        return adapter

    def release(self, adapter: base.LoadedAdapter) -> None:
        adapter.in_use -= 1
        if adapter.retired and adapter.in_use == 0:
            self._schedule_removal(adapter)

    async def drain(self) -> None:
        """Wait for pending removals (used at shutdown and by tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _retire(self, adapter: base.LoadedAdapter) -> None:
        adapter.retired = True
        if adapter.in_use == 0:
            self._schedule_removal(adapter)

    def _schedule_removal(self, adapter: base.LoadedAdapter) -> None:
        task = asyncio.get_running_loop().create_task(self._remove_now(adapter))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove_now(self, adapter: base.LoadedAdapter) -> None:
        try:
            await self._remove(adapter)
            log.info("adapter %s removed", adapter.key)
        except Exception:  # the engine keeps a stale copy; it is never selected again
            log.exception("removing adapter %s failed", adapter.key)
        finally:
            _delete_temp(adapter)


def _delete_temp(adapter: base.LoadedAdapter) -> None:
    if adapter.temp_dir is not None:
        shutil.rmtree(adapter.temp_dir, ignore_errors=True)
