"""Container tests: kaiflow's image run by podman (the fake cluster's podman mode, tests/support/fakekube/podman.py)."""

from tests.containers.images import image_registry, kaiflow_image, pushed_image  # noqa: F401
from tests.support.fakekube.fixtures import fakekube, kube_crds, kube_env, kubeconfig  # noqa: F401
