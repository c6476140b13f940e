"""``KAIFLOW_HOME``, the one setting the code below the orchestration layers needs.

Why here and not only in ``workspace/settings.py``: the tuning and serving programs build and cache
``tiny-phi-3`` under ``KAIFLOW_HOME/models`` (through :mod:`presets.tiny`), and they may import
neither ``workspace`` nor anything above it (``.importlinter``), nor may ``presets`` import
``workspace``. So the field is declared once, here, and ``workspace.settings.Settings`` inherits
it: the settings model still holds every ``KAIFLOW_*`` variable, and nothing reads the
environment by hand.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HomeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIFLOW_", extra="ignore")

    home: Path = Field(default=Path("~/.kaiflow"), description="Where the local platform keeps its state (and tiny-phi-3 is cached).")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()


def home_dir() -> Path:
    """``KAIFLOW_HOME`` (default ``~/.kaiflow``), expanded; read from the environment on every call."""
    return HomeSettings().home_dir
