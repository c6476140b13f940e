"""The fake API server's own tests use the shared fixtures (tests/support/fakekube/fixtures.py)."""

from tests.support.fakekube.fixtures import fakekube, kube_client, kube_crds, kubeconfig  # noqa: F401
