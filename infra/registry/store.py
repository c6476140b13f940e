"""What a store of images is, and the image logic every store shares.

Why a base with public primitives: kaiflow keeps images in two kinds of place — a registry
(:mod:`infra.registry.distribution`) and an OCI image layout on disk (:mod:`infra.registry.layout`)
— and moves them between the two (:func:`infra.registry.copy`). Everything above the wire format
is the same for both: how Kaito's adapter image is laid out, how a pull picks a platform from an
index, verifies digests and lands files. So a store implements six primitives, documented on
:class:`Store`, and inherits ``push_adapter``, ``pull`` and ``resolve`` from :class:`BaseStore`;
``copy`` is written on the same primitives.

Kaito's adapter image (``pkg/utils/image/pusher.sh``): exactly one layer, a tar+gzip of
``data/adapter_config.json`` and ``data/adapter_model.safetensors``; a config blob
``{"rootfs":{"diff_ids":[...]}}``; the manifest annotation ``sh.kaito.model.name=<preset>``.
:class:`LayerBuilder` writes that layer in one pass (tar → gzip → hash), deterministically: tar
and gzip headers carry no timestamps, so an unchanged adapter gets the same digest again.

A pull stages files in a hidden folder inside the destination and moves them into place only
after every layer's digest matched (:mod:`infra.registry.fastpull` reads the layers), so a
corrupted or interrupted pull leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from infra.registry import fastpull
from infra.registry.reference import Reference, parse_reference
from infra.registry.settings import RegistrySettings
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

Chunks = Callable[[], Iterable[bytes]]
"""A blob's content as a callable giving its chunks: called again when an upload is retried."""


@dataclasses.dataclass(frozen=True)
class PullResult:
    reference: str  # pinned by digest
    digest: str
    files: list[str]
    annotations: dict[str, str]


class Store(Protocol):
    """Where images live: a registry or an OCI layout on disk.

    The primitives (``parse`` .. ``get_manifest``) are what a store implements; ``push_adapter``,
    ``pull`` and ``resolve`` are built on them (:class:`BaseStore`), and so is
    :func:`infra.registry.copy`. ``ref`` arguments are what this store's ``parse`` returned.
    """

    def parse(self, reference: str) -> Reference:
        """``reference`` parsed and completed for this store (its registry, or its layout path);
        RegistryError when it belongs to another store."""
        ...

    def has_blob(self, ref: Reference, digest: str) -> bool:
        """Whether the blob ``digest`` exists in ``ref``'s repository."""
        ...

    def put_blob(self, ref: Reference, chunks: Chunks, expected: str | None = None) -> tuple[str, int]:
        """Store a blob from ``chunks()`` (called again on a retry); returns (digest, size).
        With ``expected``: a RegistryError when the content does not hash to it (a registry
        skips the upload when that blob exists already, and returns size -1). The blob is
        visible only once complete."""
        ...

    def iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        """The blob's bytes as they arrive, *not* verified (the caller hashes them); nothing is
        requested before the first ``next()``; a missing blob or a broken stream is a RegistryError."""
        ...

    def put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        """Store a manifest whose blobs all exist and, with ``tag``, point the tag at it (last, so
        a failed push never leaves a tag on a partial image); returns its digest."""
        ...

    def get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) of the manifest a tag or digest ``which`` names, its digest
        checked; None when there is none."""
        ...

    def push_adapter(self, adapter_dir: Path, reference: str, *, model_name: str | None = None) -> str: ...
    def pull(self, reference: str, dest_dir: Path, *, subdir: str = "data") -> PullResult: ...
    def resolve(self, reference: str) -> str | None: ...

    def close(self) -> None:
        """Release connections (a no-op for a layout)."""
        ...


class BaseStore:
    """Push/pull logic on top of the primitives of :class:`Store`, which each store implements."""

    settings: RegistrySettings

    # primitives (documented on Store) -----------------------------------------------------------
    def parse(self, reference: str) -> Reference:
        return parse_reference(reference)

    def has_blob(self, ref: Reference, digest: str) -> bool:
        raise NotImplementedError

    def put_blob(self, ref: Reference, chunks: Chunks, expected: str | None = None) -> tuple[str, int]:
        raise NotImplementedError

    def iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        raise NotImplementedError

    def put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        raise NotImplementedError

    def get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "BaseStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the private spellings tests/infra/test_datasets.py still uses (remove once it calls the public ones)
    def _parse(self, reference: str) -> Reference:
        return self.parse(reference)

    def _put_blob(self, ref: Reference, chunks: Chunks, expected: str | None = None) -> tuple[str, int]:
        return self.put_blob(ref, chunks, expected)

    def _put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        return self.put_manifest(ref, data, media_type, tag)

    # built on the primitives -------------------------------------------------------------------
    def push_adapter(self, adapter_dir: Path, reference: str, *, model_name: str | None = None) -> str:
        """Push ``adapter_dir`` as Kaito's one-layer adapter image; returns the digest-pinned reference."""
        ref = self.parse(reference)
        files = adapter_files(Path(adapter_dir))
        layer = LayerBuilder(files, self.settings.compress_level)
        digest, size = self.put_blob(ref, layer.fresh_chunks)
        config = json.dumps({"rootfs": {"diff_ids": [layer.diff_id]}}, separators=(",", ":")).encode()
        config_digest, _ = self.put_blob(ref, lambda: [config])
        manifest = adapter_manifest(config_digest, len(config), digest, size, model_name)
        pushed = self.put_manifest(ref, manifest, OCI_MANIFEST, ref.tag or "latest")
        log.info("pushed adapter %s to %s", adapter_dir, ref.pinned(pushed))
        return ref.pinned(pushed)

    def pull(self, reference: str, dest_dir: Path, *, subdir: str = "data") -> PullResult:
        """Pull ``reference`` (tag or digest) and put the files under ``subdir/`` of its layers
        directly into ``dest_dir``, after every digest matched."""
        ref = self.parse(reference)
        manifest_digest, manifest = self.fetch_image_manifest(ref)
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
        ref = self.parse(reference)
        found = self.get_manifest(ref, ref.ref)
        return found[2] if found else None

    def fetch_image_manifest(self, ref: Reference) -> tuple[str, dict[str, Any]]:
        """(digest, parsed manifest) of the image ``ref`` names; through an index, the
        linux/amd64 entry (else the first)."""
        found = self.get_manifest(ref, ref.ref)
        if found is None:
            raise errors.RegistryError(f"image {ref} not found in {self.where(ref)}: check the repository and tag")
        data, media_type, digest = found
        doc = json.loads(data)
        if doc.get("mediaType", media_type) in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
            chosen = _pick_platform(doc.get("manifests", []), ref)
            found = self.get_manifest(ref, chosen)
            if found is None:
                raise errors.RegistryError(f"image {ref}: its index names {chosen}, which is missing from {self.where(ref)}")
            data, media_type, digest = found
            doc = json.loads(data)
        return digest, doc

    def where(self, ref: Reference) -> str:
        """The store's place, for messages: the layout's path or the registry's host."""
        return str(ref.layout) if ref.layout else ref.registry

    # helpers -------------------------------------------------------------------------------------
    def _extract_layer(self, ref: Reference, layer: Mapping[str, Any], staging: Path, subdir: str) -> None:
        media_type, digest = str(layer.get("mediaType", "")), str(layer["digest"])
        if media_type.endswith(("tar", "tar+gzip", "tar.gzip")):
            try:
                fastpull.fast_untar(self.iter_blob(ref, digest), digest, int(layer.get("size", -1)), staging, subdir,
                                    str(ref), gzipped=not media_type.endswith("tar"))
                return
            except fastpull.NotFast:  # compressed for real, or tar features the fast path does not parse
                for child in staging.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        fetched = fastpull.Prefetched(lambda: self.iter_blob(ref, digest), depth=64)  # hashes in its thread
        try:
            reader = fastpull.VerifyingReader(fetched, digest, int(layer.get("size", -1)), str(ref))
            self._unpack_layer(ref, layer, reader, staging, subdir)
        finally:
            fetched.close()

    def _unpack_layer(self, ref: Reference, layer: Mapping[str, Any], reader: fastpull.VerifyingReader,
                      staging: Path, subdir: str) -> None:
        media_type = str(layer.get("mediaType", ""))
        if any(media_type.endswith(t) for t in TAR_LAYER_TYPES):
            fastpull.untar(reader, staging, subdir, str(ref))
        else:  # an oras-style file layer: its title is its path
            title = layer.get("annotations", {}).get(TITLE_ANNOTATION)
            rel = fastpull.relative_member(title or "", subdir)
            if rel is None:
                reader.finish()
                return
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(reader, out, fastpull.CHUNK)
        reader.finish()


