"""Bearer-token registry auth — what ACR, GHCR, Docker Hub and Harbor use — for real.

Debian's docker-registry (distribution 2.8) runs with ``auth: token`` and verifies every JWT
against the certificate of our token service (tests/support/tokenserver.py, Docker's token
spec); kaiflow's own client (infra/registry/auth.py) follows the ``WWW-Authenticate: Bearer`` challenges.
Nothing is mocked: scopes, refusals, expiry and faults are what the registry and the token
service really answer.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra import registry
from tests.support import registry as registry_support
from tests.support import tokenserver
from workspace import errors

MODEL = "phi-3-mini-4k-instruct"
USER, PASSWORD = "kaiflow", "s3cret-Pa55"
READER, READER_PASSWORD = "reader", "r3ader-Pa55"
GRANTS = {READER: {"adapters/*": ("pull",)}, tokenserver.ANONYMOUS: {"public/*": ("pull",)}}
SHORT_LIFETIME_S = 2
EXPIRED_AFTER_S = SHORT_LIFETIME_S + 0.3  # exp has 1 s resolution: a token stops working 1-2 s after issue


@contextlib.contextmanager
def _token_registry(workdir: Path, **token_options: object) -> Iterator[tuple[registry_support.LocalRegistry, tokenserver.TokenServer]]:
    registry_support.require_binaries()
    with tokenserver.TokenServer(workdir / "token", users={USER: PASSWORD, READER: READER_PASSWORD},
                                 grants=GRANTS, **token_options) as ts:  # type: ignore[arg-type]
        with registry_support.LocalRegistry(workdir / "registry", token=ts, username=USER, password=PASSWORD) as reg:
            yield reg, ts


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[registry_support.LocalRegistry, tokenserver.TokenServer]]:
    with _token_registry(tmp_path_factory.mktemp("registry-token")) as pair:
        yield pair


def _same_files(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in registry.ADAPTER_FILES)


def _scopes(ts: tokenserver.TokenServer, since: int) -> list[tuple[str | None, tuple[str, ...], int]]:
    return [(r.user, r.scopes, r.status) for r in ts.requests[since:]]


# --- 1. the token flow ---------------------------------------------------------------------------
def test_the_registry_really_demands_tokens_from_our_service(token_registry):
    reg, ts = token_registry
    resp = httpx.get(f"{reg.url}/v2/adapters/x/manifests/1")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith(f'Bearer realm="{ts.realm}",service="{ts.service}"')
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert httpx.get(f"{reg.url}/v2/", headers={"Authorization": f"Basic {basic}"}).status_code == 401


@pytest.mark.parametrize("how", ["docker-config", "credentials"])
def test_push_then_pull_by_tag_and_digest_through_the_token_service(token_registry, adapter_dir, settings, tmp_path,
                                                                    how, caplog):
    caplog.set_level(logging.DEBUG)
    reg, ts = token_registry
    creds = reg.docker_config() if how == "docker-config" else registry.Credentials(USER, PASSWORD, "a test")
    repo = f"adapters/token-{how}"
    ref = f"{reg.host}/{repo}:0.0.1"
    since = len(ts.requests)
    pinned = registry.push_adapter(adapter_dir, ref, model_name=MODEL, settings=settings, credentials=creds)
    by_tag = registry.pull(ref, tmp_path / "by-tag", settings=settings, credentials=creds)
    by_digest = registry.pull(pinned, tmp_path / "by-digest", settings=settings, credentials=creds)
    assert by_tag.reference == by_digest.reference == pinned
    assert by_tag.annotations == {"sh.kaito.model.name": MODEL}
    assert _same_files(adapter_dir, tmp_path / "by-tag") and _same_files(adapter_dir, tmp_path / "by-digest")
    # one token per store and operation, for exactly the scope it needs
    assert _scopes(ts, since) == [(USER, (f"repository:{repo}:push,pull",), 200),
                                  (USER, (f"repository:{repo}:pull",), 200),
                                  (USER, (f"repository:{repo}:pull",), 200)]
    assert PASSWORD not in caplog.text and "Bearer ey" not in caplog.text and "eyJ" not in caplog.text


# --- 2. wrong password ---------------------------------------------------------------------------
def test_a_wrong_password_names_registry_token_service_and_secret_and_leaks_nothing(token_registry, adapter_dir,
                                                                                  settings, caplog):
    caplog.set_level(logging.DEBUG)
    reg, ts = token_registry
    secret = "wr0ng-Pa55-d0-not-print"
    creds = registry.credentials_from_docker_config(reg.docker_config(password=secret), reg.host,
                                                    source="imagePushSecret 'acr-secret'")
    since = len(ts.requests)
    with pytest.raises(errors.RegistryError) as info:
        registry.push_adapter(adapter_dir, f"{reg.host}/adapters/denied:1", settings=settings, credentials=creds)
    message = str(info.value)
    assert f"authentication failed for the token service {ts.realm} of registry {reg.host} as user {USER!r}" in message
    assert "fix the username/password in imagePushSecret 'acr-secret'" in message
    assert not info.value.transient and info.value.reason == "RegistryAuthFailed"
    assert _scopes(ts, since) == [(USER, ("repository:adapters/denied:push,pull",), 401)]  # failed at once
    basic = base64.b64encode(f"{USER}:{secret}".encode()).decode()
    for text in (message, repr(info.value), caplog.text, *(repr(r.args) for r in caplog.records)):
        assert secret not in text and basic not in text


# --- 3. a user who may only pull -----------------------------------------------------------------
def test_a_pull_only_user_pulls_and_is_told_it_may_not_push_not_that_its_password_is_wrong(
        token_registry, adapter_dir, settings, tmp_path):
    reg, ts = token_registry
    ref = f"{reg.host}/adapters/shared:1"
    pinned = registry.push_adapter(adapter_dir, ref, settings=settings, credentials=reg.docker_config())
    reader = registry.Credentials(READER, READER_PASSWORD, "imagePullSecrets 'reader'")
    assert registry.pull(ref, tmp_path / "out", settings=settings, credentials=reader).reference == pinned
    assert _same_files(adapter_dir, tmp_path / "out")

    with pytest.raises(errors.RegistryError) as info:
        registry.push_adapter(adapter_dir, f"{reg.host}/adapters/shared:2", settings=settings, credentials=reader)
    message = str(info.value)
    assert "password" not in message
    assert f"registry {reg.host} accepted the credentials of {READER!r} (from imagePullSecrets 'reader')" in message
    assert "push to adapters/shared (the token grants pull there)" in message
    assert info.value.reason == "RegistryAccessDenied" and not info.value.transient
    assert ts.requests[-1].user == READER and ts.requests[-1].granted == ("repository:adapters/shared:pull",)
    with registry.RegistryStore(reg.host, settings, reg.docker_config()) as store:
        assert store.resolve(f"{reg.host}/adapters/shared:2") is None  # nothing tagged
    with pytest.raises(errors.RegistryError, match=r"does not let them pull from other/repo \(the token grants "
                                                   r"no access there\)") as info:
        registry.pull(f"{reg.host}/other/repo:1", tmp_path / "other", settings=settings, credentials=reader)
    assert info.value.reason == "RegistryAccessDenied"


def test_anonymous_pulls_of_public_repositories_get_an_anonymous_token(token_registry, adapter_dir, settings, tmp_path):
    """The service answers anonymous requests with a token (as Docker Hub does) granting what
    ``grants[ANONYMOUS]`` allows: here pull on public/*, nothing elsewhere."""
    reg, ts = token_registry
    ref = f"{reg.host}/public/adapter:1"
    pinned = registry.push_adapter(adapter_dir, ref, settings=settings, credentials=reg.docker_config())
    since = len(ts.requests)
    assert registry.pull(ref, tmp_path / "out", settings=settings).reference == pinned  # no credentials anywhere
    assert _same_files(adapter_dir, tmp_path / "out")
    assert _scopes(ts, since) == [(None, ("repository:public/adapter:pull",), 200)]
    for action in (lambda: registry.push_adapter(adapter_dir, f"{reg.host}/public/adapter:2", settings=settings),
                   lambda: registry.pull(f"{reg.host}/adapters/shared:1", tmp_path / "private", settings=settings)):
        with pytest.raises(errors.RegistryError, match="requires authentication and no credentials were found"):
            action()


def test_a_token_the_registry_does_not_trust_is_not_called_a_wrong_password(tmp_path, adapter_dir, settings):
    with _token_registry(tmp_path) as (reg, ts):
        ts.issuer = "another-token-service"  # the registry trusts only the issuer it was started with
        with pytest.raises(errors.RegistryError) as info:
            registry.push_adapter(adapter_dir, f"{reg.host}/adapters/untrusted:1", settings=settings,
                                  credentials=reg.docker_config())
        message = str(info.value)
        assert f"registry {reg.host} refused the token its token service issued to {USER!r} just now" in message
        assert "not a password problem" in message and "fix the username" not in message
        assert [status for _, _, status in _scopes(ts, 0)] == [200]  # one fresh token, refused: no loop


# --- 4. expiry -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_same_store_fetches_a_new_token_when_its_token_expired(tmp_path, adapter_dir, settings):
    with _token_registry(tmp_path, lifetime_s=SHORT_LIFETIME_S) as (reg, ts), \
            registry.RegistryStore(reg.host, settings, reg.docker_config()) as store:
        first = store.push_adapter(adapter_dir, f"{reg.host}/adapters/expiry:1")
        store.pull(first, tmp_path / "first")
        since = len(ts.requests)
        time.sleep(EXPIRED_AFTER_S)
        (adapter_dir / "adapter_model.safetensors").write_bytes(b"changed" * 1000)
        second = store.push_adapter(adapter_dir, f"{reg.host}/adapters/expiry:2")
        assert second != first
        assert store.pull(f"{reg.host}/adapters/expiry:2", tmp_path / "second").reference == second
        assert _same_files(adapter_dir, tmp_path / "second")
        asked = {(scopes, status) for _, scopes, status in _scopes(ts, since)}
        assert asked == {(("repository:adapters/expiry:push,pull",), 200), (("repository:adapters/expiry:pull",), 200)}


@pytest.mark.slow
def test_streams_started_with_an_expired_token_get_a_fresh_one(tmp_path, adapter_dir, settings):
    """The public calls above renew a token on the body-less request before each stream (the POST
    of an upload, the manifest GET of a pull). These are the streams themselves reached with a token
    that expired since: a blob GET (what copy() streams from its source, long after its manifest GET
    when an image is big) and an upload's PATCH (its token can expire between POST and PATCH).
    That gap cannot be forced through the public calls, so this drives the store's primitives."""
    with _token_registry(tmp_path, lifetime_s=SHORT_LIFETIME_S) as (reg, ts), \
            registry.RegistryStore(reg.host, settings, reg.docker_config()) as store:
        ref = store.parse(f"{reg.host}/adapters/stream:1")
        store.push_adapter(adapter_dir, str(ref))
        _, manifest = store.fetch_image_manifest(ref)  # caches a pull token
        layer = manifest["layers"][0]
        start = store._send("POST", f"/v2/{ref.repository}/blobs/uploads/", ref, "push,pull")  # a push token
        assert start.status_code == 202
        time.sleep(EXPIRED_AFTER_S)
        since = len(ts.requests)

        blob = b"".join(store.iter_blob(ref, layer["digest"]))
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]

        expired = store.auth.headers(ref, "push,pull")
        with pytest.raises(registry.auth.StaleToken):  # a Transient: put_blob's retry re-produces the body
            store._send("PATCH", store._location(start), ref, "push,pull", content=iter([b"payload"]),
                        headers={"Content-Type": "application/octet-stream"})
        # the refused PATCH itself fetched a new token (one per scope so far), for the retry to use
        assert _scopes(ts, since) == [(USER, ("repository:adapters/stream:pull",), 200),
                                      (USER, ("repository:adapters/stream:push,pull",), 200)]
        assert store.auth.headers(ref, "push,pull") != expired
        digest, size = store.put_blob(ref, lambda: [b"payload"])
        assert (digest, size) == ("sha256:" + hashlib.sha256(b"payload").hexdigest(), 7)


# --- 5. token service faults ---------------------------------------------------------------------
def test_token_service_503s_are_retried_then_the_push_goes_through(token_registry, adapter_dir, settings, tmp_path,
                                                                   caplog):
    reg, ts = token_registry
    ref = f"{reg.host}/adapters/flaky:1"
    since = len(ts.requests)
    ts.fail_next(2)  # settings: 3 attempts
    pinned = registry.push_adapter(adapter_dir, ref, settings=settings, credentials=reg.docker_config())
    assert [status for _, _, status in _scopes(ts, since)] == [503, 503, 200]
    assert f"token service {ts.realm} of registry {reg.host} answered HTTP 503" in caplog.text
    assert registry.pull(ref, tmp_path / "out", settings=settings, credentials=reg.docker_config()).reference == pinned

    ts.fail_next(settings.attempts)
    with pytest.raises(errors.RegistryError) as info:
        registry.pull(ref, tmp_path / "again", settings=settings, credentials=reg.docker_config())
    assert info.value.transient
    assert f"after {settings.attempts} attempts: token service {ts.realm} of registry {reg.host} answered HTTP 503" \
        in str(info.value)


def test_token_service_down_is_a_clear_transient_error_naming_it(tmp_path, adapter_dir, settings):
    with _token_registry(tmp_path) as (reg, ts):
        ts.stop()
        with pytest.raises(errors.RegistryError) as info:
            registry.push_adapter(adapter_dir, f"{reg.host}/adapters/down:1", settings=settings,
                                  credentials=reg.docker_config())
        assert info.value.transient
        assert f"token service {ts.realm} of registry {reg.host} unreachable (ConnectError" in str(info.value)
        with registry.RegistryStore(reg.host, settings, reg.docker_config()) as store:
            ts.start()  # back on the same port: the next push works
            assert store.resolve(f"{reg.host}/adapters/down:1") is None
            store.push_adapter(adapter_dir, f"{reg.host}/adapters/down:1")


# --- 6. copy between two token-auth registries ---------------------------------------------------
def test_copy_between_two_token_registries_keeps_the_digest(token_registry, tmp_path, adapter_dir, settings):
    reg, ts = token_registry
    with _token_registry(tmp_path / "second") as (mirror, mirror_ts):
        pinned = registry.push_adapter(adapter_dir, f"{reg.host}/adapters/copy:1", model_name=MODEL,
                                       settings=settings, credentials=reg.docker_config())
        since = len(ts.requests)
        copied = registry.copy(f"{reg.host}/adapters/copy:1", f"{mirror.host}/mirror/copy:1", settings,
                               source_credentials=reg.docker_config(), dest_credentials=mirror.docker_config())
        assert copied.split("@")[1] == pinned.split("@")[1]
        assert _scopes(ts, since) == [(USER, ("repository:adapters/copy:pull",), 200)]
        assert {s for _, scopes, _ in _scopes(mirror_ts, 0) for s in scopes} == {
            "repository:mirror/copy:pull", "repository:mirror/copy:push,pull"}
        pulled = registry.pull(copied, tmp_path / "out", settings=settings, credentials=mirror.docker_config())
        assert pulled.annotations == {"sh.kaito.model.name": MODEL} and _same_files(adapter_dir, tmp_path / "out")
