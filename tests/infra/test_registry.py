"""Adapter images against a real registry (Debian's docker-registry) and a real OCI layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import time
import zlib
from pathlib import Path

import pytest

from infra import registry
from tests.support import registry as registry_support
from workspace import errors

MODEL = "phi-3-mini-4k-instruct"


def _manifest(reg: registry_support.LocalRegistry, repo: str, ref: str) -> tuple[dict, str]:
    status, headers, body = reg.request("GET", f"/v2/{repo}/manifests/{ref}",
                                        headers={"Accept": registry.OCI_MANIFEST})
    assert status == 200, body
    return json.loads(body), headers["docker-content-digest"]


def _blob(reg: registry_support.LocalRegistry, repo: str, digest: str) -> bytes:
    status, _, body = reg.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert status == 200
    return body


def _same_files(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in registry.ADAPTER_FILES)


# --- layout of what we push ---------------------------------------------------------------------
def test_push_writes_kaitos_one_layer_layout(plain_registry, adapter_dir, settings):
    pinned = registry.push_adapter(adapter_dir, f"{plain_registry.host}/adapters/layout:0.0.1",
                                   model_name=MODEL, settings=settings)
    repo_ref, digest = pinned.split("@")
    assert repo_ref == f"{plain_registry.host}/adapters/layout"
    manifest, served_digest = _manifest(plain_registry, "adapters/layout", "0.0.1")
    assert served_digest == digest
    assert manifest["annotations"] == {"sh.kaito.model.name": MODEL}
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    blob = _blob(plain_registry, "adapters/layout", layer["digest"])
    assert hashlib.sha256(blob).hexdigest() == layer["digest"].split(":")[1] and len(blob) == layer["size"]
    tar_bytes = gzip.decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.getnames() == ["data", "data/adapter_config.json", "data/adapter_model.safetensors"]
        assert tar.extractfile("data/adapter_model.safetensors").read() == (adapter_dir / "adapter_model.safetensors").read_bytes()
    config = json.loads(_blob(plain_registry, "adapters/layout", manifest["config"]["digest"]))
    assert config == {"rootfs": {"diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}}


def test_pushing_the_same_adapter_again_gives_the_same_digest(plain_registry, adapter_dir, settings):
    first = registry.push_adapter(adapter_dir, f"{plain_registry.host}/adapters/same:a", model_name=MODEL, settings=settings)
    second = registry.push_adapter(adapter_dir, f"{plain_registry.host}/adapters/same:b", model_name=MODEL, settings=settings)
    assert first.split("@")[1] == second.split("@")[1]


# --- pull ----------------------------------------------------------------------------------------
def test_pull_by_tag_and_by_digest_puts_files_directly_in_dest(plain_registry, adapter_dir, settings, tmp_path):
    ref = f"{plain_registry.host}/adapters/pull:1"
    pinned = registry.push_adapter(adapter_dir, ref, model_name=MODEL, settings=settings)
    by_tag = registry.pull(ref, tmp_path / "by-tag", settings=settings)
    by_digest = registry.pull(pinned, tmp_path / "by-digest", settings=settings)
    for result, dest in ((by_tag, tmp_path / "by-tag"), (by_digest, tmp_path / "by-digest")):
        assert result.reference == pinned
        assert sorted(result.files) == sorted(registry.ADAPTER_FILES)
        assert result.annotations["sh.kaito.model.name"] == MODEL
        assert sorted(p.name for p in dest.iterdir()) == sorted(registry.ADAPTER_FILES)
        assert _same_files(adapter_dir, dest)
    assert registry.store_for(ref, settings).resolve(ref) == pinned.split("@")[1]


def test_pull_reads_an_image_made_by_kaitos_pusher(plain_registry, tmp_path, settings):
    """Kaito's pusher.sh: `tar c data`, `gzip -9`, config with diff_ids, oras push of the .tar.gz."""
    work = tmp_path / "kaito"
    (work / "data").mkdir(parents=True)
    (work / "data" / "adapter_config.json").write_text('{"r": 4}')
    (work / "data" / "adapter_model.safetensors").write_bytes(os.urandom(5000))
    subprocess.run(["tar", "c", "-f", "layer.tar", "data"], cwd=work, check=True)
    diff_id = "sha256:" + hashlib.sha256((work / "layer.tar").read_bytes()).hexdigest()
    subprocess.run(["gzip", "-9", "layer.tar"], cwd=work, check=True)
    layer = (work / "layer.tar.gz").read_bytes()
    config = json.dumps({"rootfs": {"diff_ids": [diff_id]}}).encode()
    repo = "kaito/made"
    for blob in (layer, config):
        _raw_push_blob(plain_registry, repo, blob)
    manifest = {
        "schemaVersion": 2, "mediaType": registry.OCI_MANIFEST,
        "config": {"mediaType": registry.OCI_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": registry.OCI_LAYER_TGZ, "digest": _digest(layer), "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "layer.tar.gz"}}],
        "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z", "sh.kaito.model.name": MODEL},
    }
    status, _, body = plain_registry.request("PUT", f"/v2/{repo}/manifests/v1", json.dumps(manifest).encode(),
                                             {"Content-Type": registry.OCI_MANIFEST})
    assert status == 201, body
    result = registry.pull(f"{plain_registry.host}/{repo}:v1", tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "adapter_config.json").read_text() == '{"r": 4}'
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (work / "data" / "adapter_model.safetensors").read_bytes()
    assert result.annotations["sh.kaito.model.name"] == MODEL


