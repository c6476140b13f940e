"""pytest fixtures around :class:`FakeKube`; import them into a conftest.py:

    from tests.support.fakekube.fixtures import fakekube, kube_client, kubeconfig  # noqa: F401

``fakekube``: a started server (Kubernetes schemas 1.30 and 1.34), stopped after the test.
``kubeconfig``: a kubeconfig file pointing at it (namespace ``default``).
``kube_client``: a ``kubernetes.client.ApiClient`` built from that kubeconfig (not the global one).
``kube_crds``: the server with deployments/crds/*.yaml installed through the API.
``kube_env``: ``kube_crds`` with kaiflow's settings aimed at it (platform kubernetes, short waits and
backoffs, a test image, ``KAIFLOW_HOME`` in the test's folder); returns the FakeKube.
``kubectl``: the real kubectl (tests/support/kubebins.py) bound to that kubeconfig:
``kubectl("apply", "-f", path)`` returns stdout and raises ``KubectlError`` (command, exit
status, stderr) on failure; ``kubectl.json("get", "pods")``; ``kubectl.fails(...)`` returns stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support import kubebins
from tests.support.fakekube.kube import FakeKube

CRD_DIR = Path(__file__).resolve().parents[3] / "deployments" / "crds"


@pytest.fixture
def fakekube() -> Iterator[FakeKube]:
    kube = FakeKube(versions=("1.30", "1.34")).start()
    try:
        yield kube
    finally:
        kube.stop()


@pytest.fixture
def kubeconfig(fakekube: FakeKube, tmp_path: Path) -> Path:
    return fakekube.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")


@pytest.fixture
def kube_client(kubeconfig: Path) -> Iterator[Any]:
    from kubernetes import config

    api = config.new_client_from_config(str(kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def kube_crds(fakekube: FakeKube) -> FakeKube:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        fakekube.install_crd(path)
    return fakekube


@pytest.fixture
def kubectl(kubeconfig: Path) -> kubebins.Kubectl:
    return kubebins.Kubectl(kubeconfig, timeout_s=60)


@pytest.fixture
def kube_env(kube_crds: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    """The fake with the CRDs installed, and kaiflow's settings aimed at it (platform kubernetes,
    short waits and backoffs); returns the FakeKube."""
    path = kube_crds.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    for key, value in {"KAIFLOW_PLATFORM": "kubernetes", "KAIFLOW_KUBECONFIG": str(path),
                       "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "20", "KAIFLOW_KUBE_BACKOFF_S": "0.05",
                       "KAIFLOW_RETRY_BACKOFF_S": "0.1", "KAIFLOW_KUBE_REQUEST_TIMEOUT_S": "3",
                       "KAIFLOW_IMAGE": "ghcr.io/kaiflow/kaiflow:test",
                       "KAIFLOW_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(key, value)
    return kube_crds
