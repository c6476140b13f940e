"""The controller under faults: killed mid-run, API server errors and dropped watches, Prefect
unreachable, changes Kaito forbids (the leader dying: test_seed_commands.py). Each ends with the workspace Ready and
exactly one flow run per generation acted on; the last one deletes a workspace mid-run (its run cancelled, then
the teardown)."""

from __future__ import annotations

import signal
from datetime import datetime

import pytest

from tests.controller.conftest import TEARDOWN, conditions, flow_runs, inference_workspace, wait_for

pytestmark = pytest.mark.slow


def _running(api: str, name: str) -> bool:
    return any(r["state_type"] == "RUNNING" for r in flow_runs(api, name))


def test_sigkill_mid_run_no_duplicate_run_and_changes_made_while_down_are_picked_up(stack):
    s = stack
    name = "ctl-kill"
    ctl = s.start_controller(identity="ctl-kill-1")
    s.kubectl_apply(inference_workspace(name))
    wait_for("the flow run running", lambda: _running(s.api, name), timeout=60)
    ctl.send_signal(signal.SIGKILL)
    ctl.wait()
    uid = s.workspace(name)["metadata"]["uid"]

    # started again with nothing changed: the run of generation 1 is found again (by its idempotency
    # key), not started a second time
    ctl = s.start_controller(identity="ctl-kill-2")
    wait_for("generation 1 Ready", lambda: s.ready(name), timeout=300)
    runs = flow_runs(s.api, name)
    assert len(runs) == 1 and (runs[0]["idempotency_key"], runs[0]["state_type"]) == (f"{uid}-1", "COMPLETED")
    ctl.send_signal(signal.SIGKILL)
    ctl.wait()

    # while the controller is down: an allowed change (Kaito lets inference.config change) -> generation 2
    s.kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-params", "namespace": "default"},
                   "data": {"inference_config.yaml": "vllm:\n  max-model-len: 2048\n"}})
    changed = inference_workspace(name)
    changed["inference"]["config"] = f"{name}-params"
    assert s.kubectl_apply(changed)["metadata"]["generation"] == 2

    s.start_controller(identity="ctl-kill-3")
    wait_for("generation 2 Ready", lambda: s.ready(name), timeout=300)
    runs = flow_runs(s.api, name)
    assert sorted((r["idempotency_key"], r["state_type"]) for r in runs) == [(f"{uid}-1", "COMPLETED"), (f"{uid}-2", "COMPLETED")]
    assert f"{name}-params" in str(s.kube.get("apps/v1", "StatefulSet", name, "default"))  # generation 2 is what runs

    # a change Kaito forbids: refused with a condition, observed, no run
    forbidden = {**changed, "resource": {**changed["resource"], "instanceType": "Standard_NC24ads_A100_v4"}}
    assert s.kubectl_apply(forbidden)["metadata"]["generation"] == 3
    obj = wait_for("the refusal", lambda: (o := s.workspace(name)) and (o.get("status") or {}).get("observedGeneration") == 3 and o)
    refusal = next(c for c in obj["status"]["conditions"] if c["type"] == "SpecAccepted")
    assert refusal["status"] == "False" and refusal["reason"] == "ImmutableFieldChanged"
    assert 'resource.instanceType: field is immutable (was "Standard_NC6s_v3", now "Standard_NC24ads_A100_v4")' in refusal["message"]
    assert conditions(obj)["WorkspaceReady"] == "True"  # what runs keeps running
    assert len(flow_runs(s.api, name)) == 2
    s.stop_controllers()


def test_api_errors_dropped_watch_410_and_prefect_outage_still_one_run_for_an_inferenceset_replica(stack):
    s = stack
    name = "ctl-faults"
    workspaces = r"/apis/kaito\.sh/v1alpha1/workspaces$"
    s.kube.fail_next("GET", workspaces, status=500, times=2)
    s.kube.fail_next("GET", workspaces, status=429, times=2, reason="TooManyRequests")
    before = len(s.kube.requests)
    s.start_controller("--lease-duration", "30", identity="ctl-faults")
    wait_for("a watch open after the 500s and 429s", lambda: any(
        r.method == "GET" and r.path.endswith("/workspaces") and r.query.get("watch") == "true"
        for r in s.kube.requests[before:]), timeout=60)

    # the API server unreachable (every connection dropped, watch included) and Prefect down while the user applies
    s.prefect_proxy.down()
    s.proxy.down()
    s.kube.fail_next("GET", workspaces, status=410, times=1, reason="Expired")  # the re-watch finds its version gone
    # an InferenceSet of one replica: the controller makes its child Workspace, then runs that one's flow
    s.kubectl_apply({"apiVersion": "kaito.sh/v1beta1", "kind": "InferenceSet", "metadata": {"name": name, "namespace": "default"},
                     "spec": {"replicas": 1, "labelSelector": {"matchLabels": {"apps": name}},
                              "template": {"resource": {"instanceType": "Standard_NC6s_v3"},
                                           "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}}}})
    s.proxy.up()
    wait_for("the controller failing to reach Prefect", lambda: "again in" in s.log("ctl-faults"), timeout=60)
    s.prefect_proxy.up()

    child = f"{name}-0"
    wait_for("the child workspace Ready", lambda: s.ready(child), timeout=300)
    log = s.log("ctl-faults")
    assert "expired (410); listing again" in log
    runs = flow_runs(s.api, child)
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    wait_for("the set's status", lambda: ((s.kube.get("kaito.sh/v1beta1", "InferenceSet", name, "default") or {}).get("status") or {})
             .get("readyReplicas") == 1, timeout=60)
    s.stop_controllers()


def test_deleting_a_workspace_while_its_run_is_running_cancels_the_run_before_the_teardown(stack):
    s = stack
    name = "ctl-cancel"
    # every status write of this workspace answers 4 s late (under the 5 s request timeout): the flow,
    # which writes its conditions as it goes, is still running when the delete comes
    s.kube.fail_next("PATCH", rf"/workspaces/{name}/status$", status=0, times=15, delay_s=4)
    s.start_controller(identity="ctl-cancel")
    s.kubectl_apply(inference_workspace(name))
    wait_for("the flow run running", lambda: _running(s.api, name), timeout=60)
    uid = s.workspace(name)["metadata"]["uid"]
    s.delete(name)
    wait_for("the workspace gone", lambda: s.workspace(name) is None, timeout=120)
    s.kube.faults.clear()

    [applied] = flow_runs(s.api, name)
    [teardown] = flow_runs(s.api, name, deployment=TEARDOWN)
    assert (applied["idempotency_key"], applied["state_type"]) == (f"{uid}-1", "CANCELLED")
    assert (teardown["idempotency_key"], teardown["state_type"]) == (f"{uid}-teardown-0", "COMPLETED")
    # the teardown run was made only once the apply run had ended (Prefect's own timestamps)
    assert datetime.fromisoformat(teardown["created"]) >= datetime.fromisoformat(applied["end_time"])
    assert f"deleted: cancelling its flow run {applied['id']} (RUNNING)" in s.log("ctl-cancel")
    assert s.kube.get("apps/v1", "StatefulSet", name, "default") is None
    assert s.kube.list("karpenter.sh/v1", "NodeClaim", labels={"kaito.sh/workspace": name}) == []
    s.stop_controllers()
