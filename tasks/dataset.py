"""Pull the tuning data and fingerprint it (content hash, size, ETag).

The fingerprint's digest is part of the tuning cache key: unchanged data means no new training.
Where the data goes and what happens when the flow cannot read it (a volume only pods mount, a URL
only the cluster reaches) is the platform's (``Platform.fetch_dataset``).
"""

from __future__ import annotations

from prefect import task

from infra.platforms.base import Dataset
from tasks.common import on_platform, task_options
from workspace import spec


@task(name="pull-dataset", **task_options())
def pull_dataset(workspace: spec.Workspace, platform: str = "local") -> Dataset:
    with on_platform(platform) as where:
        return where.fetch_dataset(workspace, where.reporter(workspace))
