"""The OCI distribution API over httpx: a registry as a :class:`~infra.registry.store.Store`.

Why a small client of our own rather than oras-py 0.2.43 (see FIELD-NOTES): its ``login()`` writes
``~/.docker/config.json`` even on a wrong password, it does not verify digests on pull, a
directory push makes a different layer from Kaito's, and it has no way to stream a layer that is
built on the fly. Here a layer is built, hashed and uploaded in one pass (a chunked ``PATCH``
whose digest is computed while it streams, by :class:`~infra.registry.fastpull.Prefetched`), and
a blob GET streams into the pull's one-pass reader; ``tests/infra/test_registry_oras.py`` checks
that oras-py and kaiflow read each other's images.

Faults: one exchange (a request, a blob upload, opening a blob download) is tried again on a
connection fault, a timeout, 429 or 5xx, under the shared policy of :mod:`infra.retry` (layer 1;
the Prefect task retries the whole step after that): ``RegistrySettings.attempts`` tries with
capped exponential backoff, then a :class:`workspace.errors.RegistryError` with ``transient=True``
that says what to check. A refusal is never retried. A stream that breaks off midway is not
retried here (its bytes were consumed): the pull fails with a transient error and nothing lands.

Auth (:mod:`infra.registry.auth`): a body-less request answers its 401 at once and is re-sent; a
streamed body cannot be re-sent, so the scheme is learnt first with ``GET /v2/``, and a token that
expired before a streamed body went out raises :class:`~infra.registry.auth.StaleToken` (a fresh
token is already fetched) for the retry to re-produce the body.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from infra.registry import auth, fastpull, store
from infra.registry.credentials import Credentials, DockerConfig, resolve_credentials
from infra.registry.reference import Reference, parse_reference
from infra.registry.settings import RegistrySettings
from workspace import errors

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class RegistryStore(store.BaseStore):
    """A registry reached over the OCI distribution API (basic or bearer-token auth)."""

    def __init__(self, registry: str, settings: RegistrySettings | None = None,
                 credentials: Credentials | DockerConfig | None = None, *, insecure: bool | None = None) -> None:
        self.settings = settings or RegistrySettings.from_env()
        self.registry = registry
        plain = insecure if insecure is not None else plain_http_allowed(registry, self.settings)
        api_host = "registry-1.docker.io" if registry == "docker.io" else registry
        self.base_url = f"{'http' if plain else 'https'}://{api_host}"
        # verify=False only where no TLS is spoken at all (it also skips loading the CA bundle, ~40 ms)
        self._client = httpx.Client(timeout=httpx.Timeout(self.settings.timeout_s, connect=10.0),
                                    follow_redirects=True, verify=not plain)
        self.auth = auth.Authenticator(self._client, registry, self.base_url,
                                       resolve_credentials(registry, self.settings, credentials))

    @property
    def credentials(self) -> Credentials | None:
        return self.auth.credentials

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RegistryStore":
        return self

    def __repr__(self) -> str:
        return f"RegistryStore({self.base_url!r})"

    # primitives (documented on store.Store) -----------------------------------------------------
    def parse(self, reference: str) -> Reference:
        ref = parse_reference(reference)
        if not ref.registry:
            ref = dataclasses.replace(ref, registry=self.registry)
        if ref.registry != self.registry:
            raise errors.RegistryError(f"{reference} is not on registry {self.registry}: use store_for({reference!r})")
        return ref

    def has_blob(self, ref: Reference, digest: str) -> bool:
        resp = self._call("HEAD", f"/v2/{ref.repository}/blobs/{digest}", ref, "pull")
        return resp.status_code == 200

    def put_blob(self, ref: Reference, chunks: store.Chunks, expected: str | None = None) -> tuple[str, int]:
        if expected and self.has_blob(ref, expected):
            return expected, -1
        return self._retrying(lambda: self._upload_once(ref, chunks, expected), f"upload a blob to {ref.registry}")

    def iter_blob(self, ref: Reference, digest: str) -> Iterator[bytes]:
        # a generator: the request starts when the consumer starts reading. Opening is retried;
        # a fault mid-stream is not (the partial data was already consumed): it raises a
        # transient RegistryError and the caller's retry pulls again.
        resp = self._retrying(lambda: self._open_blob(ref, digest), f"download blob {digest} from {ref.registry}")
        try:
            yield from resp.iter_raw()  # as received: no re-chunking copies
        except httpx.TransportError as exc:
            raise errors.RegistryError(f"download of {digest} from {ref.registry} broke off ({auth.why(exc)}); "
                                       "nothing was written, pull again", transient=True) from exc
        finally:
            resp.close()

    def put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        resp = self._call("PUT", f"/v2/{ref.repository}/manifests/{tag or digest}", ref, "push,pull",
                          content=data, headers={"Content-Type": media_type})
        self._expect(resp, (201,), ref, "push the manifest")
        return digest

    def get_manifest(self, ref: Reference, which: str) -> tuple[bytes, str, str] | None:
        resp = self._call("GET", f"/v2/{ref.repository}/manifests/{which}", ref, "pull",
                          headers={"Accept": store.MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        self._expect(resp, (200,), ref, f"fetch manifest {which}")
        data = resp.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        claimed = resp.headers.get("Docker-Content-Digest")
        if (which.startswith("sha256:") and digest != which) or (claimed and claimed != digest):
            raise errors.RegistryError(f"manifest {which} of {ref} does not match its digest (got {digest}); "
                                       "the registry or a proxy altered it", transient=True)
        return data, resp.headers.get("Content-Type", store.OCI_MANIFEST).split(";")[0], digest

    # one exchange each ---------------------------------------------------------------------------
    def _upload_once(self, ref: Reference, chunks: store.Chunks, expected: str | None) -> tuple[str, int]:
        start = self._send("POST", f"/v2/{ref.repository}/blobs/uploads/", ref, "push,pull")
        self._expect(start, (202,), ref, "start a blob upload")
        body = fastpull.Prefetched(chunks)
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

    def _open_blob(self, ref: Reference, digest: str) -> httpx.Response:
        self._ensure_auth(ref, "pull")
        resp = self._get_stream(ref, digest)
        if resp.status_code == 401:  # a GET has no body to replay: a fresh token (one expired), once
            self.auth.answer(resp, ref, "pull")
            resp = self._get_stream(ref, digest)
        if resp.status_code != 200:
            if resp.status_code in _TRANSIENT_STATUS:
                raise auth.Transient(f"HTTP {resp.status_code} for blob {digest}")
            if resp.status_code == 401:
                self.auth.failed(ref, resp, "pull")
            self._expect(resp, (200,), ref, f"download blob {digest}")
        return resp

    def _get_stream(self, ref: Reference, digest: str) -> httpx.Response:
        """GET a blob, streamed when it answers 200; any other answer is read and closed."""
        request = self._client.build_request("GET", f"{self.base_url}/v2/{ref.repository}/blobs/{digest}",
                                             headers=self.auth.headers(ref, "pull"))
        try:
            resp = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise auth.Transient(auth.why(exc)) from exc
        if resp.status_code != 200:
            resp.read()
            resp.close()
        return resp

    # HTTP with auth and retries ------------------------------------------------------------------
    def _call(self, method: str, path: str, ref: Reference, actions: str, **kw: Any) -> httpx.Response:
        return self._retrying(lambda: self._send(method, path, ref, actions, **kw), f"{method} {path} on {ref.registry}")

    def _send(self, method: str, url: str, ref: Reference, actions: str, **kw: Any) -> httpx.Response:
        full = url if url.startswith("http") else self.base_url + url
        streaming = not isinstance(kw.get("content"), (bytes, type(None)))
        if streaming:
            self._ensure_auth(ref, actions)
        sent = self.auth.headers(ref, actions)
        headers = {**kw.pop("headers", {}), **sent}
        try:
            resp = self._client.request(method, full, headers=headers, **kw)
            if resp.status_code == 401 and not streaming:
                self.auth.answer(resp, ref, actions)
                headers.update(self.auth.headers(ref, actions))
                resp = self._client.request(method, full, headers=headers, **kw)
        except httpx.TransportError as exc:
            raise auth.Transient(auth.why(exc)) from exc
        if resp.status_code in _TRANSIENT_STATUS:
            raise auth.Transient(f"HTTP {resp.status_code} from {method} {httpx.URL(full).path}")
        if resp.status_code == 401:
            if streaming and sent.get("Authorization", "").startswith("Bearer "):
                # the cached token expired before this body went out: the body cannot be replayed
                # here, so fetch a fresh token now and let the caller's retry re-produce the body
                self.auth.answer(resp, ref, actions)
                raise auth.StaleToken(f"the registry refused an expired token for {method} {httpx.URL(full).path}; "
                                      "fetched a new one")
            self.auth.failed(ref, resp, actions)
        return resp

    def _ensure_auth(self, ref: Reference, actions: str) -> None:
        """Before a body that cannot be replayed: learn the auth scheme with a body-less request."""
        if not self.auth.needs_probe(ref, actions):
            return
        self._send("GET", "/v2/", ref, actions)
        self.auth.probed(ref, actions)

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` under the registry's retry policy (``infra.retry``, layer 1): tried again on
        :class:`~infra.registry.auth.Transient`, then a transient RegistryError saying what to check."""
        def give_up(exc: BaseException, attempts: int) -> errors.RegistryError:
            return errors.RegistryError(
                f"could not {what} after {attempts} attempts: {exc}. Check that the registry at "
                f"{self.base_url} is running and reachable, then retry", transient=True)

        return self.settings.retry_policy().call(fn, retry_on=auth.Transient, what=f"registry {self.registry}",
                                                 log=log, give_up=give_up)

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


def plain_http_allowed(registry: str, settings: RegistrySettings) -> bool:
    """Whether ``registry`` is spoken to over plain HTTP: loopback always, others when listed in
    ``settings.insecure_registries`` (KAIFLOW_INSECURE_REGISTRIES) by host or host:port."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    return host in ("localhost", "[::1]") or host.startswith("127.") or registry in settings.insecure_registries \
        or host in settings.insecure_registries


def _registry_error_text(resp: httpx.Response) -> str:
    try:
        errs = resp.json().get("errors", [])
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs) or resp.reason_phrase
    except (ValueError, AttributeError):
        return resp.reason_phrase
