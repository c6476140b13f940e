"""Registry credentials: where a username and password come from, kept in memory only.

Why one module: credentials are looked up in several places — a Workspace's named secret
(``imagePushSecret``/``imagePullSecrets``), ``KAIFLOW_REGISTRY_USERNAME``/``_PASSWORD``, a docker
``config.json`` — and each lookup used to be written again by its caller with its own rules.
Here is the one reading of each:

- :func:`credentials_from_docker_config`: the entry for a registry in a docker config (a dict, a
  JSON string or a path); a Kubernetes ``kubernetes.io/dockerconfigjson`` Secret has the same shape.
- :func:`for_secret`: where a named registry secret lives on the machine that runs the flow
  (``$KAIFLOW_HOME/secrets/NAME/.dockerconfigjson``, else ``config.json``).
- :func:`resolve_credentials`: explicit credentials, else the settings, else a docker config.

Nothing here writes a docker config, and a password never appears in a repr, a log line or an
error message (errors name the *source* of the credentials instead, so a user knows what to fix).
``credHelpers``/``credsStore`` are not consulted.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.registry.settings import RegistrySettings
from workspace import errors
from workspace import settings as kaiflow_settings

SECRET_FILES = (".dockerconfigjson", "config.json")
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


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


def for_secret(name: str | None) -> Path | None:
    """The docker config of the registry secret ``name`` on the machine running the flow:
    ``$KAIFLOW_HOME/secrets/NAME/.dockerconfigjson``, else ``.../NAME/config.json``.

    None when ``name`` is empty or names no such file (the caller then uses the default
    credentials, :func:`resolve_credentials`), and for a name that is not a Kubernetes Secret name
    (``..``, a slash), which could only reach outside the secrets folder. On Kubernetes the same
    name is a ``kubernetes.io/dockerconfigjson`` Secret of the workspace's namespace; this is the
    flow's own copy of it.
    """
    if not name or not _SECRET_NAME_RE.match(name):
        return None
    folder = kaiflow_settings.load().home_dir / "secrets" / name
    for candidate in (folder / filename for filename in SECRET_FILES):
        if candidate.is_file():
            return candidate
    return None


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


def resolve_credentials(registry: str, settings: RegistrySettings,
                        credentials: Credentials | DockerConfig | None = None) -> Credentials | None:
    """Credentials for ``registry``: explicit ones, else KAIFLOW_REGISTRY_USERNAME/PASSWORD, else
    a docker config (``settings.docker_config``, then ``$DOCKER_CONFIG`` or ``~/.docker/config.json``,
    read only). ``credHelpers``/``credsStore`` are not consulted."""
    if isinstance(credentials, Credentials):
        return credentials
    if credentials is not None:
        return credentials_from_docker_config(credentials, registry)
    config = kaiflow_settings.load()
    if config.registry_username and config.registry_password is not None:
        return Credentials(config.registry_username, config.registry_password.get_secret_value(),
                           "KAIFLOW_REGISTRY_USERNAME/KAIFLOW_REGISTRY_PASSWORD")
    for path in (settings.docker_config,
                 Path(os.environ.get("DOCKER_CONFIG", "~/.docker")).expanduser() / "config.json"):
        if path is not None and Path(path).is_file():
            found = credentials_from_docker_config(path, registry)
            if found:
                return found
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
    except json.JSONDecodeError as exc:
        raise errors.RegistryError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file or secret") from exc


def _registry_host(key: str) -> str:
    host = re.sub(r"^https?://", "", key.strip()).split("/", 1)[0]
    return {"index.docker.io": "docker.io", "registry-1.docker.io": "docker.io"}.get(host, host)
