"""Pull the tuning data into the local cache and fingerprint it (content hash, size, ETag).

The fingerprint's digest is part of the tuning cache key: unchanged data means no new training.

On kubernetes/aks the tuning pod pulls the data itself; the flow pulls it too, only to fingerprint
it (conditional requests make a re-pull of unchanged data cheap). Where the flow cannot see the
data — a volumeSource only pods mount, or a URL/image the cluster reaches but the machine running the
flow does not — the fingerprint is the source spec itself, said in a warning and an event: then
changed content behind an unchanged URL is not noticed, and re-applying does not retrain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task

from infra import datasets, local_state
from tasks.common import task_options
from workspace import settings, spec
from workspace.errors import DatasetError


def spec_fingerprint(workspace: spec.Workspace) -> str:
    """A digest of the data's source spec (URLs, image reference, volume), for data the flow cannot read."""
    src = workspace.tuning.input.model_dump(by_alias=True, exclude_none=True)
    return "spec:sha256:" + hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()


def _unseen(workspace: spec.Workspace, why: str) -> dict:
    digest = spec_fingerprint(workspace)
    get_run_logger().warning("dataset of %s not readable from here (%s): the tuning pod pulls it; fingerprint from the "
                             "source spec only (%s), so new content under the same URL will not retrain", workspace.name,
                             why, digest[:24])
    local_state.add_event(workspace.name, "DatasetNotVerified", f"{why}; fingerprint {digest[:24]} from the spec", kind="Warning")
    return {"dir": None, "digest": digest, "verified": False}


@task(name="pull-dataset", **task_options())
def pull_dataset(workspace: spec.Workspace, platform: str = "local") -> dict:
    log = get_run_logger()
    dest = settings.load().home_dir / "datasets" / workspace.name
    inp = workspace.tuning.input
    if platform != "local":
        if inp.volume_source and not inp.volume_source.model_dump(by_alias=True).get("hostPath"):
            return _unseen(workspace, "tuning.input.volumeSource is mounted by the tuning pod")
        try:
            fp = datasets.pull(workspace.tuning.input, dest, retry=datasets.RetryPolicy(attempts=2))
        except DatasetError as exc:
            if not exc.transient:  # 404, HTML, unknown format: the pod would fail the same way
                raise
            return _unseen(workspace, f"unreachable from the flow: {exc.message}")
    else:
        fp = datasets.pull(workspace.tuning.input, dest)  # urls, image or a hostPath volume
    data = dataclasses.asdict(fp) if dataclasses.is_dataclass(fp) else dict(fp)
    digest = data["digest"]
    log.info("dataset %s: %d file(s), digest %s", dest, len(data.get("files", [])), digest[:19])
    local_state.add_event(workspace.name, "DatasetPulled", f"digest {digest[:19]}")
    return {"dir": str(Path(data.get("dir") or dest)), "digest": digest, "verified": True}