def test_a_corrupted_blob_is_detected_and_nothing_lands(plain_registry, adapter_dir, settings, tmp_path):
    ref = f"{plain_registry.host}/adapters/corrupt:1"
    registry.push_adapter(adapter_dir, ref, model_name=MODEL, settings=settings)
    manifest, _ = _manifest(plain_registry, "adapters/corrupt", "1")
    hexdigest = manifest["layers"][0]["digest"].split(":")[1]
    stored = plain_registry.data_dir / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    original = stored.read_bytes()
    try:
        stored.write_bytes(original[:-600] + bytes(600))  # same size, different bytes (tar padding region too)
        dest = tmp_path / "out"
        with pytest.raises(errors.RegistryError, match="arrived corrupted") as info:
            registry.pull(ref, dest, settings=settings)
        assert info.value.transient
        assert not [p for p in dest.rglob("*") if p.is_file()]
    finally:
        stored.write_bytes(original)


def test_pull_of_a_missing_tag_says_not_found(plain_registry, settings, tmp_path):
    with pytest.raises(errors.RegistryError, match="not found") as info:
        registry.pull(f"{plain_registry.host}/adapters/nothing:here", tmp_path / "x", settings=settings)
    assert not info.value.transient


# --- credentials -----------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["auth", "fields"])
def test_push_and_pull_with_htpasswd_auth_from_a_docker_config(auth_registry, adapter_dir, settings, tmp_path, style, _isolated_home):
    config = auth_registry.docker_config(style=style)
    ref = f"{auth_registry.host}/adapters/authed:{style}"
    pinned = registry.push_adapter(adapter_dir, ref, model_name=MODEL, settings=settings, credentials=config)
    registry.pull(pinned, tmp_path / "out", settings=settings, credentials=config)
    assert _same_files(adapter_dir, tmp_path / "out")
    assert not (_isolated_home / ".docker").exists(), "no docker config may be written behind the user's back"


def test_credentials_from_environment_and_config_file(auth_registry, adapter_dir, settings, tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {f"https://{auth_registry.host}/v1/": auth_registry.docker_config()["auths"][auth_registry.host]}}))
    settings.docker_config = path
    registry.push_adapter(adapter_dir, f"{auth_registry.host}/adapters/file:1", settings=settings)
    settings.docker_config = None
    monkeypatch.setenv("KAIFLOW_REGISTRY_USERNAME", auth_registry.username)
    monkeypatch.setenv("KAIFLOW_REGISTRY_PASSWORD", auth_registry.password)
    registry.pull(f"{auth_registry.host}/adapters/file:1", tmp_path / "out", settings=settings)
    assert _same_files(adapter_dir, tmp_path / "out")


def test_wrong_password_fails_at_once_naming_the_registry_and_the_secret(auth_registry, adapter_dir, settings, caplog):
    secret = "definitely-Wrong-pw-123"
    creds = registry.credentials_from_docker_config(auth_registry.docker_config(password=secret), auth_registry.host,
                                                    source="imagePushSecret 'acr-secret'")
    started = time.monotonic()
    with pytest.raises(errors.RegistryError) as info:
        registry.push_adapter(adapter_dir, f"{auth_registry.host}/adapters/denied:1", settings=settings, credentials=creds)
    message = str(info.value)
    assert f"authentication failed for registry {auth_registry.host}" in message
    assert "imagePushSecret 'acr-secret'" in message
    assert not info.value.transient and time.monotonic() - started < 5
    assert secret not in message and secret not in caplog.text and secret not in repr(creds)


