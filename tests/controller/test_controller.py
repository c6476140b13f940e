"""`kaiflow controller` against the fake API server (real kubernetes client), a real Prefect server and
a real process worker: a Workspace resource in, one flow run of the deployment out, status back."""

from __future__ import annotations

import signal

import pytest

from tests.controller.conftest import conditions, flow_runs, inference_workspace, wait_for

pytestmark = pytest.mark.slow


def test_create_runs_the_flow_once_and_after_the_leader_dies_the_follower_tears_down(stack):
    """Two replicas: the leader runs the flow for a new workspace; SIGKILLed, its Lease runs out and
    the other replica, which did nothing until then, takes over and handles the deletion."""
    s = stack
    name = "ctl-basic"
    leader = s.start_controller(identity="ctl-one")
    wait_for("one leading", lambda: "ctl-one is the leader" in s.log("ctl-one"), timeout=30)
    s.start_controller(identity="ctl-two")
    wait_for("two waiting", lambda: "waiting to lead" in s.log("ctl-two"), timeout=30)
    s.kubectl_apply(inference_workspace(name))
    wait_for("the workspace Ready at its generation", lambda: s.ready(name), timeout=300)
    obj = s.workspace(name)
    assert obj["metadata"]["finalizers"] == ["kaiflow.io/teardown"]
    assert conditions(obj) == {"ResourceReady": "True", "InferenceReady": "True", "WorkspaceReady": "True"}
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
    runs = flow_runs(s.api, name)
    assert [(r["name"], r["state_type"], r["idempotency_key"]) for r in runs] == \
        [(name, "COMPLETED", f"{obj['metadata']['uid']}-1")]
    assert runs[0]["parameters"]["workspace"]["metadata"] == {"name": name, "namespace": "default"}
    assert s.kube.get("apps/v1", "StatefulSet", name, "default") is not None
    assert "default/ctl-basic" not in s.log("ctl-two")
    lease = s.kube.get("coordination.k8s.io/v1", "Lease", "kaiflow-controller", "default")
    assert lease["spec"]["holderIdentity"] == "ctl-one"

    leader.send_signal(signal.SIGKILL)
    leader.wait()
    s.delete(name)
    wait_for("two leading", lambda: "ctl-two is the leader" in s.log("ctl-two"), timeout=30)
    wait_for("the workspace gone", lambda: s.workspace(name) is None, timeout=90)
    assert s.kube.get("apps/v1", "StatefulSet", name, "default") is None
    assert s.kube.list("karpenter.sh/v1", "NodeClaim", labels={"kaito.sh/workspace": name}) == []
    teardowns = flow_runs(s.api, name, deployment="teardown/controller-tests")
    assert [(r["state_type"], r["idempotency_key"]) for r in teardowns] == [("COMPLETED", f"{obj['metadata']['uid']}-teardown-0")]
    assert len(flow_runs(s.api, name)) == 1
    lease = s.kube.get("coordination.k8s.io/v1", "Lease", "kaiflow-controller", "default")
    assert lease["spec"]["holderIdentity"] == "ctl-two" and lease["spec"]["leaseTransitions"] >= 1
    assert "torn down" in s.log("ctl-two")
    s.stop_controllers()
