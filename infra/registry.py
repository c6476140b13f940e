"""Adapter images: push a tuned adapter as Kaito lays it out, pull any image's ``/data``.

Kaito's pusher (``pkg/utils/image/pusher.sh``) makes an image of exactly one layer, a tar+gzip of
``data/adapter_config.json`` and ``data/adapter_model.safetensors``, a config blob
``{"rootfs":{"diff_ids":[...]}}`` and the manifest annotation ``sh.kaito.model.name=<preset>``.
kaiflow writes the same, so Kaito-made and kaiflow-made adapter images are interchangeable;
:func:`Store.pull` reads either (and docker-style images whose ``/data`` holds files, as the
dataset ``image`` input has), landing the files of ``data/`` directly in the destination.

Two stores behind one protocol (:class:`Store`): :class:`RegistryStore` speaks the OCI
distribution API to a registry; :class:`LayoutStore` writes an OCI image layout on disk, the
local default when no registry is configured (``oci:/path:tag`` references); :func:`copy` moves
an image between them with digests unchanged. :func:`store_for` picks one for a reference.

Why a small client on httpx rather than oras-py 0.2.43 (see FIELD-NOTES): its ``login()`` writes
``~/.docker/config.json`` even on a wrong password, it does not verify digests on pull, a
directory push makes a different layer from Kaito's, and it has no way to stream a layer that is
built on the fly. Here a layer is built, hashed and uploaded in one pass (a chunked ``PATCH``
whose digest is computed while it streams), and a pull hashes, un-gzips and un-tars in one pass
into a staging folder whose files move into place only after the digest matched; ``bench/
transfer.py`` measures both against plain HTTP PUT/GET of the same bytes.

The pull has a hot path (:func:`_fast_untar`) for the layers kaiflow itself writes and for plain
``tar`` layers: stored deflate blocks and ustar headers are parsed by hand, the socket's pieces are
joined into ~1 MiB blocks (the one copy) that go to ``os.writev`` as slices and to sha256 in a
second thread. A real compressed layer (Kaito's ``gzip -9``) or a pax/long-name member falls back
to ``tarfile`` + zlib.

Layers are gzip at level 0 by default (``RegistrySettings.compress_level``): adapter weights
compress by a few percent while zlib level 1 runs at ~60 MB/s on this class of machine, several
times slower than the network; level 0 keeps Kaito's ``tar+gzip`` media type at memory speed.
Tar and gzip headers carry no timestamps, so an unchanged adapter gets the same digest again.

Safety: a tag is written last, after every blob exists, so a failed push never leaves a tag on a
partial image. Credentials (:class:`Credentials`) stay in memory: nothing here writes a docker
config, and no message, log line or repr contains a password or an ``Authorization`` header.
Transient faults (connection refused/reset, timeouts, 429, 5xx) are retried with exponential
backoff; then a :class:`workspace.errors.RegistryError` with ``transient=True`` says what to check.

Auth: Basic, or bearer tokens from the registry's token service (Docker's token spec, what ACR,
GHCR, Docker Hub and Harbor use), one per repository scope, fetched anonymously when there are no
credentials (public images). A token the registry refuses later (expired) is fetched again and the
request re-sent (a streamed upload through the caller's retry, its body re-produced); a refusal
with ``insufficient_scope`` is reported as missing rights (``RegistryAccessDenied``), not as a
wrong password. Tested against docker-registry with ``auth: token`` (tests/support/tokenserver.py).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

from infra import oci_layout
from workspace import errors

log = logging.getLogger(__name__)

MODEL_NAME_ANNOTATION = "sh.kaito.model.name"
TITLE_ANNOTATION = "org.opencontainers.image.title"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
TAR_LAYER_TYPES = ("tar", "tar+gzip", "tar.gzip", "tar+zstd")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
CHUNK = 1 << 20
LAYOUT_PREFIX = "oci:"

_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reference:
    """A parsed image reference: ``[registry/]repository[:tag][@digest]`` or ``oci:PATH[:tag|@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    layout: Path | None = None

    @property
    def ref(self) -> str:
        """What to fetch: the digest when pinned, else the tag (``latest`` by default)."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """This reference pinned by ``digest`` (tag dropped), as a string."""
        if self.layout is not None:
            return f"{LAYOUT_PREFIX}{self.layout}@{digest}"
        return f"{self.registry}/{self.repository}@{digest}" if self.registry else f"{self.repository}@{digest}"

    def __str__(self) -> str:
        base = f"{LAYOUT_PREFIX}{self.layout}" if self.layout is not None else (
            f"{self.registry}/{self.repository}" if self.registry else self.repository)
        return base + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(reference: str) -> Reference:
    """Parse an image reference; raises RegistryError naming what is malformed."""
    text = (reference or "").strip()
    if not text:
        raise errors.RegistryError("empty image reference: give one like registry.example.com/adapters/name:tag")
    if text.startswith(LAYOUT_PREFIX):
        return _parse_layout_reference(text)
    name, digest = _split_digest(text, reference)
    registry, _, rest = name.partition("/")
    if not rest or not ("." in registry or ":" in registry or registry == "localhost"):
        registry, rest = "", name
    repository, tag = rest, None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = rest.rsplit(":", 1)
    _check_parts(reference, repository, tag)
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _parse_layout_reference(text: str) -> Reference:
    body, digest = _split_digest(text[len(LAYOUT_PREFIX):], text)
    path, tag = body, None
    head, sep, last = body.rpartition("/")
    if ":" in last:
        name, tag = last.rsplit(":", 1)
        path = f"{head}{sep}{name}"
        if tag and not _TAG_RE.match(tag):
            raise errors.RegistryError(f"invalid tag {tag!r} in {text!r}: use letters, digits, '_', '.', '-' (max 128)")
    if not path:
        raise errors.RegistryError(f"{text!r} names no directory: write oci:/path/to/layout:tag")
    layout = Path(path).expanduser().resolve()
    return Reference(registry="", repository=layout.name, tag=tag, digest=digest, layout=layout)


def _split_digest(text: str, original: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    name, digest = text.rsplit("@", 1)
    if not _DIGEST_RE.match(digest):
        raise errors.RegistryError(f"invalid digest in image reference {original!r}: expected sha256:<64 hex digits>")
    return name, digest


def _check_parts(original: str, repository: str, tag: str | None) -> None:
    if not _REPO_RE.match(repository):
        raise errors.RegistryError(
            f"invalid repository {repository!r} in image reference {original!r}: use lowercase letters, "
            "digits and separators (. _ - /), e.g. myregistry.azurecr.io/adapters/phi-3:0.0.1"
        )
    if tag is not None and not _TAG_RE.match(tag):
        raise errors.RegistryError(f"invalid tag {tag!r} in image reference {original!r}: use letters, digits, '_', '.', '-' (max 128)")


# ---------------------------------------------------------------------------------------------
# credentials and settings
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Credentials:
    """A username and password (or token) for one registry, kept in memory only.

    ``source`` says where they came from ("imagePushSecret 'acr-secret'", "docker config
    /path/config.json", ...) so an authentication error can name what to fix.
    """

    username: str
    password: str = dataclasses.field(repr=False)
    source: str = "the credentials passed in"


DockerConfig = Mapping[str, Any] | str | Path


def credentials_from_docker_config(config: DockerConfig, registry: str, *, source: str | None = None) -> Credentials | None:
    """The entry for ``registry`` in a docker ``config.json`` (a dict, a JSON string or a path).

    Accepts ``auths`` entries keyed ``host``, ``https://host`` or ``https://host/v1/`` with either
    ``auth`` (base64 ``user:password``) or ``username``/``password``; a Kubernetes
    ``.dockerconfigjson`` secret has the same shape. Returns None when there is no entry.
    """
    doc, where = _load_docker_config(config, source)
    auths = doc.get("auths", doc) if isinstance(doc, Mapping) else {}
    for key, entry in (auths or {}).items():
        if _registry_host(key) != _registry_host(registry) or not isinstance(entry, Mapping):
            continue
        if entry.get("username") and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]), where)
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise errors.RegistryError(f"the 'auth' field for {registry} in {where} is not base64 of user:password") from exc
            return Credentials(user, password, where)
        if entry.get("identitytoken"):
            raise errors.RegistryError(
                f"{where} holds an identity token for {registry}; kaiflow needs username/password "
                "(for ACR: an admin user or a service principal / token password)"
            )
    return None


def _load_docker_config(config: DockerConfig, source: str | None) -> tuple[Mapping[str, Any], str]:
    if isinstance(config, Mapping):
        return config, source or "the docker config passed in"
    text, where = str(config), source or f"docker config {config}"
    if not text.lstrip().startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise errors.RegistryError(f"cannot read docker config {path}: {exc.strerror}; fix the path") from exc
    try:
        return json.loads(text), where
    except ValueError as exc:
        raise errors.RegistryError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file or secret") from exc


def _registry_host(key: str) -> str:
    host = re.sub(r"^https?://", "", key.strip()).split("/", 1)[0]
    return {"index.docker.io": "docker.io", "registry-1.docker.io": "docker.io"}.get(host, host)


@dataclasses.dataclass
class RegistrySettings:
    """Where adapters go and how hard to try. ``from_env()`` reads the ``KAIFLOW_*`` variables."""

    layout_root: Path = dataclasses.field(default_factory=lambda: _kaiflow_home() / "oci-layout")
    registry: str | None = None
    insecure_registries: tuple[str, ...] = ()
    docker_config: Path | None = None
    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    timeout_s: float = 60.0
    compress_level: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RegistrySettings":
        env = os.environ if env is None else env
        s = cls()
        if env.get("KAIFLOW_OCI_LAYOUT_ROOT"):
            s.layout_root = Path(env["KAIFLOW_OCI_LAYOUT_ROOT"]).expanduser()
        s.registry = env.get("KAIFLOW_REGISTRY") or None
        s.insecure_registries = tuple(h.strip() for h in env.get("KAIFLOW_INSECURE_REGISTRIES", "").split(",") if h.strip())
        if env.get("KAIFLOW_DOCKER_CONFIG"):
            s.docker_config = Path(env["KAIFLOW_DOCKER_CONFIG"]).expanduser()
        s.attempts = int(env.get("KAIFLOW_REGISTRY_ATTEMPTS", s.attempts))
        s.backoff_s = float(env.get("KAIFLOW_REGISTRY_BACKOFF_S", s.backoff_s))
        return s


def _kaiflow_home() -> Path:
    return Path(os.environ.get("KAIFLOW_HOME", "~/.kaiflow")).expanduser()


def resolve_credentials(registry: str, settings: RegistrySettings,
                        credentials: Credentials | DockerConfig | None = None) -> Credentials | None:
    """Credentials for ``registry``: explicit ones, else KAIFLOW_REGISTRY_USERNAME/PASSWORD, else
    a docker config (``settings.docker_config``, then ``$DOCKER_CONFIG`` or ``~/.docker/config.json``,
    read only). ``credHelpers``/``credsStore`` are not consulted."""
    if isinstance(credentials, Credentials):
        return credentials
    if credentials is not None:
        return credentials_from_docker_config(credentials, registry)
    user, password = os.environ.get("KAIFLOW_REGISTRY_USERNAME"), os.environ.get("KAIFLOW_REGISTRY_PASSWORD")
    if user and password is not None:
        return Credentials(user, password, "KAIFLOW_REGISTRY_USERNAME/KAIFLOW_REGISTRY_PASSWORD")
    for path in (settings.docker_config,
                 Path(os.environ.get("DOCKER_CONFIG", "~/.docker")).expanduser() / "config.json"):
        if path is not None and Path(path).is_file():
            found = credentials_from_docker_config(path, registry)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# the store protocol and the image logic shared by both stores
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PullResult:
    reference: str  # pinned by digest
    digest: str
    files: list[str]
    annotations: dict[str, str]


class Store(Protocol):
    """Where adapter images live: a registry or an OCI layout on disk."""

    def push_adapter(self, adapter_dir: Path, reference: str, *, model_name: str | None = None) -> str: ...
    def pull(self, reference: str, dest_dir: Path, *, subdir: str = "data") -> PullResult: ...
    def resolve(self, reference: str) -> str | None: ...


class _ImageStore:
    """Push/pull logic on top of five primitives that each store implements."""

    settings: RegistrySettings

    # primitives --------------------------------------------------------------------------
    def _has_blob(self, ref: Reference, digest: str) -> bool: raise NotImplementedError
    def _put_blob(self, ref: Reference, chunks: Callable[[], Iterable[bytes]], expected: str | None = None) -> tuple[str, int]: raise NotImplementedError
    def _iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]: raise NotImplementedError
    def _put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str: raise NotImplementedError
    def _get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None: raise NotImplementedError
    def _parse(self, reference: str) -> Reference: return parse_reference(reference)

    # public ------------------------------------------------------------------------------
    def push_adapter(self, adapter_dir: Path, reference: str, *, model_name: str | None = None) -> str:
        """Push ``adapter_dir`` as Kaito's one-layer adapter image; returns the digest-pinned reference."""
        ref = self._parse(reference)
        files = _adapter_files(Path(adapter_dir))
        layer = _LayerBuilder(files, self.settings.compress_level)
        digest, size = self._put_blob(ref, layer.fresh_chunks)
        config = json.dumps({"rootfs": {"diff_ids": [layer.diff_id]}}, separators=(",", ":")).encode()
        config_digest, _ = self._put_blob(ref, lambda: [config])
        manifest = _adapter_manifest(config_digest, len(config), digest, size, model_name)
        pushed = self._put_manifest(ref, manifest, OCI_MANIFEST, ref.tag or "latest")
        log.info("pushed adapter %s to %s", adapter_dir, ref.pinned(pushed))
        return ref.pinned(pushed)

    def pull(self, reference: str, dest_dir: Path, *, subdir: str = "data") -> PullResult:
        """Pull ``reference`` (tag or digest) and put the files under ``subdir/`` of its layers
        directly into ``dest_dir``, after every digest matched."""
        ref = self._parse(reference)
        manifest_digest, manifest = self._fetch_image_manifest(ref)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".kaiflow-pull-") as staging:
            for layer in manifest.get("layers", []):
                self._extract_layer(ref, layer, Path(staging), subdir)
            files = _move_into(Path(staging), dest)
        if not files:
            raise errors.RegistryError(f"image {reference} has no files under /{subdir}: is it an adapter or dataset image?")
        return PullResult(ref.pinned(manifest_digest), manifest_digest, files, dict(manifest.get("annotations", {})))

    def resolve(self, reference: str) -> str | None:
        """The manifest digest ``reference`` points at, or None when it does not exist."""
        ref = self._parse(reference)
        found = self._get_manifest(ref, ref.ref)
        return found[2] if found else None

    # helpers -----------------------------------------------------------------------------
    def _fetch_image_manifest(self, ref: Reference) -> tuple[str, dict[str, Any]]:
        found = self._get_manifest(ref, ref.ref)
        if found is None:
            raise errors.RegistryError(f"image {ref} not found in {self._where(ref)}: check the repository and tag")
        data, media_type, digest = found
        doc = json.loads(data)
        if doc.get("mediaType", media_type) in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
            chosen = _pick_platform(doc.get("manifests", []), ref)
            found = self._get_manifest(ref, chosen)
            if found is None:
                raise errors.RegistryError(f"image {ref}: its index names {chosen}, which is missing from {self._where(ref)}")
            data, media_type, digest = found
            doc = json.loads(data)
        return digest, doc

    def _extract_layer(self, ref: Reference, layer: Mapping[str, Any], staging: Path, subdir: str) -> None:
        media_type, digest = str(layer.get("mediaType", "")), str(layer["digest"])
        if media_type.endswith(("tar", "tar+gzip", "tar.gzip")):
            try:
                _fast_untar(self._iter_blob(ref, digest), digest, int(layer.get("size", -1)), staging, subdir,
                            str(ref), gzipped=not media_type.endswith("tar"))
                return
            except _NotFast:  # compressed for real, or tar features the fast path does not parse
                for child in staging.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        fetched = _Prefetched(lambda: self._iter_blob(ref, digest), depth=64)  # hashes in its thread
        try:
            self._unpack_layer(ref, layer, _VerifyingReader(fetched, digest, int(layer.get("size", -1)), str(ref)),
                               staging, subdir)
        finally:
            fetched.close()

    def _unpack_layer(self, ref: Reference, layer: Mapping[str, Any], reader: "_VerifyingReader",
                      staging: Path, subdir: str) -> None:
        media_type = str(layer.get("mediaType", ""))
        if any(media_type.endswith(t) for t in TAR_LAYER_TYPES):
            _untar(reader, staging, subdir, str(ref))
        else:  # an oras-style file layer: its title is its path
            title = layer.get("annotations", {}).get(TITLE_ANNOTATION)
            rel = _relative_member(title or "", subdir)
            if rel is None:
                reader.finish()
                return
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(reader, out, CHUNK)
        reader.finish()

    def _where(self, ref: Reference) -> str:
        return str(ref.layout) if ref.layout else ref.registry


def _adapter_files(adapter_dir: Path) -> list[Path]:
    if not adapter_dir.is_dir():
        raise errors.RegistryError(f"adapter directory {adapter_dir} does not exist: expected the tuning step's output")
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise errors.RegistryError(
            f"adapter directory {adapter_dir} lacks {', '.join(missing)}: an adapter image needs "
            f"{' and '.join(ADAPTER_FILES)} (the files peft's save_pretrained writes)"
        )
    return [adapter_dir / name for name in ADAPTER_FILES]


def _adapter_manifest(config_digest: str, config_size: int, layer_digest: str, layer_size: int,
                      model_name: str | None) -> bytes:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER_TGZ, "digest": layer_digest, "size": layer_size,
                    "annotations": {TITLE_ANNOTATION: "layer.tar.gz"}}],
    }
    if model_name:
        manifest["annotations"] = {MODEL_NAME_ANNOTATION: model_name}
    return json.dumps(manifest, separators=(",", ":")).encode()