def test_no_credentials_for_an_auth_registry_says_where_to_set_them(auth_registry, adapter_dir, settings):
    with pytest.raises(errors.RegistryError, match="requires authentication and no credentials") as info:
        registry.push_adapter(adapter_dir, f"{auth_registry.host}/adapters/anon:1", settings=settings)
    assert "imagePushSecret" in str(info.value)


def test_docker_config_parsing():
    auth = {"auths": {"https://myacr.azurecr.io/v1/": {"auth": "dXNlcjpwYTpzcw=="}}}  # user:pa:ss
    creds = registry.credentials_from_docker_config(json.dumps(auth), "myacr.azurecr.io", source="secret 's'")
    assert (creds.username, creds.password, creds.source) == ("user", "pa:ss", "secret 's'")
    assert "pa:ss" not in repr(creds)
    assert registry.credentials_from_docker_config(auth, "other.io") is None
    with pytest.raises(errors.RegistryError, match="not valid JSON"):
        registry.credentials_from_docker_config("{nope", "x.io")


# --- faults --------------------------------------------------------------------------------------
def test_registry_down_is_retried_with_backoff_then_a_clear_transient_error(tmp_path, adapter_dir, settings):
    reg = registry_support.LocalRegistry(tmp_path / "down")  # never started
    settings.attempts, settings.backoff_s = 3, 0.2
    started = time.monotonic()
    with pytest.raises(errors.RegistryError) as info:
        registry.push_adapter(adapter_dir, f"{reg.host}/adapters/x:1", settings=settings)
    assert time.monotonic() - started >= 0.2 + 0.4  # two backoffs between three attempts
    assert info.value.transient and errors.is_transient(info.value)
    assert "after 3 attempts" in str(info.value) and reg.host in str(info.value)


def test_a_registry_that_comes_back_during_the_retries_gets_the_push(tmp_path, adapter_dir, settings):
    registry_support.require_binaries()
    reg = registry_support.LocalRegistry(tmp_path / "flaky")
    settings.attempts, settings.backoff_s = 8, 0.25
    timer = threading.Timer(0.5, reg.start)
    timer.start()
    try:
        pinned = registry.push_adapter(adapter_dir, f"{reg.host}/adapters/late:1", settings=settings)
        timer.join()
        registry.pull(pinned, tmp_path / "out", settings=settings)
        assert _same_files(adapter_dir, tmp_path / "out")
    finally:
        timer.join()
        reg.stop()


def test_a_push_broken_off_midway_leaves_no_tag(tmp_path, settings):
    registry_support.require_binaries()
    adapter = tmp_path / "big"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(24 << 20))
    settings.attempts, settings.compress_level = 1, 9  # level 9: slow enough to cut the upload midway
    reg = registry_support.LocalRegistry(tmp_path / "cut").start()
    uploads = reg.data_dir / "docker/registry/v2/repositories/adapters/cut/_uploads"

    def kill_when_uploading() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (uploads.exists() and any(uploads.iterdir())):
            time.sleep(0.005)
        reg.stop()

    killer = threading.Thread(target=kill_when_uploading)
    killer.start()
    try:
        with pytest.raises(errors.RegistryError):
            registry.push_adapter(adapter, f"{reg.host}/adapters/cut:1", settings=settings)
        killer.join()
        reg.start()
        status, _, _ = reg.request("GET", "/v2/adapters/cut/manifests/1")
        assert status == 404
        assert registry.store_for(f"{reg.host}/adapters/cut:1", settings).resolve(f"{reg.host}/adapters/cut:1") is None
    finally:
        killer.join()
        reg.stop()


