"""Fixtures for the kubernetes platform: the fake API server (tests/support/fakekube) and settings
pointing the real ``kubernetes`` client at it."""

from __future__ import annotations

from pathlib import Path


from tests.support.fakekube.fixtures import fakekube, kube_crds, kube_env, kubeconfig  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "deployments" / "crds"