def _pick_platform(manifests: list[Mapping[str, Any]], ref: Reference) -> str:
    for m in manifests:
        p = m.get("platform", {})
        if p.get("os") == "linux" and p.get("architecture") == "amd64":
            return str(m["digest"])
    if manifests:
        return str(manifests[0]["digest"])
    raise errors.RegistryError(f"image index {ref} lists no manifests")


# ---------------------------------------------------------------------------------------------
# layer building (one pass: tar -> gzip -> hash) and reading (hash -> gunzip -> untar)
# ---------------------------------------------------------------------------------------------
class _LayerBuilder:
    """Streams ``data/<file>`` entries as a deterministic tar+gzip; ``diff_id`` is the tar's digest."""

    def __init__(self, files: list[Path], level: int) -> None:
        self.files, self.level = files, level
        self.diff_id = ""

    def fresh_chunks(self) -> Iterator[bytes]:
        tar_sha = hashlib.sha256()
        gz = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        for piece in self._tar_pieces():
            tar_sha.update(piece)
            out = gz.compress(piece)
            if out:
                yield out
        yield gz.flush()
        self.diff_id = "sha256:" + tar_sha.hexdigest()

    def _tar_pieces(self) -> Iterator[bytes]:
        header = _tar_header("data/", 0, directory=True)
        total = len(header)
        yield header
        for path in self.files:
            size = path.stat().st_size
            header = _tar_header(f"data/{path.name}", size)
            yield header
            sent = 0
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    sent += len(chunk)
                    yield chunk
            if sent != size:
                raise errors.RegistryError(f"{path} changed size while it was being pushed; push again", transient=True)
            pad = (-size) % 512
            total += len(header) + size + pad
            if pad:
                yield b"\0" * pad
        yield b"\0" * (1024 + (-(total + 1024)) % tarfile.RECORDSIZE)