# --- OCI layout ----------------------------------------------------------------------------------
def test_layout_store_push_pull_and_copy_to_a_registry(plain_registry, adapter_dir, settings, tmp_path):
    layout = tmp_path / "adapters-layout"
    pinned = registry.push_adapter(adapter_dir, f"oci:{layout}:v1", model_name=MODEL, settings=settings)
    digest = pinned.split("@")[1]
    assert pinned == f"oci:{layout.resolve()}@{digest}"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == digest and entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    assert manifest["annotations"]["sh.kaito.model.name"] == MODEL
    registry.pull(f"oci:{layout}:v1", tmp_path / "from-tag", settings=settings)
    registry.pull(pinned, tmp_path / "from-digest", settings=settings)
    assert _same_files(adapter_dir, tmp_path / "from-tag") and _same_files(adapter_dir, tmp_path / "from-digest")
    copied = registry.copy(f"oci:{layout}:v1", f"{plain_registry.host}/adapters/copied:v1", settings)
    assert copied == f"{plain_registry.host}/adapters/copied@{digest}"
    registry.pull(f"{plain_registry.host}/adapters/copied:v1", tmp_path / "from-registry", settings=settings)
    assert _same_files(adapter_dir, tmp_path / "from-registry")


def test_bare_reference_goes_to_the_layout_root_unless_a_registry_is_configured(plain_registry, adapter_dir, settings, tmp_path):
    pinned = registry.push_adapter(adapter_dir, "phi-3-adapter:0.0.1", model_name=MODEL, settings=settings)
    assert pinned.startswith(f"oci:{(settings.layout_root / 'phi-3-adapter').resolve()}@sha256:")
    settings.registry = plain_registry.host
    assert isinstance(registry.store_for("phi-3-adapter:0.0.1", settings), registry.RegistryStore)
    pinned_remote = registry.push_adapter(adapter_dir, "phi-3-adapter:0.0.1", model_name=MODEL, settings=settings)
    assert pinned_remote == f"{plain_registry.host}/phi-3-adapter@{pinned.split('@')[1]}"


def test_a_failed_layout_push_leaves_no_tag(tmp_path, settings):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "adapter_config.json").write_text("{}")
    with pytest.raises(errors.RegistryError, match="lacks adapter_model.safetensors"):
        registry.push_adapter(incomplete, f"oci:{tmp_path / 'l'}:v1", settings=settings)
    assert registry.store_for(f"oci:{tmp_path / 'l'}:v1", settings).resolve(f"oci:{tmp_path / 'l'}:v1") is None


# --- references -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("myacr.azurecr.io/adapters/phi-3:0.0.1", ("myacr.azurecr.io", "adapters/phi-3", "0.0.1", None)),
    ("localhost:5000/a", ("localhost:5000", "a", None, None)),
    ("127.0.0.1:5000/a/b@sha256:" + "a" * 64, ("127.0.0.1:5000", "a/b", None, "sha256:" + "a" * 64)),
    ("phi-3-adapter:v1", ("", "phi-3-adapter", "v1", None)),
])
def test_reference_parsing(text, expected):
    ref = registry.parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert str(ref) == text


@pytest.mark.parametrize("text,needle", [
    ("ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1", "invalid repository"),
    ("host.io/repo@sha256:123", "invalid digest"),
    ("host.io/repo:bad tag", "invalid tag"),
    ("", "empty image reference"),
])
def test_bad_references_say_what_to_change(text, needle):
    with pytest.raises(errors.RegistryError, match=needle):
        registry.parse_reference(text)


# --- helpers -------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _raw_push_blob(reg: registry_support.LocalRegistry, repo: str, data: bytes) -> None:
    status, headers, _ = reg.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202
    location = headers["location"]
    sep = "&" if "?" in location else "?"
    path = location.split(reg.host, 1)[-1]
    status, _, body = reg.request("PUT", f"{path}{sep}digest={_digest(data)}", data,
                                  {"Content-Type": "application/octet-stream"})
    assert status == 201, body


