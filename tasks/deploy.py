"""Deploy inference and wait until it answers (InferenceReady).

The platform does the work: a detached local ``python -m serving`` (adapters rolled into a running
server without a restart), or a StatefulSet + Service on the GPU nodes (rolled back when the new
pods fail). Either way a failed deploy leaves what served before serving.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact

from infra.platforms.base import Endpoint, Image
from tasks.common import on_platform, artifact_key, task_options
from workspace import spec


@task(name="deploy-inference", **task_options())
def deploy(workspace: spec.Workspace, image: Image | None, config_maps: dict[str, dict[str, str]],
           platform: str = "local") -> Endpoint:
    """``image``: the adapter image this run just published, if any."""
    with on_platform(platform) as where:
        endpoint = where.deploy(workspace, image, config_maps, where.reporter(workspace))
        create_link_artifact(f"{endpoint.endpoint}/v1/models", link_text=f"{workspace.name} endpoint",
                             key=artifact_key(workspace.name, "endpoint"))
        return endpoint
