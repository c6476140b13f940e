"""``infra.images.resolve``: the image a cluster's pods run is resolved in its registry before
anything is created — refused when the registry says it has no such image, only noted when the
registry cannot be reached from here. Against Debian's docker-registry (tests/support/registry.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra import images, registry
from tests.support.registry import LocalRegistry
from workspace import errors


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory):
    with LocalRegistry(tmp_path_factory.mktemp("reg")) as r:
        yield r


def _push(tmp_path: Path, reference: str) -> str:
    d = tmp_path / "img"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (d / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return registry.push_adapter(d, reference, model_name="tiny-phi-3")


def test_an_image_in_its_registry_resolves_to_its_digest_and_is_printed(reg, tmp_path, monkeypatch):
    pinned = _push(tmp_path, f"{reg.host}/kaiflow:cpu-1")
    monkeypatch.setenv("KAIFLOW_IMAGE", f"{reg.host}/kaiflow:cpu-1")
    got = images.resolve()
    assert got.digest == pinned.rsplit("@", 1)[1]
    assert got.line() == f"pods run image {reg.host}/kaiflow:cpu-1 ({got.digest})"


def test_an_image_the_registry_does_not_have_is_refused_naming_the_setting(reg):
    with pytest.raises(errors.SpecError, match=rf"KAIFLOW_IMAGE={reg.host}/kaiflow:nope: no such image in {reg.host}; "
                                               r"build and push kaiflow's image with `make images PUSH="):
        images.resolve(f"{reg.host}/kaiflow:nope")


def test_an_unreachable_registry_is_noted_not_refused():
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = images.resolve(f"127.0.0.1:{port}/kaiflow:cpu-1")
    assert got.digest is None and "not reachable from here" in got.line()


def test_a_reference_that_is_not_one_names_the_setting():
    with pytest.raises(errors.SpecError, match=r"KAIFLOW_IMAGE='Registry/UPPER:x' is not an image reference"):
        images.resolve("Registry/UPPER:x")


SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "workspace-phi-3-mini.yaml"


def test_plan_on_a_cluster_platform_says_which_image_the_pods_would_run(reg, tmp_path, monkeypatch, capsys):
    from flows import cli

    pinned = _push(tmp_path, f"{reg.host}/kaiflow:cpu-2")
    monkeypatch.setenv("KAIFLOW_PLATFORM", "kubernetes")
    monkeypatch.setenv("KAIFLOW_IMAGE", f"{reg.host}/kaiflow:cpu-2")
    assert cli.main(["plan", "-f", str(SEED)]) == 0
    assert f"pods run image {reg.host}/kaiflow:cpu-2 ({pinned.rsplit('@', 1)[1]})" in capsys.readouterr().out
    monkeypatch.setenv("KAIFLOW_IMAGE", f"{reg.host}/kaiflow:gone")
    assert cli.main(["plan", "-f", str(SEED)]) == 1
    assert f"error: KAIFLOW_IMAGE={reg.host}/kaiflow:gone: no such image" in capsys.readouterr().err
    monkeypatch.setenv("KAIFLOW_PLATFORM", "local")   # one machine: no image to name
    assert cli.main(["plan", "-f", str(SEED)]) == 0
    assert "pods run image" not in capsys.readouterr().out
