"""Fixtures of the fault-matrix tests: the local platform with the transformers engine, one torch
thread per program (steady on a shared 2-core machine), and the real ``kaiflow`` command line.

Every process a test starts is stopped by that test, by PID; none is found by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
ENV = {
    "KAIFLOW_ENGINE": "transformers",
    "KAIFLOW_ALLOW_PRIVATE_URLS": "true",
    "KAIFLOW_RETRY_BACKOFF_S": "0.2",
    "KAIFLOW_REGISTRY_ATTEMPTS": "2",
    "KAIFLOW_REGISTRY_BACKOFF_S": "0.2",
    "OMP_NUM_THREADS": "1",
}

SERVE_ONLY = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}
resource:
  instanceType: local
inference:
  preset: {{name: tiny-phi-3}}
"""


@pytest.fixture
def local_env(monkeypatch, tiny_model):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return ENV


def kaiflow(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([KAIFLOW, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def get_row(name: str) -> list[str]:
    """The workspace's row of ``kaiflow get workspaces``."""
    out = kaiflow("get", "workspaces", timeout=60).stdout
    return next((line.split() for line in out.splitlines() if line.split()[:1] == [name]), [])


def serve_only(name: str):
    from workspace import loader

    return loader.load_text(SERVE_ONLY.format(name=name)).workspaces[0]
