"""Image tests: what deployments/images/build.sh builds (`make images`)."""

from tests.containers.images import kaiflow_image  # noqa: F401