def _tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name.rstrip("/") if directory else name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


class _VerifyingReader(io.RawIOBase):
    """A file-like view of a blob's chunks that hashes and counts what passes through."""

    def __init__(self, source: "_Prefetched", digest: str, size: int, where: str) -> None:
        self._source, self._chunks = source, iter(source)
        self._digest, self._size, self._where = digest, size, where
        self._buf, self._pos = memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._buf):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf, self._pos = memoryview(chunk), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def finish(self) -> None:
        """Read what the consumer left (tar padding) and check size and digest."""
        self.drain()
        _check_blob("sha256:" + self._source.sha.hexdigest(), self._source.size, self._digest, self._size, self._where)


def _check_blob(got: str, seen: int, digest: str, size: int, where: str) -> None:
    """A pulled blob must hash to its digest and (when the manifest says) have its size."""
    if got != digest or (size >= 0 and seen != size):
        raise errors.RegistryError(
            f"blob {digest} of {where} arrived corrupted (got {got}, {seen} bytes, expected {size}): "
            "nothing was written; pull again", transient=True)


def _relative_member(name: str, subdir: str) -> Path | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    if subdir:
        if parts[0] != subdir.strip("/") or len(parts) < 2:
            return None
        parts = parts[1:]
    return Path(*parts)


