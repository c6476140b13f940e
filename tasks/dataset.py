"""Pull the tuning data into the local cache and fingerprint it (content hash, size, ETag).

The fingerprint's digest is part of the tuning cache key: unchanged data means no new training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from infra import datasets, local_state
from tasks.common import task_options
from workspace import settings, spec
from workspace.errors import DatasetError


def _source(workspace: spec.Workspace) -> dict:
    inp = workspace.tuning.input
    if inp.urls:
        return {"urls": list(inp.urls)}
    if inp.image:
        return {"image": inp.image}
    vol = inp.volume_source.model_dump(by_alias=True) if inp.volume_source else {}
    path = (vol.get("hostPath") or {}).get("path") or vol.get("path")
    if not path:
        raise DatasetError(
            "tuning.input.volumeSource: on the local platform give hostPath.path (a folder on this machine); "
            f"got {sorted(vol)}"
        )
    return {"volume": path}


@task(name="pull-dataset", **task_options())
def pull_dataset(workspace: spec.Workspace) -> dict:
    log = get_run_logger()
    dest = settings.load().home_dir / "datasets" / workspace.name
    fp = datasets.pull(_source(workspace), dest)
    data = dataclasses.asdict(fp) if dataclasses.is_dataclass(fp) else dict(fp)
    digest = data["digest"]
    log.info("dataset %s: %d file(s), digest %s", dest, len(data.get("files", [])), digest[:19])
    local_state.add_event(workspace.name, "DatasetPulled", f"digest {digest[:19]}")
    return {"dir": str(Path(data.get("dir") or dest)), "digest": digest}
