"""kaiflow and oras-py read each other's adapter images, on a real registry.

Why: Kaito's own pusher is ``oras push`` of a ``tar+gzip`` layer, and users inspect adapter images
with oras; kaiflow's client (:mod:`infra.registry`) is its own, so this pins that the two agree on
the wire — in both directions, with and without Basic auth. oras-py 0.2.43's quirks
(../shared/FIELD-NOTES.md) are worked around as its users must: ``auth_backend="basic"`` for an
htpasswd registry, credentials set in memory (its ``login()`` writes ``~/.docker/config.json``),
and digests checked here (it does not verify what it pulls).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import oras.provider
import pytest

from infra import registry

MODEL = "phi-3-mini-4k-instruct"


def _oras(reg, *, auth: bool = False) -> oras.provider.Registry:
    client = oras.provider.Registry(hostname=reg.host, insecure=True, auth_backend="basic" if auth else "token")
    if auth:
        client.auth.set_basic_auth(reg.username, reg.password)
    return client


def _same_files(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in registry.ADAPTER_FILES)


@pytest.mark.parametrize("secured", [False, True], ids=["plain", "htpasswd"])
def test_oras_pulls_what_kaiflow_pushed(request, adapter_dir, settings, tmp_path, secured, _isolated_home):
    reg = request.getfixturevalue("auth_registry" if secured else "plain_registry")
    creds = reg.docker_config() if secured else None
    ref = f"{reg.host}/interop/kaiflow-pushed:1"
    pinned = registry.push_adapter(adapter_dir, ref, model_name=MODEL, settings=settings, credentials=creds)
    client = _oras(reg, auth=secured)

    manifest = client.get_manifest(pinned)  # by digest, as a Workspace pins it
    assert manifest["annotations"] == {"sh.kaito.model.name": MODEL}
    [layer] = manifest["layers"]
    blob = tmp_path / "layer.tar.gz"
    client.download_blob(ref, layer["digest"], str(blob))  # oras does not check the digest: we do
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"]

    pulled = client.pull(target=ref, outdir=str(tmp_path / "oras-out"))  # a tar+gzip layer: oras un-tars it
    assert [Path(p).name for p in pulled] == ["layer.tar.gz"]
    assert _same_files(adapter_dir, tmp_path / "oras-out" / "data")
    assert sorted(p.name for p in (tmp_path / "oras-out" / "data").iterdir()) == sorted(registry.ADAPTER_FILES)
    assert not (_isolated_home / ".docker").exists()


@pytest.mark.parametrize("secured", [False, True], ids=["plain", "htpasswd"])
def test_kaiflow_pulls_what_oras_pushed_as_kaitos_pusher_does(request, adapter_dir, settings, tmp_path, secured,
                                                                monkeypatch, _isolated_home):
    """Kaito's pusher.sh: ``oras push`` of a gzip'd tar of ``data/`` with the model annotation; oras-py
    pushes a directory the same way (a ``gzip -9``-style layer: kaiflow's general reader, not its fast path)."""
    reg = request.getfixturevalue("auth_registry" if secured else "plain_registry")
    work = tmp_path / "kaito"
    (work / "data").mkdir(parents=True)
    for name in registry.ADAPTER_FILES:
        (work / "data" / name).write_bytes((adapter_dir / name).read_bytes())
    monkeypatch.chdir(work)  # oras-py pushes only paths below the working directory
    ref = f"{reg.host}/interop/oras-pushed:1"
    _oras(reg, auth=secured).push(target=ref, files=["data"], manifest_annotations={"sh.kaito.model.name": MODEL},
                                   quiet=True)

    creds = reg.docker_config() if secured else None
    result = registry.pull(ref, tmp_path / "out", settings=settings, credentials=creds)
    assert sorted(result.files) == sorted(registry.ADAPTER_FILES)
    assert result.annotations["sh.kaito.model.name"] == MODEL
    assert _same_files(adapter_dir, tmp_path / "out")
    assert registry.store_for(ref, settings, creds).resolve(ref) == result.digest
    assert not (_isolated_home / ".docker").exists()


def test_oras_file_layers_land_by_their_title(plain_registry, adapter_dir, settings, tmp_path, monkeypatch):
    """``oras push host/repo:tag FILE:MEDIATYPE ...``: one layer per file, as it is, named by its title
    annotation; kaiflow lands each at that path (here the image's root: ``subdir=""``).

    Not supported: files pushed *without* a media type, which oras-py labels
    ``application/vnd.oci.image.layer.v1.tar`` although the blob is the bare file; kaiflow reads a
    ``...tar`` layer as a tar archive and says the layer is damaged."""
    monkeypatch.chdir(adapter_dir)
    ref = f"{plain_registry.host}/interop/oras-files:1"
    _oras(plain_registry).push(target=ref, files=[f"{name}:application/octet-stream" for name in registry.ADAPTER_FILES],
                               quiet=True)
    result = registry.pull(ref, tmp_path / "out", settings=settings, subdir="")
    assert sorted(result.files) == sorted(registry.ADAPTER_FILES)
    assert _same_files(adapter_dir, tmp_path / "out")
    assert not list((tmp_path / "out").glob(".kaiflow-pull-*"))
