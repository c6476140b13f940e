"""A leader that can no longer renew its Lease stops acting: ``serve`` returns 1 (the process exits,
and its Deployment restarts it as a follower), so two replicas never act at once for long. The
takeover itself (the leader SIGKILLed, the follower leading) is in test_seed_commands.py."""

from __future__ import annotations

import threading

from flows import controller
from tests.controller.conftest import wait_for
from tests.support.fakekube.fixtures import fakekube, kube_crds, kube_env  # noqa: F401

LEASE = "ctl-lease-test"


def _holder(fake) -> str | None:
    return ((fake.get("coordination.k8s.io/v1", "Lease", LEASE, "default") or {}).get("spec") or {}).get("holderIdentity")


def test_a_leader_that_cannot_renew_its_lease_stops(kube_env, prefect_api):  # noqa: F811
    fake = kube_env
    options = controller.Options(lease_name=LEASE, lease_namespace="default", lease_s=2, identity="ctl-lease",
                                 inferenceset_api_version=None)
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(rc=controller.serve(options, install_signals=False)),
                              daemon=True)
    thread.start()
    wait_for("the Lease held", lambda: _holder(fake) == "ctl-lease", timeout=30)
    assert thread.is_alive(), "leading: it watches and acts until stopped"
    fake.fail_next("*", rf"/leases/{LEASE}$", status=500, times=10_000)  # every renewal fails from now on
    thread.join(timeout=60)
    assert not thread.is_alive() and result == {"rc": 1}