# --- the pull's fast path (stored-block gzip / plain tar parsed in one pass) and its fallbacks ---------
def _tar(members: dict[str, bytes], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _push_layer(reg, repo: str, layer: bytes, media_type: str) -> str:
    config = b'{"rootfs":{"diff_ids":[]}}'
    for blob in (layer, config):
        _raw_push_blob(reg, repo, blob)
    manifest = {"schemaVersion": 2, "mediaType": registry.OCI_MANIFEST,
                "config": {"mediaType": registry.OCI_CONFIG, "digest": _digest(config), "size": len(config)},
                "layers": [{"mediaType": media_type, "digest": _digest(layer), "size": len(layer)}]}
    status, _, body = reg.request("PUT", f"/v2/{repo}/manifests/v1", json.dumps(manifest).encode(),
                                  {"Content-Type": registry.OCI_MANIFEST})
    assert status == 201, body
    return f"{reg.host}/{repo}:v1"


LONG = "data/" + "n" * 150 + ".bin"  # > 100 characters: needs a pax header (not parsed by the fast path)


@pytest.mark.parametrize("case", ["plain-tar", "stored-gzip-pax-midway", "stored-gzip-odd-sizes", "gzip-9"])
def test_every_layer_shape_pulls_the_same_files(plain_registry, settings, tmp_path, case):
    big = os.urandom(300_001)  # not a multiple of a stored block (65535) or of a read chunk
    members = {"data/adapter_config.json": b'{"r": 8}', "data/adapter_model.safetensors": big,
               "data/empty.txt": b"", "other/ignored.txt": b"not under data/"}
    if case == "stored-gzip-pax-midway":
        members[LONG] = b"long name"
    tar_bytes = _tar(members, tarfile.PAX_FORMAT if "pax" in case else tarfile.USTAR_FORMAT)
    if case == "plain-tar":
        layer, media_type = tar_bytes, "application/vnd.oci.image.layer.v1.tar"
    else:
        level = 9 if case == "gzip-9" else 0
        gz = zlib.compressobj(level, zlib.DEFLATED, 31)
        step = 7777 if case == "stored-gzip-odd-sizes" else 1 << 20  # many small stored blocks
        layer = b"".join(gz.compress(tar_bytes[i:i + step]) for i in range(0, len(tar_bytes), step)) + gz.flush()
        media_type = registry.OCI_LAYER_TGZ
    ref = _push_layer(plain_registry, f"shapes/{case}", layer, media_type)
    result = registry.pull(ref, tmp_path / "out", settings=settings)
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").read_bytes() == big
    assert (out / "adapter_config.json").read_bytes() == b'{"r": 8}'
    assert (out / "empty.txt").read_bytes() == b""
    assert not (out / "ignored.txt").exists() and not (out / "other").exists()
    if "pax" in case:
        assert (out / LONG.removeprefix("data/")).read_bytes() == b"long name"
    assert sorted(result.files) == sorted(n.removeprefix("data/") for n in members if n.startswith("data/"))
    assert not list(out.glob(".kaiflow-pull-*")), "staging folder left behind"


def test_a_layer_cut_short_is_an_error_not_a_partial_adapter(plain_registry, settings, tmp_path):
    tar_bytes = _tar({"data/adapter_model.safetensors": os.urandom(200_000)}, tarfile.USTAR_FORMAT)
    ref = _push_layer(plain_registry, "shapes/cut", tar_bytes[:150_000], "application/vnd.oci.image.layer.v1.tar")
    with pytest.raises(errors.RegistryError, match="damaged|not a readable tar"):
        registry.pull(ref, tmp_path / "out", settings=settings)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_kaiflows_own_layers_take_the_fast_path(adapter_dir, settings, tmp_path):
    """What kaiflow pushes (gzip level 0: stored blocks, ustar headers) is read without the
    general tarfile/zlib reader; anything the fast path cannot parse says so with NotFast."""
    ref = f"oci:{tmp_path / 'layout'}:1"
    registry.push_adapter(adapter_dir, ref, model_name=MODEL, settings=settings)
    store = registry.store_for(ref, settings=settings)
    parsed = store.parse(ref)
    _, manifest = store.fetch_image_manifest(parsed)
    layer = manifest["layers"][0]
    staging = tmp_path / "staging"
    staging.mkdir()
    registry.fastpull.fast_untar(store.iter_blob(parsed, layer["digest"]), layer["digest"], layer["size"], staging,
                                 "data", ref, gzipped=True)  # raises NotFast if it had to fall back
    assert _same_files(staging, adapter_dir)
    gz9 = zlib.compress(_tar({"data/x": b"x" * 1000}, tarfile.USTAR_FORMAT), 9)
    with pytest.raises(registry.fastpull.NotFast):
        registry.fastpull.fast_untar(iter([b"\x1f\x8b\x08\x00" + bytes(6) + gz9[2:]]), "sha256:0", -1, staging, "data", "t", gzipped=True)