def _untar(reader: _VerifyingReader, staging: Path, subdir: str, where: str) -> None:
    try:
        with tarfile.open(fileobj=reader, mode="r|*", bufsize=CHUNK) as tar:
            for member in tar:
                rel = _relative_member(member.name, subdir)
                if rel is None or not member.isfile() or rel.name.startswith(".wh."):
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out, CHUNK)
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise errors.RegistryError(f"a layer of {where} is not a readable tar archive ({exc})") from exc


class _NotFast(Exception):
    """The layer needs the general (tarfile + zlib) reader."""


class _Hasher:
    """sha256 of a stream in a second thread (hashlib releases the GIL), so hashing overlaps
    with receiving and writing instead of adding to them."""

    def __init__(self) -> None:
        self.sha, self.size = hashlib.sha256(), 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=32)  # of ~1 MiB blocks: memory stays bounded
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.sha.update(chunk)
            self.size += len(chunk)

    def feed(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def result(self) -> tuple[str, int]:
        self._queue.put(None)
        self._thread.join()
        return "sha256:" + self.sha.hexdigest(), self.size


class _StoredInflater:
    """Payload slices of a gzip stream made only of *stored* deflate blocks — what gzip level 0
    writes, and so what kaiflow pushes — without copying them; raises _NotFast at the first
    compressed block (a Kaito ``gzip -9`` layer), which the caller hands to zlib instead."""

    def __init__(self) -> None:
        self._pending = b""
        self._header = True
        self._left = 0
        self._last = False
        self.done = False

    def feed(self, chunk: bytes) -> Iterator[memoryview]:
        if self._pending:
            chunk, self._pending = self._pending + chunk, b""
        m, p, n = memoryview(chunk), 0, len(chunk)
        if self._header:
            if n < 10:
                self._pending = bytes(m)
                return
            if m[0] != 0x1F or m[1] != 0x8B or m[2] != 8 or m[3] != 0:  # flags: FNAME etc. -> general path
                raise _NotFast
            p, self._header = 10, False
        while p < n and not self.done:
            if self._left == 0:
                if n - p < 5:
                    self._pending = bytes(m[p:])
                    return
                head = m[p]
                length, nlength = m[p + 1] | m[p + 2] << 8, m[p + 3] | m[p + 4] << 8
                if head & 0b110 or length ^ nlength != 0xFFFF:
                    raise _NotFast
                p, self._left, self._last = p + 5, length, bool(head & 1)
                if length == 0:
                    self.done = self._last
                    continue
            take = min(self._left, n - p)
            yield m[p:p + take]
            p += take
            self._left -= take
            if self._left == 0 and self._last:
                self.done = True


class _TarWriter:
    """Writes the regular files of a ustar/gnu tar stream under ``subdir/`` into ``staging`` from
    slices as they arrive (batched ``os.writev``: no further copies); pax/long-name entries -> _NotFast."""

    def __init__(self, staging: Path, subdir: str) -> None:
        self.staging, self.subdir = staging, subdir
        self._header = bytearray()
        self._left = 0        # data bytes of the current member still to come
        self._pad = 0         # padding after it
        self._fd: int | None = None
        self._iov: list[memoryview] = []
        self.ended = False

    def feed(self, m: memoryview) -> None:
        p, n = 0, len(m)
        while p < n and not self.ended:
            if self._left:
                take = min(self._left, n - p)
                if self._fd is not None:
                    self._iov.append(m[p:p + take])
                    if len(self._iov) >= 16:
                        self._flush()
                p += take
                self._left -= take
                if self._left == 0:
                    self._close()
            elif self._pad:
                take = min(self._pad, n - p)
                p += take
                self._pad -= take
            else:
                take = min(512 - len(self._header), n - p)
                self._header += m[p:p + take]
                p += take
                if len(self._header) == 512:
                    self._member(bytes(self._header))
                    self._header.clear()

    def _member(self, block: bytes) -> None:
        if block == b"\0" * 512:
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise _NotFast from exc
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            raise _NotFast  # pax headers, long names, links: the general reader handles them
        self._left, self._pad = info.size, (-info.size) % 512
        rel = _relative_member(info.name, self.subdir)
        if info.isfile() and rel is not None and not rel.name.startswith(".wh."):
            target = self.staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            if self._left == 0:
                self._close()

    def _flush(self) -> None:
        if self._iov and self._fd is not None:
            views, self._iov = self._iov, []
            while views:
                written = os.writev(self._fd, views)
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if views and written:
                    views[0] = views[0][written:]

    def _close(self) -> None:
        self._flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        self._iov = []
        self._close()


def _fast_untar(chunks: Iterator[bytes], digest: str, size: int, staging: Path, subdir: str, where: str,
                *, gzipped: bool) -> None:
    """The pull's hot path: receive, hash (second thread), inflate stored blocks and untar in one
    pass with no per-byte Python work, so a pull runs near the speed of a plain GET to a file.
    Raises _NotFast before writing anything the general path would not overwrite."""
    hasher, inflater, writer = _Hasher(), _StoredInflater() if gzipped else None, _TarWriter(staging, subdir)

    def take(block: bytes) -> None:
        hasher.feed(block)
        if inflater is None:
            writer.feed(memoryview(block))
        else:
            for piece in inflater.feed(block):
                writer.feed(piece)

    try:
        try:
            # the socket gives ~64 KiB pieces: joined into ~1 MiB blocks (one copy), the hash thread
            # takes the GIL and the queue 16x less often and the parsers loop 16x less (a plain GET
            # hashed in a second thread went from 0.83 to 0.93 of an unhashed one, measured)
            batch: list[bytes] = []
            held = 0
            for chunk in chunks:
                batch.append(chunk)
                held += len(chunk)
                if held >= CHUNK:
                    take(b"".join(batch))
                    batch, held = [], 0
            if batch:
                take(b"".join(batch))
        finally:
            writer.abort()
            got, seen = hasher.result()
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    _check_blob(got, seen, digest, size, where)
    if not writer.ended or (inflater is not None and not inflater.done):
        raise errors.RegistryError(f"a layer of {where} ends before its tar archive does: the image is damaged")


def _move_into(staging: Path, dest: Path) -> list[str]:
    moved = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest / rel)
        moved.append(rel.as_posix())
    return moved


