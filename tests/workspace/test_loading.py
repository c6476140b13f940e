"""Loading workspace files: the seed and Kaito's examples load; broken files say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workspace import loader, spec
from workspace.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
SEED = sorted((REPO / "examples" / "seed").glob("*.yaml"))
KAITO = sorted((REPO / "examples" / "kaito").rglob("*.yaml"))
BROKEN = sorted((Path(__file__).parent / "broken").glob("*.yaml"))


def test_corpora_are_present():
    assert len(SEED) == 4 and len(KAITO) >= 40 and len(BROKEN) >= 30


@pytest.mark.parametrize("path", SEED, ids=lambda p: p.name)
def test_seed_files_load_unchanged_and_round_trip(path):
    bundle = loader.load_file(path)
    assert len(bundle.workspaces) == 1
    ws = bundle.workspaces[0]
    original = yaml.safe_load(path.read_text())
    assert yaml.safe_load(loader.dump(ws)) == original


@pytest.mark.parametrize("path", KAITO, ids=lambda p: str(p.relative_to(REPO / "examples" / "kaito")))
def test_kaito_examples_load(path):
    bundle = loader.load_file(path, require_workspace=False)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(bundle.workspaces) == sum(d.get("kind") == "Workspace" for d in docs)
    for ws, doc in zip(bundle.workspaces, [d for d in docs if d.get("kind") == "Workspace"]):
        assert yaml.safe_load(loader.dump(ws)) == doc


def test_configmaps_beside_a_workspace_are_kept_by_name():
    bundle = loader.load_file(REPO / "examples" / "kaito" / "kaito_workspace_custom_config.yaml")
    ws = bundle.workspaces[0]
    cm = bundle.config_map(ws.inference.config)
    assert cm is not None and "max-model-len: 131072" in cm["inference_config.yaml"]


def test_secret_data_is_not_kept():
    bundle = loader.load_file(REPO / "examples" / "kaito" / "kaito_workspace_gpt_oss_120b.yaml")
    assert bundle.secrets == ["hf-token"]
    assert "HF_TOKEN" not in repr(bundle)


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_file_fails_with_its_message(path):
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(SpecError) as info:
        loader.load_file(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expect in message, message


def test_both_tuning_and_inference_serve_the_fresh_adapter():
    ws = loader.load_text(
        """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {name: both}
resource: {instanceType: local}
tuning:
  preset: {name: tiny-phi-3}
  method: qlora
  input: {urls: ['https://example.com/d.jsonl']}
  output: {image: 127.0.0.1:5000/adapters/both:1}
inference:
  preset: {name: tiny-phi-3}
"""
    ).workspaces[0]
    adapters = ws.effective_adapters()
    assert [(a.source.name, a.source.image) for a in adapters] == [("both", "127.0.0.1:5000/adapters/both:1")]


def test_every_field_has_a_description():
    schema = spec.Workspace.model_json_schema(by_alias=True)
    missing = []
    for name, definition in schema.get("$defs", {}).items():
        for prop, body in definition.get("properties", {}).items():
            if "description" not in body:
                missing.append(f"{name}.{prop}")
    assert not missing, missing


def test_missing_file_is_named():
    with pytest.raises(SpecError, match="nope.yaml: no such file"):
        loader.load_file("nope.yaml")
