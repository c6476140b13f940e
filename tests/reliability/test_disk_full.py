"""The disk fills up while tuning and while pushing: a clear error, and what was there before intact.

The work folders sit on a real, small tmpfs (mounted here as root; the tests skip where mounting is
not allowed), filled up to a few KiB before the step runs, so the real programs hit ENOSPC.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from infra import records, registry
from infra.platforms import local
from infra.platforms.base import Dataset, Tuned
from tests.support import fileserver
from workspace import loader
from workspace.errors import KaiflowError, TuningError

WORKSPACE = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config}}
data:
  training_config.yaml: |
    training_config:
      TrainingArguments:
        max_steps: 20
        logging_steps: 10
        save_steps: 10
---
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}
resource:
  instanceType: local
tuning:
  preset: {{name: tiny-phi-3}}
  method: qlora
  config: {name}-config
  input:
    urls: ["https://data.example.com/qa.jsonl"]
  output:
    image: "adapters/{name}:1"
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs; unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_adapter(folder: Path, size: int) -> Path:
    """An adapter folder as the tuning program leaves one (the bytes need not be a real model)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}')
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(size))
    (folder / "COMPLETE").write_text("done\n")
    return folder


def test_disk_full_while_tuning_is_a_clear_error_and_the_previous_adapter_is_intact(
        small_disk, monkeypatch, tmp_path, tiny_model):
    home = tmp_path / "home"
    (home / "adapters").parent.mkdir(parents=True)
    os.symlink(small_disk, home / "adapters")  # the tuning's work folder is on the small disk
    monkeypatch.setenv("KAIFLOW_HOME", str(home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    name = "rel-disk-tune"
    bundle = loader.load_text(WORKSPACE.format(name=name))
    ws, cms = bundle.workspaces[0], bundle.config_maps
    data = tmp_path / "data"
    data.mkdir()
    fileserver.write_qa_jsonl(data / "qa.jsonl", [("What is the capital of France?", "Paris.")] * 4)
    previous = fake_adapter(small_disk / ("a" * 24), 64 * 1024)
    before = digest_tree(previous)
    fill(small_disk, leave=16 * 1024)

    with pytest.raises(TuningError) as err:
        local.LocalPlatform().tune(ws, Dataset(dir=str(data), digest="sha256:" + "0" * 64), cms, "b" * 64,
                                   records.RecordSink(name))
    assert "No space left on device" in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value)
    assert digest_tree(previous) == before  # the previous adapter: untouched
    assert not (small_disk / ("b" * 24)).exists()  # no half adapter taken for a finished one
    cond = records.load(name).condition("JobStarted")
    assert cond["status"] == "False" and "No space left on device" in cond["message"]


def test_disk_full_while_pushing_is_a_clear_error_and_the_previous_image_is_intact(small_disk, monkeypatch, tmp_path):
    monkeypatch.setenv("KAIFLOW_OCI_LAYOUT_ROOT", str(small_disk))  # the OCI layout the push writes to
    monkeypatch.delenv("KAIFLOW_REGISTRY", raising=False)
    name = "rel-disk-push"
    ws = loader.load_text(WORKSPACE.format(name=name)).workspaces[0]
    platform = local.LocalPlatform()
    first = fake_adapter(tmp_path / "first", 64 * 1024)
    image = platform.publish(ws, Tuned(cache_key="a" * 64, reused=False, adapter_dir=str(first)), records.RecordSink(name))
    layout_before = digest_tree(small_disk)
    fill(small_disk, leave=64 * 1024)

    bigger = fake_adapter(tmp_path / "second", 1024 * 1024)
    with pytest.raises(KaiflowError) as err:
        platform.publish(ws, Tuned(cache_key="b" * 64, reused=False, adapter_dir=str(bigger)), records.RecordSink(name))
    assert "No space left on device" in str(err.value) or "space" in str(err.value).lower(), str(err.value)
    (small_disk / "filler").unlink()
    # the image pushed before is intact: same files, and it still pulls with its digest verified
    after = digest_tree(small_disk)
    assert all(after.get(k) == v for k, v in layout_before.items() if "blobs" in k)
    pulled = registry.pull(image.reference, tmp_path / "pulled")
    assert pulled.digest == image.digest
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == (first / "adapter_model.safetensors").read_bytes()