# ---------------------------------------------------------------------------------------------
# OCI layout store
# ---------------------------------------------------------------------------------------------
class LayoutStore(_ImageStore):
    """Images in OCI image layouts on disk: ``oci:/abs/path:tag`` or ``repo/name:tag`` under ``root``."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings.from_env()

    def _parse(self, reference: str) -> Reference:
        ref = parse_reference(reference)
        if ref.layout is None:
            path = (self.settings.layout_root / ref.repository).resolve()
            ref = dataclasses.replace(ref, registry="", layout=path)
        return ref

    def _repo(self, ref: Reference) -> oci_layout.LayoutRepository:
        assert ref.layout is not None
        return oci_layout.LayoutRepository(ref.layout)

    def _has_blob(self, ref: Reference, digest: str) -> bool:
        return self._repo(ref).has_blob(digest)

    def _put_blob(self, ref: Reference, chunks: Callable[[], Iterable[bytes]], expected: str | None = None) -> tuple[str, int]:
        return self._repo(ref).put_blob(chunks(), expected)

    def _iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        return self._repo(ref).iter_blob(digest)

    def _put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        return self._repo(ref).put_manifest(data, media_type, tag)

    def _get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None:
        return self._repo(ref).get_manifest(which)


# ---------------------------------------------------------------------------------------------
# registry store (OCI distribution API over httpx)
# ---------------------------------------------------------------------------------------------
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class _Transient(Exception):
    """An HTTP fault worth retrying (internal; turned into RegistryError after the last attempt)."""


class _StaleToken(_Transient):
    """A cached bearer token was refused (it expired) on a request whose streamed body is spent; a
    fresh token is already cached, and the retry re-produces the body from its callable."""


class RegistryStore(_ImageStore):
    """A registry reached over the OCI distribution API (basic or bearer-token auth)."""

    def __init__(self, registry: str, settings: RegistrySettings | None = None,
                 credentials: Credentials | DockerConfig | None = None, *, insecure: bool | None = None) -> None:
        self.settings = settings or RegistrySettings.from_env()
        self.registry = registry
        self.credentials = resolve_credentials(registry, self.settings, credentials)
        plain = insecure if insecure is not None else _plain_http_allowed(registry, self.settings)
        api_host = "registry-1.docker.io" if registry == "docker.io" else registry
        self.base_url = f"{'http' if plain else 'https'}://{api_host}"
        # verify=False only where no TLS is spoken at all (it also skips loading the CA bundle, ~40 ms)
        self._client = httpx.Client(timeout=httpx.Timeout(self.settings.timeout_s, connect=10.0),
                                    follow_redirects=True, verify=not plain)
        self._auth_headers: dict[str, str] = {}  # scope -> Authorization value (never logged)
        self._probed: set[str] = set()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RegistryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryStore({self.base_url!r})"

    def _parse(self, reference: str) -> Reference:
        ref = parse_reference(reference)
        if not ref.registry:
            ref = dataclasses.replace(ref, registry=self.registry)
        if ref.registry != self.registry:
            raise errors.RegistryError(f"{reference} is not on registry {self.registry}: use store_for({reference!r})")
        return ref

    # primitives --------------------------------------------------------------------------
    def _has_blob(self, ref: Reference, digest: str) -> bool:
        resp = self._call("HEAD", f"/v2/{ref.repository}/blobs/{digest}", ref, "pull")
        return resp.status_code == 200

    def _put_blob(self, ref: Reference, chunks: Callable[[], Iterable[bytes]], expected: str | None = None) -> tuple[str, int]:
        if expected and self._has_blob(ref, expected):
            return expected, -1
        return self._retrying(lambda: self._upload_once(ref, chunks, expected), f"upload a blob to {ref.registry}")

    def _upload_once(self, ref: Reference, chunks: Callable[[], Iterable[bytes]], expected: str | None) -> tuple[str, int]:
        start = self._send("POST", f"/v2/{ref.repository}/blobs/uploads/", ref, "push,pull")
        self._expect(start, (202,), ref, "start a blob upload")
        body = _Prefetched(chunks)
        location = self._location(start)
        try:
            patched = self._send("PATCH", location, ref, "push,pull", content=iter(body),
                                 headers={"Content-Type": "application/octet-stream"})
        finally:
            body.close()
        self._expect(patched, (202, 204), ref, "upload a blob")
        digest, size = "sha256:" + body.sha.hexdigest(), body.size
        if expected and digest != expected:
            raise errors.RegistryError(f"source blob changed while copying to {ref}: got {digest}, expected {expected}")
        # httpx's params= would replace the upload URL's own query (_state=...): append instead
        location = self._location(patched)
        commit = f"{location}{'&' if '?' in location else '?'}digest={digest.replace(':', '%3A')}"
        done = self._send("PUT", commit, ref, "push,pull")
        self._expect(done, (201,), ref, "commit a blob upload")
        return digest, size

    def _iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        # a generator: the request starts when the consumer starts reading. Opening is retried;
        # a fault mid-stream is not (the partial data was already consumed): it raises a
        # transient RegistryError and the caller's retry pulls again.
        resp = self._retrying(lambda: self._open_blob(ref, digest), f"download blob {digest} from {ref.registry}")
        try:
            yield from resp.iter_raw()  # as received: no re-chunking copies
        except httpx.TransportError as exc:
            raise errors.RegistryError(f"download of {digest} from {ref.registry} broke off ({_why(exc)}); "
                                       "nothing was written, pull again", transient=True) from exc
        finally:
            resp.close()

    def _open_blob(self, ref: Reference, digest: str) -> httpx.Response:
        self._ensure_auth(ref, "pull")
        resp = self._get_stream(ref, digest)
        if resp.status_code == 401:  # a GET has no body to replay: a fresh token (one expired), once
            self._authenticate(resp, ref, "pull")
            resp = self._get_stream(ref, digest)
        if resp.status_code != 200:
            if resp.status_code in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {resp.status_code} for blob {digest}")
            if resp.status_code == 401:
                self._auth_failed(ref, resp, "pull")
            self._expect(resp, (200,), ref, f"download blob {digest}")
        return resp

    def _get_stream(self, ref: Reference, digest: str) -> httpx.Response:
        """GET a blob, streamed when it answers 200; any other answer is read and closed."""
        request = self._client.build_request("GET", f"{self.base_url}/v2/{ref.repository}/blobs/{digest}",
                                             headers=self._headers(ref, "pull"))
        try:
            resp = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _Transient(_why(exc)) from exc
        if resp.status_code != 200:
            resp.read()
            resp.close()
        return resp

    def _put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        resp = self._call("PUT", f"/v2/{ref.repository}/manifests/{tag or digest}", ref, "push,pull",
                          content=data, headers={"Content-Type": media_type})
        self._expect(resp, (201,), ref, "push the manifest")
        return digest

    def _get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None:
        resp = self._call("GET", f"/v2/{ref.repository}/manifests/{which}", ref, "pull",
                          headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        self._expect(resp, (200,), ref, f"fetch manifest {which}")
        data = resp.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        claimed = resp.headers.get("Docker-Content-Digest")
        if (which.startswith("sha256:") and digest != which) or (claimed and claimed != digest):
            raise errors.RegistryError(f"manifest {which} of {ref} does not match its digest (got {digest}); "
                                       "the registry or a proxy altered it", transient=True)
        return data, resp.headers.get("Content-Type", OCI_MANIFEST).split(";")[0], digest

    # HTTP with auth and retries ---------------------------------------------------------
    def _call(self, method: str, path: str, ref: Reference, actions: str, **kw: Any) -> httpx.Response:
        return self._retrying(lambda: self._send(method, path, ref, actions, **kw), f"{method} {path} on {ref.registry}")

    def _send(self, method: str, url: str, ref: Reference, actions: str, **kw: Any) -> httpx.Response:
        full = url if url.startswith("http") else self.base_url + url
        streaming = not isinstance(kw.get("content"), (bytes, type(None)))
        if streaming:
            self._ensure_auth(ref, actions)
        sent = self._headers(ref, actions)
        headers = {**kw.pop("headers", {}), **sent}
        try:
            resp = self._client.request(method, full, headers=headers, **kw)
            if resp.status_code == 401 and not streaming:
                self._authenticate(resp, ref, actions)
                headers.update(self._headers(ref, actions))
                resp = self._client.request(method, full, headers=headers, **kw)
        except httpx.TransportError as exc:
            raise _Transient(_why(exc)) from exc
        if resp.status_code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {resp.status_code} from {method} {httpx.URL(full).path}")
        if resp.status_code == 401:
            if streaming and sent.get("Authorization", "").startswith("Bearer "):
                # the cached token expired before this body went out: the body cannot be replayed
                # here, so fetch a fresh token now and let the caller's retry re-produce the body
                self._authenticate(resp, ref, actions)
                raise _StaleToken(f"the registry refused an expired token for {method} {httpx.URL(full).path}; "
                                  "fetched a new one")
            self._auth_failed(ref, resp, actions)
        return resp

    def _ensure_auth(self, ref: Reference, actions: str) -> None:
        """Before a body that cannot be replayed: learn the auth scheme with a body-less request."""
        if self._headers(ref, actions) or self._scope(ref, actions) in self._probed:
            return
        self._send("GET", "/v2/", ref, actions)
        self._probed.add(self._scope(ref, actions))

    def _headers(self, ref: Reference, actions: str) -> dict[str, str]:
        value = self._auth_headers.get(self._scope(ref, actions)) or self._auth_headers.get("*")
        return {"Authorization": value} if value else {}

    def _scope(self, ref: Reference, actions: str) -> str:
        return f"repository:{ref.repository}:{actions}"

    def _authenticate(self, resp: httpx.Response, ref: Reference, actions: str) -> None:
        """Answer a 401 challenge: Basic with the credentials, or a bearer token for the scope
        (anonymous when there are no credentials, as public images on Docker Hub or GHCR need)."""
        scheme, params = _parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer":
            basic = self._basic() if self.credentials is not None else None
            self._auth_headers[self._scope(ref, actions)] = "Bearer " + self._fetch_token(params, ref, actions, basic)
        elif self.credentials is None:
            self._auth_failed(ref)
        else:
            self._auth_headers["*"] = self._basic()

    def _basic(self) -> str:
        assert self.credentials is not None
        return "Basic " + base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()

    def _fetch_token(self, params: dict[str, str], ref: Reference, actions: str, basic: str | None) -> str:
        realm = params.get("realm", "")
        if not realm.startswith("http"):
            raise errors.RegistryError(f"registry {ref.registry} asked for a bearer token without a usable realm "
                                       f"(WWW-Authenticate realm={realm!r}): is {self.base_url} a registry?")
        query = {"service": params.get("service", ""), "scope": self._scope(ref, actions)}
        service = _token_service(realm)
        try:
            resp = self._client.get(realm, params=query, headers={"Authorization": basic} if basic else {})
        except httpx.TransportError as exc:
            raise _Transient(f"token service {service} of registry {ref.registry} unreachable ({_why(exc)})") from exc
        if resp.status_code in (401, 403):
            self._auth_failed(ref, token_service=service)
        if resp.status_code != 200:
            raise _Transient(f"token service {service} of registry {ref.registry} answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = str(body.get("token") or body.get("access_token") or "")
        except (ValueError, AttributeError):
            token = ""
        if not token:
            raise errors.RegistryError(f"token service {service} of registry {ref.registry} answered without a "
                                       "token (no JSON 'token' or 'access_token'): is the realm URL right?")
        return token

    def _auth_failed(self, ref: Reference, resp: httpx.Response | None = None, actions: str = "",
                     *, token_service: str | None = None) -> None:
        """Raise the error that says what to fix: missing credentials, a wrong password, or
        credentials that were accepted but lack the right (a token without the asked actions)."""
        challenge = _parse_challenge(resp.headers.get("WWW-Authenticate", ""))[1] if resp is not None else {}
        if self.credentials is None:
            raise errors.RegistryError(
                f"registry {ref.registry} requires authentication and no credentials were found: set "
                "tuning.output.imagePushSecret / imagePullSecrets (Kubernetes), or KAIFLOW_REGISTRY_USERNAME and "
                "KAIFLOW_REGISTRY_PASSWORD or KAIFLOW_DOCKER_CONFIG (local)", reason="RegistryAuthFailed")
        user, source = self.credentials.username, self.credentials.source
        if challenge.get("error") == "insufficient_scope":
            wanted = "push to" if "push" in actions.split(",") else "pull from"
            granted = _granted_actions(self._auth_headers.get(self._scope(ref, actions), ""), ref.repository)
            raise errors.RegistryError(
                f"registry {ref.registry} accepted the credentials of {user!r} (from {source}) but does not let "
                f"them {wanted} {ref.repository} (the token grants {granted or 'no access'} there): grant "
                f"{user!r} that right on the registry, or use credentials that have it", reason="RegistryAccessDenied")
        if challenge.get("error") == "invalid_token":
            raise errors.RegistryError(
                f"registry {ref.registry} refused the token its token service issued to {user!r} just now: not a "
                "password problem; the token service and the registry disagree (issuer, service name, signing "
                "certificate or clocks): check the registry's token auth settings",
                reason="RegistryAuthFailed")
        where = f"the token service {token_service} of registry {ref.registry}" if token_service else f"registry {ref.registry}"
        raise errors.RegistryError(
            f"authentication failed for {where} as user {user!r}: fix the username/password in {source}",
            reason="RegistryAuthFailed")

    def _expect(self, resp: httpx.Response, ok: tuple[int, ...], ref: Reference, what: str) -> None:
        if resp.status_code in ok:
            return
        detail = _registry_error_text(resp)
        if resp.status_code == 403:
            user = self.credentials.username if self.credentials else "anonymous"
            raise errors.RegistryError(f"registry {ref.registry} denied {user!r} permission to {what} in {ref.repository}: "
                                       f"grant access or use other credentials ({detail})")
        if resp.status_code == 404:
            raise errors.RegistryError(f"could not {what}: {ref} not found on {ref.registry} ({detail})")
        raise errors.RegistryError(f"could not {what} for {ref}: HTTP {resp.status_code} ({detail})")

    def _location(self, resp: httpx.Response) -> str:
        location = resp.headers.get("Location", "")
        return location if location.startswith("http") else self.base_url + location

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        attempts = max(1, self.settings.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except _Transient as exc:
                if attempt == attempts:
                    raise errors.RegistryError(
                        f"could not {what} after {attempts} attempts: {exc}. Check that the registry at "
                        f"{self.base_url} is running and reachable, then retry", transient=True) from None
                delay = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (attempt - 1))
                log.warning("registry %s: %s (attempt %d/%d), retrying in %.1fs", self.registry, exc, attempt, attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")


class _Prefetched:
    """Runs a chunk producer (tar, gzip, hashing: all release the GIL) in a thread, a few chunks
    ahead of the socket, so building and hashing a layer overlap with sending it."""

    _END = object()

    def __init__(self, chunks: Callable[[], Iterable[bytes]], depth: int = 8) -> None:
        self.sha, self.size = hashlib.sha256(), 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(chunks,), daemon=True)
        self._thread.start()

    def _produce(self, chunks: Callable[[], Iterable[bytes]]) -> None:
        try:
            for chunk in chunks():
                self.sha.update(chunk)
                self.size += len(chunk)
                while not self._stop.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=5)


def _why(exc: httpx.TransportError) -> str:
    name = type(exc).__name__
    reason = str(exc) or name
    return f"{name}: {reason}" if reason != name else name


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _token_service(realm: str) -> str:
    """The realm without its query, for messages (``https://auth.docker.io/token``)."""
    url = httpx.URL(realm)
    return f"{url.scheme}://{url.netloc.decode()}{url.path}"


def _granted_actions(authorization: str, repository: str) -> str:
    """The actions a bearer token (a JWT, as Docker Hub, ACR, GHCR and Harbor issue) grants on
    ``repository``, read without verifying it (only to explain a refusal); "" when unknown."""
    parts = authorization.removeprefix("Bearer ").split(".")
    if len(parts) != 3:
        return ""
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return ",".join(a for entry in claims.get("access") or [] if entry.get("name") == repository
                        for a in entry.get("actions") or [])
    except (ValueError, TypeError, AttributeError):
        return ""


def _registry_error_text(resp: httpx.Response) -> str:
    try:
        errs = resp.json().get("errors", [])
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs) or resp.reason_phrase
    except (ValueError, AttributeError):
        return resp.reason_phrase


