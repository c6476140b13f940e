"""The registry client's knobs: where images go and how hard to try.

Why a dataclass beside ``workspace.settings``: ``workspace/settings.py`` is the one place that reads
``KAIFLOW_*`` variables (``KAIFLOW_REGISTRY``, ``KAIFLOW_REGISTRY_ATTEMPTS``, ...), and
:meth:`RegistrySettings.from_env` builds from it; but tests, ``bench/`` and callers that move images
between stores build a :class:`RegistrySettings` directly (a layout root of their own, fast
retries) without touching the environment. Credentials are not here: they are resolved per
registry, at the moment a store is made (:mod:`infra.registry.credentials`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from infra import retry
from workspace import settings as kaiflow_settings


def _default_layout_root() -> Path:
    return kaiflow_settings.load().home_dir / "oci-layout"


@dataclasses.dataclass
class RegistrySettings:
    """Where adapters go and how hard to try. ``from_env()`` reads the ``KAIFLOW_*`` settings."""

    layout_root: Path = dataclasses.field(default_factory=_default_layout_root)
    registry: str | None = None
    insecure_registries: tuple[str, ...] = ()
    docker_config: Path | None = None
    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    timeout_s: float = 60.0
    compress_level: int = 0

    @classmethod
    def from_env(cls, config: kaiflow_settings.Settings | None = None) -> "RegistrySettings":
        """From kaiflow's settings (``KAIFLOW_OCI_LAYOUT_ROOT``, ``KAIFLOW_REGISTRY``,
        ``KAIFLOW_INSECURE_REGISTRIES``, ``KAIFLOW_DOCKER_CONFIG``, ``KAIFLOW_REGISTRY_ATTEMPTS``,
        ``KAIFLOW_REGISTRY_BACKOFF_S``); ``config`` defaults to ``workspace.settings.load()``."""
        config = config or kaiflow_settings.load()
        return cls(
            layout_root=(Path(config.oci_layout_root).expanduser() if config.oci_layout_root
                         else config.home_dir / "oci-layout"),
            registry=config.registry or None,  # set but empty: none
            insecure_registries=tuple(h.strip() for h in config.insecure_registries.split(",") if h.strip()),
            docker_config=Path(config.docker_config).expanduser() if config.docker_config else None,
            attempts=config.registry_attempts,
            backoff_s=config.registry_backoff_s,
        )

    def retry_policy(self) -> retry.Policy:
        """How often one exchange with a registry is tried (``infra.retry``'s layer 1)."""
        return retry.Policy(attempts=self.attempts, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)
