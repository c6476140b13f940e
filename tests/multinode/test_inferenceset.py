"""Kaito's InferenceSet against the fake API server: the CRD (scale subresource, printer columns),
`reconcile` making and removing child Workspaces as `kubectl scale inferenceset` changes the
count, and `kaiflow apply` serving every replica, pods labelled with the set's selector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows import cli
from flows import inferenceset as inferenceset_flow
from infra.kube import client as kclient
from infra.kube import inferenceset
from tests.support import kubebins
from workspace import settings
from workspace.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inferenceset" / "phi-3-mini-replicas.yaml"
NAME = "phi-3-mini-set"
SELECTOR = {inferenceset.CREATED_BY: NAME}


def _children(fake) -> list[str]:
    return sorted(w["metadata"]["name"] for w in fake.list("kaito.sh/v1beta1", "Workspace", "default", SELECTOR)
                  if not w["metadata"].get("deletionTimestamp"))


def _live(fake) -> dict:
    return fake.get("kaito.sh/v1beta1", "InferenceSet", NAME, "default")


def test_kubectl_scale_changes_the_child_workspaces(kube_env, kubectl: kubebins.Kubectl) -> None:
    fake = kube_env
    kubectl("apply", "-f", str(EXAMPLE))
    kube = kclient.connect(settings.load())
    result = inferenceset.reconcile(kube, _live(fake))
    assert result.created == [f"{NAME}-0", f"{NAME}-1"] and _children(fake) == [f"{NAME}-0", f"{NAME}-1"]
    child = fake.get("kaito.sh/v1beta1", "Workspace", f"{NAME}-0", "default")
    assert child["metadata"]["labels"] == SELECTOR
    assert child["metadata"]["ownerReferences"][0]["uid"] == _live(fake)["metadata"]["uid"]
    assert child["resource"]["instanceType"] == "Standard_NC6s_v3"
    assert child["resource"]["labelSelector"] == {"matchLabels": {"apps": "phi-3-mini"}}

    kubectl("scale", "inferenceset", NAME, "--replicas", "3")
    assert inferenceset.reconcile(kube, _live(fake)).created == [f"{NAME}-2"]
    assert _children(fake) == [f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"]
    status = _live(fake)["status"]
    assert (status["replicas"], status["readyReplicas"], status["selector"]) == (3, 0, f"{inferenceset.CREATED_BY}={NAME}")
    row = kubebins.table(kubectl("get", "inferenceset", NAME))[0]
    assert (row["REPLICAS"], row["READYREPLICAS"]) == ("3", "0")
    scale = json.loads(kubectl("get", "--raw", f"/apis/kaito.sh/v1beta1/namespaces/default/inferencesets/{NAME}/scale"))
    assert scale["status"] == {"replicas": 3, "selector": f"{inferenceset.CREATED_BY}={NAME}"}

    kubectl("scale", "inferenceset", NAME, "--replicas", "1")
    assert sorted(inferenceset.reconcile(kube, _live(fake)).deleted) == [f"{NAME}-1", f"{NAME}-2"]
    assert _children(fake) == [f"{NAME}-0"]
    assert inferenceset.reconcile(kube, _live(fake)).created == [], "a repeated reconcile changes nothing"


def test_scaling_in_removes_a_replica_that_is_not_ready_before_a_serving_one(kube_env, kubectl: kubebins.Kubectl) -> None:
    from infra.kube import crcontrol

    fake = kube_env
    kubectl("apply", "-f", str(EXAMPLE))
    kubectl("scale", "inferenceset", NAME, "--replicas", "3")
    kube = kclient.connect(settings.load())
    assert inferenceset.reconcile(kube, _live(fake)).created == [f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"]
    for i in (0, 2):  # -1 is the broken one (not the newest, which a plain newest-first rule would take)
        child = fake.get("kaito.sh/v1beta1", "Workspace", f"{NAME}-{i}", "default")
        crcontrol.set_condition(kube, child, "WorkspaceReady", True, "WorkspaceReady", "serving")
    kubectl("scale", "inferenceset", NAME, "--replicas", "2")
    assert inferenceset.reconcile(kube, _live(fake)).deleted == [f"{NAME}-1"]
    assert _children(fake) == [f"{NAME}-0", f"{NAME}-2"] and _live(fake)["status"]["readyReplicas"] == 2
    kubectl("scale", "inferenceset", NAME, "--replicas", "1")  # all serving: the newest goes
    assert inferenceset.reconcile(kube, _live(fake)).deleted == [f"{NAME}-2"]


def test_an_inferenceset_without_a_template_is_refused_naming_the_field() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    del doc["spec"]["template"]["inference"]
    with pytest.raises(Exception, match="spec.template.inference: required"):
        inferenceset.check(doc)
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["replicas"] = -1
    with pytest.raises(Exception, match="spec.replicas"):
        inferenceset.check(doc)


def test_a_child_the_controller_annotated_makes_a_workspace_without_that_bookkeeping() -> None:
    # a child Workspace as the API server returns it once kubectl and `kaiflow controller` have
    # touched it: what `kaiflow apply` of the set then serves must carry only the user's fields
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["template"]["metadata"] = {"annotations": {"kaito.sh/runtime": "transformers"}}
    child = inferenceset.child_workspace(doc, 0, "default", owner_uid="u-set")
    child["metadata"]["annotations"].update({"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                             "kaiflow.io/accepted-spec": '{"inference": true}'})
    child["metadata"].update({"uid": "u-0", "generation": 2, "resourceVersion": "7", "finalizers": ["kaiflow.io/teardown"]})
    child["status"] = {"observedGeneration": 1}
    [ws] = inferenceset_flow.as_workspaces([child])
    assert ws.metadata.annotations == {"kaito.sh/runtime": "transformers"}
    assert ws.to_parameters()["metadata"] == {"name": f"{NAME}-0", "namespace": "default", "labels": SELECTOR,
                                              "annotations": {"kaito.sh/runtime": "transformers"}}


def test_the_local_platform_says_it_runs_no_inferencesets(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path))
    rc = cli.main(["apply", "-f", str(EXAMPLE), "--platform", "local"])
    assert rc != 0
    assert "does not run InferenceSets" in capsys.readouterr().err


def test_the_check_asks_the_platform() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for name in ("kubernetes", "aks"):
        inferenceset_flow.check_platform([doc], name)  # cluster platforms run them: no error
    with pytest.raises(SpecError, match=f"InferenceSet {NAME}: the local platform does not run InferenceSets"):
        inferenceset_flow.check_platform([doc], "local")
    with pytest.raises(SpecError, match="platform 'slurm' is not one of local, kubernetes, aks"):
        inferenceset_flow.check_platform([doc], "slurm")


@pytest.mark.slow
def test_apply_serves_every_replica_and_scaling_changes_ready_replicas(kube_env, kubectl: kubebins.Kubectl,
                                                                       prefect_api, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.workspace_flow import workspace_flow

    fake = kube_env
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    for i in range(3):
        fake.add_node(f"gpu-{i}", labels={"apps": "phi-3-mini"}, instance_type="Standard_NC6s_v3",
                      taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])

    def run(ws) -> None:
        workspace_flow(workspace=ws, config_maps={}, platform="kubernetes")

    doc = yaml.safe_load(EXAMPLE.read_text())
    assert inferenceset_flow.apply([doc], {}, "kubernetes", run_workspace=run) == 0
    kube = kclient.connect(settings.load())

    def ready_pods() -> list[dict]:
        return [p for p in fake.list("v1", "Pod", "default", SELECTOR) if not p["metadata"].get("deletionTimestamp")]

    assert _live(fake)["status"]["readyReplicas"] == 2 and len(ready_pods()) == 2
    sts = fake.get("apps/v1", "StatefulSet", f"{NAME}-0", "default")
    cmd = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--served-model-name") + 1] == NAME, "a replica serves under the set's name"

    kubectl("scale", "inferenceset", NAME, "--replicas", "3")
    result, errors = inferenceset_flow.converge(kube, _live(fake), run)
    assert errors == [] and (result.ready, _live(fake)["status"]["readyReplicas"]) == (3, 3)
    assert all(p["metadata"]["labels"][inferenceset.CREATED_BY] == NAME for p in ready_pods()) and len(ready_pods()) == 3

    kubectl("scale", "inferenceset", NAME, "--replicas", "1")
    result, errors = inferenceset_flow.converge(kube, _live(fake), run)
    assert errors == [] and _live(fake)["status"]["readyReplicas"] == 1 and _children(fake) == [f"{NAME}-0"]
    assert kubebins.table(kubectl("get", "inferenceset", NAME))[0]["READYREPLICAS"] == "1"
