"""Teardown: stop what a workspace runs and forget it — `kaiflow delete workspace NAME` as a flow.

The CLI's ``delete`` and the ``teardown`` deployment (UI, schedules, automations) share
``delete_workspace`` so both do exactly the same thing. The flow is idempotent (a workspace that
is already gone is a no-op that says so), because deployments get re-run; the CLI instead tells
the user a name they typed does not exist.

Only the local platform is built: on ``kubernetes``/``aks`` the flow fails with a message saying
so rather than pretending to have deleted cluster objects.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from infra import local_process, local_state
from workspace import settings
from workspace.errors import KaiflowError

SERVING_MARKER = "-m serving"


def delete_workspace(name: str) -> dict:
    """Stop the workspace's local inference server (if it runs) and remove its record.

    Returns ``{"name", "deleted", "server_pid", "server_stopped"}``; ``deleted`` is False when
    no workspace of that name was known.
    """
    record = local_state.load(name)
    if record is None:
        return {"name": name, "deleted": False, "server_pid": None, "server_stopped": False}
    server = record.get("server") or {}
    stopped = local_process.stop(server.get("pid"), SERVING_MARKER)
    local_state.remove(name)
    return {"name": name, "deleted": True, "server_pid": server.get("pid"), "server_stopped": stopped}


@flow(name="teardown", flow_run_name="teardown-{name}", log_prints=True, persist_result=False)
def teardown_flow(name: str, platform: str | None = None) -> dict:
    """Delete a workspace: stop its inference server and forget its state.

    Args:
        name: The workspace's metadata.name.
        platform: local, kubernetes or aks (default: KAIFLOW_PLATFORM).
    """
    platform = platform or settings.load().platform
    if platform != "local":
        raise KaiflowError(f"teardown on platform '{platform}' is not built yet; only 'local' is (set KAIFLOW_PLATFORM=local)")
    result = delete_workspace(name)
    log = get_run_logger()
    if not result["deleted"]:
        log.info("workspace %s not found: nothing to delete", name)
    else:
        log.info("workspace %s deleted%s", name, f" (server pid {result['server_pid']} stopped)" if result["server_stopped"] else "")
    return result
