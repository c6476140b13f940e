"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

Why a real one: kaiflow's registry client must agree with what registries actually do (upload
sessions, digest checks at commit, 401 challenges), and a fake would only agree with itself.

Each :class:`LocalRegistry` runs from its own config file, listens on a free loopback port (the
packaged service listens on all interfaces and is never used) and keeps its data in a folder the
caller owns. With ``auth=True`` it requires htpasswd (bcrypt) basic auth for every request; with
``token=TokenServer(...)`` (tests/support/tokenserver.py) it requires bearer tokens from that
service, as ACR/GHCR/Docker Hub do (distribution's ``auth: token`` section).

    from tests.support import registry

    with registry.LocalRegistry(tmp_path, auth=True) as reg:
        reg.host        # "127.0.0.1:40123"  (for image references: f"{reg.host}/repo:tag")
        reg.url         # "http://127.0.0.1:40123"
        reg.username, reg.password
        reg.docker_config()   # {"auths": {reg.host: {"auth": base64("user:pass")}}}
        reg.stop(); reg.start()   # same port, same data: simulate an outage

Needs the Debian packages ``docker-registry`` and (for auth) ``apache2-utils``; tests that use it
are skipped with the install command when they are missing (see :func:`require_binaries`) — except
under ``make test`` / CI (``KAIFLOW_TESTS_STRICT=1``), where a missing package fails the test.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from infra import local_process

REGISTRY_BIN = "docker-registry"
HTPASSWD_BIN = "htpasswd"
INSTALL_HINT = "apt-get install -y docker-registry apache2-utils"


def require_binaries(auth: bool = False) -> None:
    """Skip the calling test when the Debian packages are missing, saying how to install them."""
    missing = [b for b in (REGISTRY_BIN, HTPASSWD_BIN if auth else None) if b and not shutil.which(b)]
    if missing:
        message = f"{', '.join(missing)} not installed: {INSTALL_HINT}"
        if os.environ.get("KAIFLOW_TESTS_STRICT") == "1":
            pytest.fail(f"{message} (`make system-deps` installs it)")
        pytest.skip(message)


free_port = local_process.free_port  # one helper for "a port free on 127.0.0.1 now"


def _config_yaml(port: int, data_dir: Path, htpasswd: Path | None, token: Any = None) -> str:
    auth = (
        f"auth:\n  htpasswd:\n    realm: kaiflow-test\n    path: {htpasswd}\n" if htpasswd else ""
    )
    if token is not None:  # a tests.support.tokenserver.TokenServer (or anything with these fields)
        auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: {token.service}\n"
                f"    issuer: {token.issuer}\n    rootcertbundle: {token.cert_path}\n")
    return (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {data_dir}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        f"  secret: {base64.b16encode(os.urandom(16)).decode()}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
        f"{auth}"
    )


class LocalRegistry:
    """One ``docker-registry`` process on 127.0.0.1; a context manager (starts on enter)."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: bool = False,
        username: str = "kaiflow",
        password: str = "s3cret-Pa55",
        port: int | None = None,
        token: Any = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.auth = auth
        self.token = token  # a started tokenserver.TokenServer: bearer-token auth (username/password are its user's)
        self.username = username if auth or token is not None else None
        self.password = password if auth or token is not None else None
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "LocalRegistry":
        """Start (or restart after :meth:`stop`) on the same port and data; wait until it answers."""
        require_binaries(self.auth)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        htpasswd = self._write_htpasswd() if self.auth else None
        self.config_path.write_text(_config_yaml(self.port, self.data_dir, htpasswd, self.token))
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Stop the process this object started (by its PID); data stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------
    def docker_config(self, *, password: str | None = None, style: str = "auth") -> dict[str, Any]:
        """A docker ``config.json`` document for this registry (``style``: "auth" or "fields")."""
        user, pw = self.username or "anonymous", password if password is not None else self.password or ""
        if style == "fields":
            entry: dict[str, str] = {"username": user, "password": pw}
        else:
            entry = {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}
        return {"auths": {self.host: entry}}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A raw HTTP request to the registry (with this registry's credentials when auth is on;
        with token auth, a token minted for the repository in ``path`` with every action)."""
        hdrs = dict(headers or {})
        if self.token is not None and path.startswith("/v2/") and "/" in path[4:]:
            name = path[4:].split("/manifests/")[0].split("/blobs/")[0].split("/tags/")[0]
            access = [{"type": "repository", "name": name, "actions": ["pull", "push", "delete"]}]
            hdrs["Authorization"] = f"Bearer {self.token.mint(access)}"
        elif self.auth:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            hdrs["Authorization"] = f"Basic {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def _write_htpasswd(self) -> Path:
        path = self.workdir / "htpasswd"
        out = subprocess.run(
            [HTPASSWD_BIN, "-Bbn", str(self.username), str(self.password)],
            check=True, capture_output=True,
        ).stdout
        path.write_bytes(out)
        return path

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited early; log: {self.log_path.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.url} within {timeout:.0f}s")
