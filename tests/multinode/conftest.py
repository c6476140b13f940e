"""Fixtures for the multi-node and InferenceSet tests: the fake API server with kaiflow's CRDs, and
kaiflow's settings aimed at it (``kube_env``, shared with tests/kube)."""

from __future__ import annotations

from tests.support.fakekube.fixtures import fakekube, kube_crds, kube_env, kubeconfig, kubectl  # noqa: F401
