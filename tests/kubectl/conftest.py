"""The real kubectl against the fake API server (tests/support/fakekube): shared fixtures."""

from tests.support.fakekube.fixtures import fakekube, kube_client, kube_crds, kubeconfig, kubectl  # noqa: F401
