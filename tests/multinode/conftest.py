"""Fixtures for the multi-node and InferenceSet tests: the fake API server with kaiflow's CRDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fakekube.fixtures import fakekube, kube_crds, kubeconfig, kubectl  # noqa: F401


@pytest.fixture
def kube_env(kube_crds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811 (the fixture above)
    """The fake with the CRDs installed and kaiflow's settings aimed at it (as tests/kube's)."""
    path = kube_crds.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    for key, value in {"KAIFLOW_PLATFORM": "kubernetes", "KAIFLOW_KUBECONFIG": str(path),
                       "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "20", "KAIFLOW_KUBE_BACKOFF_S": "0.05",
                       "KAIFLOW_RETRY_BACKOFF_S": "0.1", "KAIFLOW_KUBE_REQUEST_TIMEOUT_S": "3",
                       "KAIFLOW_IMAGE": "ghcr.io/kaiflow/kaiflow:test",
                       "KAIFLOW_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(key, value)
    return kube_crds
