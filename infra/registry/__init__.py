"""Adapter images: push a tuned adapter as Kaito lays it out, pull any image's ``/data``.

Kaito's pusher (``pkg/utils/image/pusher.sh``) makes an image of exactly one layer, a tar+gzip of
``data/adapter_config.json`` and ``data/adapter_model.safetensors``, a config blob
``{"rootfs":{"diff_ids":[...]}}`` and the manifest annotation ``sh.kaito.model.name=<preset>``.
kaiflow writes the same, so Kaito-made and kaiflow-made adapter images are interchangeable;
:func:`pull` reads either (and docker-style images whose ``/data`` holds files, as the dataset
``image`` input has), landing the files of ``data/`` directly in the destination.

Two stores behind one protocol (:class:`Store`): :class:`RegistryStore` speaks the OCI
distribution API to a registry; :class:`LayoutStore` writes an OCI image layout on disk, the
local default when no registry is configured (``oci:/path:tag`` references); :func:`copy` moves
an image between them with digests unchanged. :func:`store_for` picks one for a reference.

The package, one concern per module (each says why it exists in its docstring)::

    reference.py     Reference, parse_reference, qualify: image names, checked before any I/O
    settings.py      RegistrySettings: where images go, how hard to try (from workspace.settings)
    credentials.py   Credentials, docker configs, named secrets (for_secret), resolve_credentials
    auth.py          Basic and bearer-token auth: challenges, scopes, what a refusal means
    store.py         the Store protocol's primitives, BaseStore (push/pull/resolve on them), Kaito's layer
    fastpull.py      reading a layer in one pass (hash thread, stored-gzip and ustar by hand) + fallback
    layout.py        LayoutStore: OCI image layouts on disk
    distribution.py  RegistryStore: the OCI distribution API over httpx, retried by infra.retry
    __init__.py      this surface: store_for, push_adapter, pull, copy, and the names above

Layers are gzip at level 0 by default (``RegistrySettings.compress_level``): adapter weights
compress by a few percent while zlib level 1 runs at ~60 MB/s on this class of machine, several
times slower than the network; level 0 keeps Kaito's ``tar+gzip`` media type at memory speed, and
the pull's hot path (:mod:`infra.registry.fastpull`) reads it near the speed of a plain GET
(``bench/transfer.py`` measures both directions against plain HTTP PUT/GET of the same bytes).

Safety: a tag is written last, after every blob exists, so a failed push never leaves a tag on a
partial image; a pull moves files into place only after every digest matched. Credentials
(:class:`Credentials`) stay in memory: nothing here writes a docker config, and no message, log
line or repr contains a password or an ``Authorization`` header. Transient faults (connection
refused/reset, timeouts, 429, 5xx) are retried by the shared policy of :mod:`infra.retry`; then a
:class:`workspace.errors.RegistryError` with ``transient=True`` says what to check.

Auth: Basic, or bearer tokens from the registry's token service (Docker's token spec, what ACR,
GHCR, Docker Hub and Harbor use), one per repository scope, fetched anonymously when there are no
credentials (public images). A token the registry refuses later (expired) is fetched again and the
request re-sent; a refusal with ``insufficient_scope`` is reported as missing rights
(``RegistryAccessDenied``), not as a wrong password. Tested against docker-registry with
``auth: token`` (tests/support/tokenserver.py), and against oras-py (tests/infra/test_registry_oras.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

from infra.registry import auth, credentials, distribution, fastpull, layout, reference, settings, store
from infra.registry.credentials import (
    Credentials,
    DockerConfig,
    credentials_from_docker_config,
    for_secret,
    resolve_credentials,
)
from infra.registry.distribution import RegistryStore
from infra.registry.fastpull import CHUNK
from infra.registry.layout import LayoutStore
from infra.registry.reference import LAYOUT_PREFIX, Reference, parse_reference, qualify
from infra.registry.settings import RegistrySettings
from infra.registry.store import (
    ADAPTER_FILES,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_ACCEPT,
    MODEL_NAME_ANNOTATION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TGZ,
    OCI_MANIFEST,
    TAR_LAYER_TYPES,
    TITLE_ANNOTATION,
    BaseStore,
    PullResult,
    Store,
)
from workspace import errors

__all__ = [
    # operations
    "store_for", "push_adapter", "pull", "copy", "qualify", "parse_reference", "for_secret",
    "credentials_from_docker_config", "resolve_credentials",
    # types
    "Store", "BaseStore", "RegistryStore", "LayoutStore", "PullResult", "Reference", "RegistrySettings",
    "Credentials", "DockerConfig",
    # constants
    "ADAPTER_FILES", "MODEL_NAME_ANNOTATION", "TITLE_ANNOTATION", "OCI_MANIFEST", "OCI_INDEX", "OCI_CONFIG",
    "OCI_LAYER_TGZ", "DOCKER_MANIFEST", "DOCKER_LIST", "MANIFEST_ACCEPT", "TAR_LAYER_TYPES", "CHUNK",
    "LAYOUT_PREFIX",
    # modules
    "auth", "credentials", "distribution", "fastpull", "layout", "reference", "settings", "store",
]

# tests/infra/test_datasets.py builds an image by hand with these private spellings (remove once it
# uses store.LayerBuilder / store.adapter_manifest)
_LayerBuilder = store.LayerBuilder
_adapter_manifest = store.adapter_manifest


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


def push_adapter(adapter_dir: Path, reference: str, *, model_name: str | None = None,
                 settings: RegistrySettings | None = None, credentials: Credentials | DockerConfig | None = None) -> str:
    """Push ``adapter_dir`` to wherever ``reference`` lives; returns the digest-pinned reference."""
    settings = settings or RegistrySettings.from_env()
    with contextlib.closing(store_for(reference, settings, credentials)) as target:
        return target.push_adapter(adapter_dir, qualify(reference, settings), model_name=model_name)


def pull(reference: str, dest_dir: Path, *, subdir: str = "data", settings: RegistrySettings | None = None,
         credentials: Credentials | DockerConfig | None = None) -> PullResult:
    """Pull the files under ``/subdir`` of ``reference`` into ``dest_dir``, digests verified."""
    settings = settings or RegistrySettings.from_env()
    with contextlib.closing(store_for(reference, settings, credentials)) as source:
        return source.pull(qualify(reference, settings), dest_dir, subdir=subdir)


def copy(source: str, dest: str, settings: RegistrySettings | None = None, *,
         source_credentials: Credentials | DockerConfig | None = None,
         dest_credentials: Credentials | DockerConfig | None = None) -> str:
    """Copy an image between stores (a local layout to a registry, say); digests stay the same.
    Blobs first (streamed from one store into the other, each checked against its digest),
    manifest (and tag) last. Returns the destination pinned by digest."""
    settings = settings or RegistrySettings.from_env()
    with contextlib.closing(store_for(source, settings, source_credentials)) as src, \
            contextlib.closing(store_for(dest, settings, dest_credentials)) as dst:
        sref, dref = src.parse(qualify(source, settings)), dst.parse(qualify(dest, settings))
        found = src.get_manifest(sref, sref.ref)
        if found is None:
            raise errors.RegistryError(f"image {source} not found: nothing to copy")
        data, media_type, digest = found
        manifest = json.loads(data)
        for desc in [manifest["config"], *manifest.get("layers", [])]:
            if not dst.has_blob(dref, desc["digest"]):
                dst.put_blob(dref, functools.partial(src.iter_blob, sref, desc["digest"]), expected=desc["digest"])
        pushed = dst.put_manifest(dref, data, media_type, dref.tag or sref.tag or "latest")
        assert pushed == digest
        return dref.pinned(pushed)