def _plain_http_allowed(registry: str, settings: RegistrySettings) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    return host in ("localhost", "[::1]") or host.startswith("127.") or registry in settings.insecure_registries \
        or host in settings.insecure_registries


# ---------------------------------------------------------------------------------------------
# picking a store, copying between stores
# ---------------------------------------------------------------------------------------------
def store_for(reference: str, settings: RegistrySettings | None = None,
              credentials: Credentials | DockerConfig | None = None, *, insecure: bool | None = None) -> Store:
    """The store that holds ``reference``: ``oci:PATH...`` → a layout; ``host/repo:tag`` → that
    registry; a bare ``repo:tag`` → ``settings.registry`` when set (KAIFLOW_REGISTRY), else a
    layout under ``settings.layout_root``."""
    settings = settings or RegistrySettings.from_env()
    ref = parse_reference(reference)
    if ref.layout is not None:
        return LayoutStore(settings)
    registry = ref.registry or settings.registry
    if not registry:
        return LayoutStore(settings)
    return RegistryStore(registry, settings, credentials, insecure=insecure)


def qualify(reference: str, settings: RegistrySettings | None = None) -> str:
    """``reference`` with the registry or layout it resolves to made explicit (for pinning)."""
    settings = settings or RegistrySettings.from_env()
    ref = parse_reference(reference)
    if ref.layout is not None or ref.registry:
        return str(ref)
    if settings.registry:
        return str(dataclasses.replace(ref, registry=settings.registry))
    return str(dataclasses.replace(ref, layout=(settings.layout_root / ref.repository).resolve()))


