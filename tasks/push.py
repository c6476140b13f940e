"""Publish: the adapter as a Kaito-layout OCI image, pinned by digest; and a retrain's promotion.

The image goes to ``tuning.output.image`` — a registry, or the on-disk OCI layout under
KAIFLOW_HOME when the reference names no registry and none is configured. Layers are built
without timestamps, so an unchanged adapter gets the same digest and a re-push changes nothing.
Where the tuning itself pushed (a cluster's tuning Job), publishing is reading what it pushed.
"""

from __future__ import annotations

from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect import task

from infra.platforms.base import Image, Tuned
from tasks.common import on_platform, artifact_key, task_options
from workspace import spec


def _image_artifact(name: str, image: Image) -> None:
    pinned = image.reference
    if pinned.startswith("oci:"):
        create_markdown_artifact(f"Adapter image (OCI layout on disk): `{pinned}`", key=artifact_key(name, "image"))
    elif "@" in pinned and "/" in pinned:
        host, rest = pinned.split("/", 1)
        create_link_artifact(f"http://{host}/v2/{rest.split('@')[0]}/manifests/{pinned.split('@')[1]}",
                             link_text=pinned, key=artifact_key(name, "image"))


@task(name="push-adapter", **task_options())
def push_adapter(workspace: spec.Workspace, tuned: Tuned, platform: str = "local") -> Image:
    with on_platform(platform) as where:
        image = where.publish(workspace, tuned, where.reporter(workspace))
        _image_artifact(workspace.name, image)
        return image


@task(name="promote-adapter", **task_options())
def promote(workspace: spec.Workspace, candidate: Tuned, platform: str = "local") -> Image:
    """Make a retrain's candidate the image ``tuning.output.image`` names."""
    with on_platform(platform) as where:
        image = where.promote(workspace, candidate, where.reporter(workspace))
        _image_artifact(workspace.name, image)
        return image
