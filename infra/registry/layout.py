"""OCI image layouts on disk: kaiflow's image store when no registry is configured.

Why the standard layout (image-spec ``image-layout.md``) and not a folder of our own: the same
directory can be inspected and copied by ``oras``/``skopeo``/``crane`` (``oci:PATH:TAG``) and
pushed to a registry later with :func:`infra.registry.copy`, with digests unchanged.

One layout per repository: ``<root>/<repository>/`` (or the path of an ``oci:/path:tag``
reference) holds ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``. Tags are
``org.opencontainers.image.ref.name`` annotations in ``index.json``. Writes are crash-safe in the
order that matters: a blob is written to a temporary file and renamed to its digest only when the
digest matched; ``index.json`` is replaced atomically (under a file lock) after every blob of the
manifest exists, so a failed push never leaves a tag on a partial image.

:class:`LayoutRepository` is the on-disk format of one repository; :class:`LayoutStore` is the
:class:`~infra.registry.store.Store` that maps references onto such repositories.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from infra.registry import fastpull, store
from infra.registry.reference import Reference, parse_reference
from infra.registry.settings import RegistrySettings
from workspace import errors

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}


class LayoutStore(store.BaseStore):
    """Images in OCI image layouts on disk: ``oci:/abs/path:tag`` or ``repo/name:tag`` under ``root``."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings.from_env()

    def parse(self, reference: str) -> Reference:
        ref = parse_reference(reference)
        if ref.layout is None:
            path = (self.settings.layout_root / ref.repository).resolve()
            ref = dataclasses.replace(ref, registry="", layout=path)
        return ref

    def has_blob(self, ref: Reference, digest: str) -> bool:
        return self._repo(ref).has_blob(digest)

    def put_blob(self, ref: Reference, chunks: store.Chunks, expected: str | None = None) -> tuple[str, int]:
        return self._repo(ref).put_blob(chunks(), expected)

    def iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        return self._repo(ref).iter_blob(digest)

    def put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        return self._repo(ref).put_manifest(data, media_type, tag)

    def get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None:
        return self._repo(ref).get_manifest(which)

    def _repo(self, ref: Reference) -> LayoutRepository:
        assert ref.layout is not None
        return LayoutRepository(ref.layout)


class LayoutRepository:
    """Blobs and manifests of one repository, stored as an OCI image layout at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- blobs ------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.path / "blobs" / algo / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_blob(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Write a blob from ``chunks``; returns (digest, size). Checks ``expected`` when given."""
        self._ensure_layout()
        blobs = self.path / "blobs" / "sha256"
        sha, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    sha.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            digest = "sha256:" + sha.hexdigest()
            if expected and digest != expected:
                raise errors.RegistryError(
                    f"blob written to layout {self.path} has digest {digest}, expected {expected}: "
                    "the source changed or was corrupted while copying; run the copy again",
                    transient=True,
                )
            os.replace(tmp, self.blob_path(digest))
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def iter_blob(self, digest: str) -> Iterator[bytes]:
        path = self.blob_path(digest)
        if not path.is_file():
            raise errors.RegistryError(
                f"blob {digest} is missing from OCI layout {self.path}: the layout is incomplete; "
                "push the image again"
            )
        with open(path, "rb") as src:
            while chunk := src.read(fastpull.CHUNK):
                yield chunk

    # -- manifests --------------------------------------------------------------------------
    def put_manifest(self, data: bytes, media_type: str, tag: str | None) -> str:
        """Store a manifest and (if ``tag``) point the tag at it, atomically; returns its digest."""
        digest, size = self.put_blob([data])
        if tag is None:
            return digest
        with self._index_lock():
            index = self._read_index()
            kept = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
            kept.append({"mediaType": media_type, "digest": digest, "size": size,
                         "annotations": {REF_NAME: tag}})
            index["manifests"] = kept
            self._write_index(index)
        return digest

    def get_manifest(self, ref: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) for a tag or digest, or None when absent."""
        if ref.startswith("sha256:"):
            if not self.has_blob(ref):
                return None
            data = self.blob_path(ref).read_bytes()
            media_type = json.loads(data).get("mediaType", store.OCI_MANIFEST)
            return data, media_type, ref
        for entry in self._read_index()["manifests"]:
            if entry.get("annotations", {}).get(REF_NAME) == ref and self.has_blob(entry["digest"]):
                return self.blob_path(entry["digest"]).read_bytes(), entry["mediaType"], entry["digest"]
        return None

    def tags(self) -> list[str]:
        return sorted(
            m["annotations"][REF_NAME] for m in self._read_index()["manifests"]
            if REF_NAME in m.get("annotations", {})
        )

    # -- internals --------------------------------------------------------------------------
    def _ensure_layout(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = self.path / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps(LAYOUT_FILE))
        if not (self.path / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": store.OCI_INDEX, "manifests": []})

    def _read_index(self) -> dict:
        path = self.path / "index.json"
        if not path.exists():
            return {"schemaVersion": 2, "manifests": []}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise errors.RegistryError(
                f"{path} is not a readable OCI index ({exc}): repair or remove the layout directory"
            ) from exc

    def _write_index(self, index: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".index-")
        with os.fdopen(fd, "w") as out:
            json.dump(index, out, indent=1)
        os.replace(tmp, self.path / "index.json")

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        self._ensure_layout()
        with open(self.path / ".index.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