def copy(source: str, dest: str, settings: RegistrySettings | None = None, *,
         source_credentials: Credentials | DockerConfig | None = None,
         dest_credentials: Credentials | DockerConfig | None = None) -> str:
    """Copy an image between stores (a local layout to a registry, say); digests stay the same.
    Blobs first, manifest (and tag) last. Returns the destination pinned by digest."""
    settings = settings or RegistrySettings.from_env()
    src = store_for(source, settings, source_credentials)
    dst = store_for(dest, settings, dest_credentials)
    assert isinstance(src, _ImageStore) and isinstance(dst, _ImageStore)
    sref, dref = src._parse(qualify(source, settings)), dst._parse(qualify(dest, settings))
    found = src._get_manifest(sref, sref.ref)
    if found is None:
        raise errors.RegistryError(f"image {source} not found: nothing to copy")
    data, media_type, digest = found
    manifest = json.loads(data)
    for desc in [manifest["config"], *manifest.get("layers", [])]:
        if not dst._has_blob(dref, desc["digest"]):
            dst._put_blob(dref, lambda d=desc: src._iter_blob(sref, d["digest"]), expected=desc["digest"])
    pushed = dst._put_manifest(dref, data, media_type, dref.tag or sref.tag or "latest")
    assert pushed == digest
    return dref.pinned(pushed)


def push_adapter(adapter_dir: Path, reference: str, *, model_name: str | None = None,
                 settings: RegistrySettings | None = None, credentials: Credentials | DockerConfig | None = None) -> str:
    """Push ``adapter_dir`` to wherever ``reference`` lives; returns the digest-pinned reference."""
    settings = settings or RegistrySettings.from_env()
    store = store_for(reference, settings, credentials)
    try:
        return store.push_adapter(adapter_dir, qualify(reference, settings), model_name=model_name)
    finally:
        if isinstance(store, RegistryStore):
            store.close()


def pull(reference: str, dest_dir: Path, *, subdir: str = "data", settings: RegistrySettings | None = None,
         credentials: Credentials | DockerConfig | None = None) -> PullResult:
    """Pull the files under ``/subdir`` of ``reference`` into ``dest_dir``, digests verified."""
    settings = settings or RegistrySettings.from_env()
    store = store_for(reference, settings, credentials)
    try:
        return store.pull(qualify(reference, settings), dest_dir, subdir=subdir)
    finally:
        if isinstance(store, RegistryStore):
            store.close()
