"""Push: publish the adapter as a Kaito-layout OCI image and pin it by digest.

The image goes to ``tuning.output.image`` — a registry, or the on-disk OCI layout under
KAIFLOW_HOME when the reference names no registry and none is configured. Layers are built
without timestamps, so an unchanged adapter gets the same digest and a re-push changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from infra import local_state, registry
from tasks.common import artifact_key, task_options
from workspace import settings, spec
from workspace.errors import RegistryError


def credentials_for(secret: str | None):
    """A named secret on the local platform: ``$KAIFLOW_HOME/secrets/NAME/.dockerconfigjson`` (or
    ``config.json``). Without one, the platform's default credentials are used."""
    if not secret:
        return None
    base = settings.load().home_dir / "secrets" / secret
    for candidate in (base / ".dockerconfigjson", base / "config.json"):
        if candidate.is_file():
            return candidate
    return None


@task(name="push-adapter", **task_options())
def push_adapter(workspace: spec.Workspace, adapter_dir: str) -> dict:
    log = get_run_logger()
    out = workspace.tuning.output
    if out.image is None:
        raise RegistryError("tuning.output.volumeSource is not supported on the local platform yet; use tuning.output.image")
    secret = out.image_push_secret
    try:
        pinned = registry.push_adapter(Path(adapter_dir), out.image, model_name=workspace.tuning.preset.name,
                                       credentials=credentials_for(secret))
    except RegistryError as exc:
        if secret and not credentials_for(secret):
            exc.message += f" (imagePushSecret '{secret}' was not found under KAIFLOW_HOME/secrets/{secret}/)"
        raise
    log.info("adapter image %s", pinned)
    local_state.add_event(workspace.name, "AdapterPushed", pinned)
    if pinned.startswith("oci:"):
        create_markdown_artifact(f"Adapter image (OCI layout on disk): `{pinned}`", key=artifact_key(workspace.name, "image"))
    else:
        create_link_artifact(f"http://{pinned.split('/', 1)[0]}/v2/{pinned.split('/', 1)[1].split('@')[0]}/manifests/{pinned.split('@')[1]}",
                             link_text=pinned, key=artifact_key(workspace.name, "image"))
    return {"reference": pinned, "digest": pinned.rsplit("@", 1)[1]}
