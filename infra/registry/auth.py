"""Answering a registry's ``401``: HTTP Basic, or bearer tokens from its token service.

Why apart from the HTTP client (:mod:`infra.registry.distribution`): the auth rules are the part
of a registry conversation users meet when something is wrong, and each refusal must say what to
fix — missing credentials, a wrong password, rights that are missing, or a token service the
registry does not trust — without ever printing a password or an ``Authorization`` header.

Registries use one of two schemes, named by their ``WWW-Authenticate`` challenge:

- ``Basic``: the credentials on every request (htpasswd registries).
- ``Bearer realm=...,service=...``: Docker's token spec, what ACR, GHCR, Docker Hub and Harbor
  use. A token is fetched from the realm for one *scope* (``repository:NAME:pull`` or
  ``...:push,pull``), with the credentials as Basic auth, or anonymously when there are none
  (public images); tokens are cached per scope. A token refused later (expired) is fetched again
  by the client; a refusal with ``error="insufficient_scope"`` means the credentials were fine
  but lack the right (``RegistryAccessDenied``), which :func:`granted_actions` explains by
  reading the token's claims.

:class:`Transient` marks a fault worth another attempt (connection refused, 429/5xx, a token
service that is down); the client's retry policy (``infra.retry``) retries it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import NoReturn

import httpx

from infra.registry.credentials import Credentials
from infra.registry.reference import Reference
from workspace import errors


class Transient(Exception):
    """An HTTP fault worth retrying (internal; turned into RegistryError after the last attempt)."""


class StaleToken(Transient):
    """A cached bearer token was refused (it expired) on a request whose streamed body is spent; a
    fresh token is already cached, and the retry re-produces the body from its callable."""


class Authenticator:
    """The ``Authorization`` headers for one registry, per repository scope (never logged)."""

    def __init__(self, client: httpx.Client, registry: str, base_url: str, credentials: Credentials | None) -> None:
        self._client, self.registry, self.base_url = client, registry, base_url
        self.credentials = credentials
        self._headers: dict[str, str] = {}  # scope (or "*" for Basic) -> Authorization value
        self._probed: set[str] = set()

    @staticmethod
    def scope(ref: Reference, actions: str) -> str:
        """The token scope for ``actions`` ("pull" or "push,pull") on ``ref``'s repository."""
        return f"repository:{ref.repository}:{actions}"

    def headers(self, ref: Reference, actions: str) -> dict[str, str]:
        """The ``Authorization`` header to send for ``actions`` on ``ref`` ({} before any challenge)."""
        value = self._headers.get(self.scope(ref, actions)) or self._headers.get("*")
        return {"Authorization": value} if value else {}

    def needs_probe(self, ref: Reference, actions: str) -> bool:
        """Whether the scheme for this scope is still unknown: before a body that cannot be
        replayed, the client then asks with a body-less request first (:meth:`probed`)."""
        return not self.headers(ref, actions) and self.scope(ref, actions) not in self._probed

    def probed(self, ref: Reference, actions: str) -> None:
        self._probed.add(self.scope(ref, actions))

    def answer(self, resp: httpx.Response, ref: Reference, actions: str) -> None:
        """Answer a 401 challenge: Basic with the credentials, or a bearer token for the scope
        (anonymous when there are no credentials, as public images on Docker Hub or GHCR need)."""
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer":
            basic = self._basic() if self.credentials is not None else None
            self._headers[self.scope(ref, actions)] = "Bearer " + self._fetch_token(params, ref, actions, basic)
        elif self.credentials is None:
            self.failed(ref)
        else:
            self._headers["*"] = self._basic()

    def failed(self, ref: Reference, resp: httpx.Response | None = None, actions: str = "",
               *, token_service: str | None = None) -> NoReturn:
        """Raise the error that says what to fix: missing credentials, a wrong password, or
        credentials that were accepted but lack the right (a token without the asked actions)."""
        challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))[1] if resp is not None else {}
        if self.credentials is None:
            raise errors.RegistryError(
                f"registry {ref.registry} requires authentication and no credentials were found: set "
                "tuning.output.imagePushSecret / imagePullSecrets (Kubernetes), or KAIFLOW_REGISTRY_USERNAME and "
                "KAIFLOW_REGISTRY_PASSWORD or KAIFLOW_DOCKER_CONFIG (local)", reason="RegistryAuthFailed")
        user, source = self.credentials.username, self.credentials.source
        if challenge.get("error") == "insufficient_scope":
            wanted = "push to" if "push" in actions.split(",") else "pull from"
            granted = granted_actions(self._headers.get(self.scope(ref, actions), ""), ref.repository)
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

    def _basic(self) -> str:
        assert self.credentials is not None
        return "Basic " + base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()

    def _fetch_token(self, params: dict[str, str], ref: Reference, actions: str, basic: str | None) -> str:
        realm = params.get("realm", "")
        if not realm.startswith("http"):
            raise errors.RegistryError(f"registry {ref.registry} asked for a bearer token without a usable realm "
                                       f"(WWW-Authenticate realm={realm!r}): is {self.base_url} a registry?")
        query = {"service": params.get("service", ""), "scope": self.scope(ref, actions)}
        service = token_service(realm)
        try:
            resp = self._client.get(realm, params=query, headers={"Authorization": basic} if basic else {})
        except httpx.TransportError as exc:
            raise Transient(f"token service {service} of registry {ref.registry} unreachable ({why(exc)})") from exc
        if resp.status_code in (401, 403):
            self.failed(ref, token_service=service)
        if resp.status_code != 200:
            raise Transient(f"token service {service} of registry {ref.registry} answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = str(body.get("token") or body.get("access_token") or "")
        except (ValueError, AttributeError):
            token = ""
        if not token:
            raise errors.RegistryError(f"token service {service} of registry {ref.registry} answered without a "
                                       "token (no JSON 'token' or 'access_token'): is the realm URL right?")
        return token


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme in lower case, its parameters) of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def token_service(realm: str) -> str:
    """The realm without its query, for messages (``https://auth.docker.io/token``)."""
    url = httpx.URL(realm)
    return f"{url.scheme}://{url.netloc.decode()}{url.path}"


def granted_actions(authorization: str, repository: str) -> str:
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


def why(exc: httpx.TransportError) -> str:
    """A transport fault in a few words ("ConnectError: [Errno 111] Connection refused")."""
    name = type(exc).__name__
    reason = str(exc) or name
    return f"{name}: {reason}" if reason != name else name
