"""Teardown: stop what a workspace runs and forget it — `kaiflow delete workspace NAME` as a flow.

The CLI's ``delete`` and the ``teardown`` deployment (UI, schedules, automations) share
``delete_workspace`` so both do exactly the same thing. The flow is idempotent (a workspace that
is already gone is a no-op that says so), because deployments get re-run; the CLI instead tells
the user a name they typed does not exist.

On ``kubernetes``/``aks`` it first deletes what the workspace created on the cluster (StatefulSet,
Services, Jobs, ConfigMaps, NodeClaims, the Workspace resource; the AKS agent pool) through
its platform (``infra.platforms``); the local record is removed only after that succeeded, so a failed
teardown can be run again.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from infra import platforms, records


def delete_workspace(name: str) -> dict:
    """Stop what the workspace runs (through the platform it ran on) and remove its record.

    Returns ``{"name", "deleted", "server_pid", "server_stopped", "cluster"}``; ``deleted`` is False
    when no workspace of that name was known; ``cluster`` lists what was deleted on a cluster by kind.
    """
    record = records.load(name)
    if record is None:
        return {"name": name, "deleted": False, "server_pid": None, "server_stopped": False, "cluster": {}}
    gone = platforms.get(record.platform).teardown(record)  # cluster objects (NodeClaims, the AKS pool) go first
    records.remove(name)
    return {"name": name, "deleted": True, "server_pid": record.server.pid if record.server else None,
            "server_stopped": gone.server_stopped, "cluster": gone.cluster}


@flow(name="teardown", flow_run_name="teardown-{name}", log_prints=True, persist_result=False)
def teardown_flow(name: str, platform: str | None = None) -> dict:
    """Delete a workspace: what it runs (a local server, or its cluster objects and nodes) and its state.

    Args:
        name: The workspace's metadata.name.
        platform: Unused (kept for deployments made before): the workspace's record knows where it ran.
    """
    result = delete_workspace(name)
    log = get_run_logger()
    for kind, names in result["cluster"].items():
        if names:
            log.info("deleted %s: %s", kind, ", ".join(names))
    if not result["deleted"]:
        log.info("workspace %s not found: nothing to delete", name)
    else:
        log.info("workspace %s deleted%s", name, f" (server pid {result['server_pid']} stopped)" if result["server_stopped"] else "")
    return result
