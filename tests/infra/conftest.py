"""Fixtures for infra tests: real registries (docker-registry on loopback) and a real file server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import registry
from tests.support import fileserver as fileserver_support
from tests.support import registry as registry_support


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registry_support.LocalRegistry]:
    registry_support.require_binaries()
    with registry_support.LocalRegistry(tmp_path_factory.mktemp("registry-plain")) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registry_support.LocalRegistry]:
    registry_support.require_binaries(auth=True)
    with registry_support.LocalRegistry(tmp_path_factory.mktemp("registry-auth"), auth=True) as reg:
        yield reg


@pytest.fixture
def settings(tmp_path: Path) -> registry.RegistrySettings:
    """Fast retries, a layout root in the test's folder, no docker config from the machine."""
    return registry.RegistrySettings(layout_root=tmp_path / "layouts", attempts=3, backoff_s=0.05,
                                     docker_config=tmp_path / "no-such-config.json")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME and DOCKER_CONFIG of the test's own, so nothing reads or writes the real ones."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    for var in ("KAIFLOW_REGISTRY", "KAIFLOW_REGISTRY_USERNAME", "KAIFLOW_REGISTRY_PASSWORD", "KAIFLOW_DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """An adapter folder as peft writes it (random weights; the registry does not care)."""
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                          "target_modules": ["qkv_proj", "o_proj"]}))
    (path / "adapter_model.safetensors").write_bytes(os.urandom(300_001))
    (path / "README.md").write_text("not part of the image\n")
    return path


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[fileserver_support.FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    with fileserver_support.FileServer(root) as srv:
        yield srv
