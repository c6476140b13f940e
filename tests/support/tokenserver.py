"""A Docker token service for tests: what ACR, GHCR, Docker Hub and Harbor put in front of a registry.

Why a real one: kaiflow's client follows ``WWW-Authenticate: Bearer realm=...`` challenges to a
token endpoint and sends the token it gets back; only a real registry that really verifies the
tokens (Debian's ``docker-registry``, distribution 2.8, with ``auth: token``) shows whether the
scopes, expiry and error paths agree with what registries do. It implements Docker's "Token
Authentication Specification" (distribution docs, ``spec/auth/token.md`` and ``jwt.md``):

- At start it makes an EC P-256 key and a self-signed X.509 certificate (``cert_path``, the
  registry's ``rootcertbundle``); tokens are ES256 JWTs whose header carries ``x5c`` (that
  certificate, base64 DER), which distribution 2.8 verifies against the bundle.
- ``GET /token?service=..&scope=repository:NAME:pull,push`` with HTTP Basic auth: a wrong user or
  password gets 401. A known user gets a token granting the *subset* of the asked actions that
  ``grants`` allows (as the spec says: never an error for asking too much) — so a pull-only user
  gets a token the registry then refuses for a push with ``error="insufficient_scope"``.
- Anonymous requests (no ``Authorization``) get a token too, as Docker Hub does, granting what
  ``grants[ANONYMOUS]`` allows (by default nothing).
- The answer is ``{"token", "access_token", "expires_in", "issued_at"}``.

Expiry: distribution 2.8 accepts a token up to 60 s after its ``exp`` (``token.Leeway``, for clock
skew). To test expiry in seconds, ``exp`` is written ``registry_leeway_s`` earlier than the moment
the token should stop working, so a token made with ``lifetime_s=2`` is refused by the registry
~2 s later (``exp`` has 1 s resolution: allow up to one more second).

    from tests.support import tokenserver

    with tokenserver.TokenServer(tmp_path, users={"kaiflow": "pw", "reader": "pw2"},
                                 grants={"reader": {"*": ("pull",)}}) as ts:
        ts.realm, ts.service, ts.issuer, ts.cert_path    # what the registry's config needs
        ts.fail_next(2)          # the next 2 requests get 503
        ts.lifetime_s = 2        # tokens issued from now on stop working ~2 s later
        ts.requests              # [TokenRequest(user, scopes, status, granted), ...]
        ts.issued                # how many tokens were issued
        ts.stop(); ts.start()    # same port: simulate the token service being down

Grants map a user (or :data:`ANONYMOUS`) to ``{repository glob: actions}``; a user without an
entry may do everything (``pull``, ``push``, ``delete``) on every repository.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import fnmatch
import http.server
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infra import local_process

ANONYMOUS = ""
ALL_ACTIONS = ("pull", "push", "delete")
DISTRIBUTION_LEEWAY_S = 60  # registry/auth/token/token.go: Leeway


@dataclasses.dataclass(frozen=True)
class TokenRequest:
    """One request the token service answered (passwords are not kept)."""

    user: str | None          # None: anonymous (no Authorization header)
    scopes: tuple[str, ...]   # as asked, e.g. ("repository:adapters/x:push,pull",)
    status: int
    granted: tuple[str, ...] = ()  # "repository:NAME:a,b" for each access entry of the token
    service: str = ""


class TokenServer:
    """The token endpoint on 127.0.0.1 (a thread of this process); a context manager."""

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 grants: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                 lifetime_s: float = 300.0, registry_leeway_s: int = DISTRIBUTION_LEEWAY_S,
                 service: str = "kaiflow-test-registry", issuer: str = "kaiflow-test-token-service",
                 port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.users = dict(users if users is not None else {"kaiflow": "s3cret-Pa55"})
        self.grants = {k: dict(v) for k, v in (grants or {}).items()}
        self.grants.setdefault(ANONYMOUS, {})
        self.lifetime_s = lifetime_s
        self.registry_leeway_s = registry_leeway_s
        self.service, self.issuer = service, issuer
        self.port = port or local_process.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.realm = f"{self.url}/token"
        self.cert_path = self.workdir / "token-root.pem"
        self.requests: list[TokenRequest] = []
        self.issued = 0
        self._faults: list[int] = []  # statuses for the next requests
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert_der = _self_signed_cert(self._key, issuer)
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "TokenServer":
        """Start (or restart after :meth:`stop`) on the same port with the same key."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(x509.load_der_x509_certificate(self._cert_der).public_bytes(serialization.Encoding.PEM))
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="tokenserver", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "TokenServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test helpers ----------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` (and no token)."""
        with self._lock:
            self._faults.extend([status] * n)

    def granted_scopes(self, user: str | None = None) -> list[str]:
        """The scopes asked in the requests that got a token (of ``user`` when given)."""
        return [s for r in self.requests if r.status == 200 and (user is None or r.user == user) for s in r.scopes]

    def mint(self, access: Sequence[Mapping[str, Any]], subject: str = "admin") -> str:
        """A token with exactly ``access`` (for a test's own raw requests to the registry)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + int(self.lifetime_s) - self.registry_leeway_s, "nbf": now - 1, "iat": now,
            "jti": uuid.uuid4().hex, "access": [dict(a) for a in access],
        }
        headers = {"typ": "JWT", "x5c": [base64.b64encode(self._cert_der).decode()]}
        with self._lock:
            self.issued += 1
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)

    # -- the endpoint ----------------------------------------------------------------------
    def _answer(self, authorization: str | None, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        service = (query.get("service") or [""])[0]
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        user, known = _basic_user(authorization, self.users)
        if fault is not None:
            return self._record(user, scopes, fault, service), {"errors": [{"code": "UNAVAILABLE"}]}
        if not known:
            return self._record(user, scopes, 401, service), {"details": "incorrect username or password"}
        if service != self.service:
            return self._record(user, scopes, 400, service), {"details": f"unknown service {service!r}"}
        access = [a for a in (self._grant(user or ANONYMOUS, s) for s in scopes) if a]
        token = self.mint(access, subject=user or "anonymous")
        granted = tuple(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access)
        self._record(user, scopes, 200, service, granted)
        issued_at = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        return 200, {"token": token, "access_token": token, "expires_in": int(self.lifetime_s), "issued_at": issued_at}

    def _grant(self, user: str, scope: str) -> dict[str, Any] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        rules = self.grants.get(user)
        allowed = set(ALL_ACTIONS) if rules is None else {
            a for pattern, acts in rules.items() if fnmatch.fnmatchcase(name, pattern) for a in acts}
        given = [a for a in actions.split(",") if a in allowed]
        return {"type": "repository", "name": name, "actions": given} if given else None

    def _record(self, user: str | None, scopes: tuple[str, ...], status: int, service: str,
                granted: tuple[str, ...] = ()) -> int:
        with self._lock:
            self.requests.append(TokenRequest(user, scopes, status, granted, service))
        return status


def _basic_user(authorization: str | None, users: Mapping[str, str]) -> tuple[str | None, bool]:
    """(user, known): no header -> (None, True): anonymous is allowed; a bad one -> (user, False)."""
    if not authorization:
        return None, True
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None, False
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, False
    return user, user in users and users[user] == password


def _self_signed_cert(key: ec.EllipticCurvePrivateKey, issuer: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/token":
            return self._send(404, {"details": "not found"})
        status, body = self.owner._answer(self.headers.get("Authorization"), parse_qs(url.query))
        self._send(status, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="kaiflow-test-token-service"')
        self.end_headers()
        self.wfile.write(data)
