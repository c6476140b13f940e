"""Adapter specs, scaled copies and the version bookkeeping behind zero-downtime replacement."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from safetensors.torch import load_file

from serving import adapters, errors
from serving.engines import base


def test_spec_parsing() -> None:
    assert adapters.parse_spec("a=/x/y") == adapters.AdapterSpec("a", Path("/x/y"), 1.0)
    assert adapters.parse_spec("a=/x/y:0.25") == adapters.AdapterSpec("a", Path("/x/y"), 0.25)
    assert adapters.parse_spec("a=/x:y") == adapters.AdapterSpec("a", Path("/x:y"), 1.0)
    with pytest.raises(errors.ServingError, match="NAME=DIR"):
        adapters.parse_spec("/x/y")
    with pytest.raises(errors.ServingError, match="strength"):
        adapters.parse_spec("a=/x:-1")
    with pytest.raises(errors.ServingError, match="not valid"):
        adapters.parse_spec("bad name=/x")


def test_scaled_copy_scales_only_lora_b(adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = adapter_dirs["alpha"]
    adapters.write_scaled_copy(source, tmp_path / "half", 0.5)
    original, half = load_file(str(source / "adapter_model.safetensors")), load_file(str(tmp_path / "half/adapter_model.safetensors"))
    assert original.keys() == half.keys()
    for key, tensor in original.items():
        expected = tensor * 0.5 if ".lora_B." in key else tensor
        assert (half[key] == expected).all(), key
    assert (tmp_path / "half/adapter_config.json").read_text() == (source / "adapter_config.json").read_text()


def test_kaito_image_layout_with_data_folder_is_accepted(adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(adapter_dirs["alpha"])
    assert adapters.adapter_dir(tmp_path) == tmp_path / "data"


def test_replacement_keeps_old_version_until_its_last_request_ends(adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    events: list[str] = []

    async def add(a: base.LoadedAdapter) -> None:
        events.append(f"add {a.key}")

    async def remove(a: base.LoadedAdapter) -> None:
        events.append(f"remove {a.key}")

    async def scenario() -> None:
        store = adapters.AdapterSet(add, remove, tmp_path)
        first = await store.load(adapters.make_spec("a", adapter_dirs["alpha"], 0.5))
        assert first.temp_dir is not None and first.served_path == first.temp_dir
        held = store.acquire(store.get("a"))
        second = await store.load(adapters.make_spec("a", adapter_dirs["beta"]))
        await store.drain()
        assert store.get("a") is second and events == [f"add {first.key}", f"add {second.key}"]
        store.release(held)
        await store.drain()
        assert events[-1] == f"remove {first.key}" and not first.temp_dir.exists()
        await store.unload("a")
        await store.drain()
        assert events[-1] == f"remove {second.key}" and store.names() == []
        with pytest.raises(errors.NotFound):
            await store.unload("a")

    asyncio.run(scenario())
