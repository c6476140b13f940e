"""The Prefect deployments a test or bench controller starts runs of: the ``workspace`` and
``teardown`` flows registered under a name of their own on a process pool of their own, so that
``kaiflow controller --deployment workspace/NAME --teardown-deployment teardown/NAME`` runs them on
the worker the caller starts for that pool (and nothing else's worker picks them up)."""

from __future__ import annotations

CONTROLLER_FLOWS = ("workspace", "teardown")


def register(pool: str, name: str, pool_type: str = "process") -> None:
    """Create the work pool ``pool`` (a process pool, or a Kubernetes one with kaiflow's base job
    template) and upsert ``workspace/NAME`` and ``teardown/NAME`` on it, through the session's
    ``PREFECT_API_URL``."""
    from prefect.client.orchestration import get_client

    from flows import deployments

    with get_client(sync_client=True) as client:
        deployments.ensure_pool(client, pool, pool_type)
        for d in deployments.DEPLOYMENTS:
            if d.flow_name in CONTROLLER_FLOWS:
                deployments.register_one(client, deployments.DeploymentSpec(d.flow_name, name, d.entrypoint, d.description),
                                         pool, pool_type)
