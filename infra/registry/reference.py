"""Image references: the names of images, parsed and checked before anything touches the network.

Why a module of its own: every other part of :mod:`infra.registry` (the stores, credentials, auth
scopes, :func:`infra.registry.copy`) works on a parsed :class:`Reference`, and every malformed name
a user writes in a Workspace should fail here, with a message that says what to change, rather than
as an HTTP 404 three calls later.

Two forms are accepted:

- registry references in docker's grammar, ``[registry/]repository[:tag][@sha256:...]``; the first
  path part is a registry only when it looks like a host (has a ``.`` or ``:``, or is ``localhost``);
- OCI image layout references, ``oci:/path/to/layout[:tag|@digest]``: a directory on this machine
  (:mod:`infra.registry.layout`), the local default when no registry is configured.

:func:`qualify` makes explicit where a bare ``repo:tag`` goes (``KAIFLOW_REGISTRY``, else a layout
under the layout root), so what is recorded and pinned always names its store.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from infra.registry.settings import RegistrySettings
from workspace import errors

LAYOUT_PREFIX = "oci:"

_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


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


def qualify(reference: str, settings: RegistrySettings | None = None) -> str:
    """``reference`` with the registry or layout it resolves to made explicit (for pinning)."""
    settings = settings or RegistrySettings.from_env()
    ref = parse_reference(reference)
    if ref.layout is not None or ref.registry:
        return str(ref)
    if settings.registry:
        return str(dataclasses.replace(ref, registry=settings.registry))
    return str(dataclasses.replace(ref, layout=(settings.layout_root / ref.repository).resolve()))


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