# ---------------------------------------------------------------------------------------------
# Kaito's adapter image: the layer (one pass: tar -> gzip -> hash) and the manifest
# ---------------------------------------------------------------------------------------------
class LayerBuilder:
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
                while chunk := src.read(fastpull.CHUNK):
                    sent += len(chunk)
                    yield chunk
            if sent != size:
                raise errors.RegistryError(f"{path} changed size while it was being pushed; push again", transient=True)
            pad = (-size) % 512
            total += len(header) + size + pad
            if pad:
                yield b"\0" * pad
        yield b"\0" * (1024 + (-(total + 1024)) % tarfile.RECORDSIZE)


def adapter_files(adapter_dir: Path) -> list[Path]:
    """The two files of an adapter image, in their order; RegistryError naming what is missing."""
    if not adapter_dir.is_dir():
        raise errors.RegistryError(f"adapter directory {adapter_dir} does not exist: expected the tuning step's output")
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise errors.RegistryError(
            f"adapter directory {adapter_dir} lacks {', '.join(missing)}: an adapter image needs "
            f"{' and '.join(ADAPTER_FILES)} (the files peft's save_pretrained writes)"
        )
    return [adapter_dir / name for name in ADAPTER_FILES]


def adapter_manifest(config_digest: str, config_size: int, layer_digest: str, layer_size: int,
                     model_name: str | None) -> bytes:
    """The manifest of Kaito's one-layer adapter image, as compact JSON."""
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


def _tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name.rstrip("/") if directory else name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _pick_platform(manifests: list[Mapping[str, Any]], ref: Reference) -> str:
    for m in manifests:
        p = m.get("platform", {})
        if p.get("os") == "linux" and p.get("architecture") == "amd64":
            return str(m["digest"])
    if manifests:
        return str(manifests[0]["digest"])
    raise errors.RegistryError(f"image index {ref} lists no manifests")


def _move_into(staging: Path, dest: Path) -> list[str]:
    moved = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest / rel)
        moved.append(rel.as_posix())
    return moved
