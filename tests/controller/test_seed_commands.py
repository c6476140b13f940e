"""The seed's commands, typed into the real kubectl, with `kaiflow controller` running: apply the four
seed files unchanged, `kubectl get workspace workspace-phi-3-mini` shows the seed's columns with
True, `kubectl get svc` the ports, `kubectl delete workspace` tears everything down. Two controller
replicas run; the leader is SIGKILLed before the delete, so the other one takes over.

The four files hold two names twice: `kaito_workspace_phi_3.yaml` and `..._with_adapters.yaml` are
*tuning* workspaces named like the inference ones (the cookbook keeps them in another folder). A
workspace cannot turn from inference into tuning (Kaito's webhook refuses it; the controller says
so on the resource), so the tuning file of a name still in use is refused, and the other one is
applied after its inference namesake was deleted.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.controller.conftest import SEED, conditions, flow_runs, wait_for
from tests.support import kubebins

pytestmark = pytest.mark.slow


def test_seed_commands_with_the_real_kubectl(stack):
    s = stack
    kubectl = [kubebins.kubectl(), "--kubeconfig", str(s.kubeconfig)]

    def run(*args: str, timeout: float = 60) -> str:
        out = subprocess.run([*kubectl, *args], capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    leader = s.start_controller(identity="ctl-seed-1")  # two replicas: the second waits for the Lease
    wait_for("one leading", lambda: "ctl-seed-1 is the leader" in s.log("ctl-seed-1"), timeout=60)
    s.start_controller(identity="ctl-seed-2")
    wait_for("the other waiting", lambda: "waiting to lead" in s.log("ctl-seed-2"), timeout=60)
    for f in ("workspace-phi-3-mini.yaml", "workspace-phi-3-mini-adapter.yaml"):
        assert "created" in run("apply", "-f", str(SEED / f))

    run("wait", "--for=condition=WorkspaceReady", "workspace/workspace-phi-3-mini", "--timeout=300s", timeout=310)
    header, row = run("get", "workspace", "workspace-phi-3-mini").splitlines()
    assert header.split() == ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]
    assert row.split()[:5] == ["workspace-phi-3-mini", "Standard_NC6s_v3", "True", "True", "True"]
    svc = {line.split()[0]: line.split() for line in run("get", "svc").splitlines()[1:]}
    assert svc["workspace-phi-3-mini"][1] == "ClusterIP" and svc["workspace-phi-3-mini"][4] == "80/TCP,29500/TCP"

    # the run wrote WorkspaceReady; observedGeneration follows when the run is final
    run("wait", "--for=jsonpath={.status.observedGeneration}=1", "workspace/workspace-phi-3-mini", "--timeout=120s", timeout=130)
    obj = s.workspace("workspace-phi-3-mini")
    assert obj["metadata"]["finalizers"] == ["kaiflow.io/teardown"]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
    runs = flow_runs(s.api, "workspace-phi-3-mini")
    assert [(r["name"], r["state_type"], r["idempotency_key"]) for r in runs] == \
        [("workspace-phi-3-mini", "COMPLETED", f"{obj['metadata']['uid']}-1")]
    assert runs[0]["parameters"]["workspace"]["metadata"] == {"name": "workspace-phi-3-mini", "namespace": "default"}

    # the tuning file named like the adapter workspace: refused, said on the resource, no run
    assert "configured" in run("apply", "-f", str(SEED / "kaito_workspace_phi_3_with_adapters.yaml"))
    refused = wait_for("the refusal", lambda: conditions(s.workspace("workspace-phi-3-mini-adapter")).get("SpecAccepted") == "False"
                       and s.workspace("workspace-phi-3-mini-adapter"), timeout=60)
    message = next(c["message"] for c in refused["status"]["conditions"] if c["type"] == "SpecAccepted")
    assert "tuning: cannot be added or removed" in message and "inference: cannot be added or removed" in message

    # the leader dies; the other replica takes the Lease over and handles the deletion
    assert "default/workspace-phi-3-mini" not in s.log("ctl-seed-2")
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    assert "deleted" in run("delete", "workspace", "workspace-phi-3-mini", timeout=300)  # waits for the finalizer
    assert "ctl-seed-2 is the leader" in s.log("ctl-seed-2") and "torn down" in s.log("ctl-seed-2")
    lease = s.kube.get("coordination.k8s.io/v1", "Lease", "kaiflow-controller", "default")
    assert lease["spec"]["holderIdentity"] == "ctl-seed-2" and lease["spec"]["leaseTransitions"] >= 1
    teardowns = flow_runs(s.api, "workspace-phi-3-mini", deployment="teardown/controller-tests")
    assert [(r["state_type"], r["idempotency_key"]) for r in teardowns] == [("COMPLETED", f"{obj['metadata']['uid']}-teardown-0")]
    assert s.workspace("workspace-phi-3-mini") is None
    assert s.kube.get("apps/v1", "StatefulSet", "workspace-phi-3-mini", "default") is None
    assert s.kube.get("v1", "Service", "workspace-phi-3-mini", "default") is None
    assert s.kube.list("karpenter.sh/v1", "NodeClaim", labels={"kaito.sh/workspace": "workspace-phi-3-mini"}) == []
    assert len(flow_runs(s.api, "workspace-phi-3-mini")) == 1

    # the name is free again: the tuning file makes a new workspace, and a new run
    assert "created" in run("apply", "-f", str(SEED / "kaito_workspace_phi_3.yaml"))
    wait_for("its run", lambda: len(flow_runs(s.api, "workspace-phi-3-mini")) == 2, timeout=60)
    s.stop_controllers()
