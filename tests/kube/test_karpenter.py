"""Karpenter provisioning end to end: the seed's inference workspaces through the real workspace
flow with the default provisioner (``karpenter``) against the fake API server, whose controller
plays Karpenter (NodeClaim -> Launched -> Node with GPU capacity -> Ready).

The NodeClaims are checked field by field against what Kaito's ``GenerateNodeClaimManifest``
(kaito-project/kaito ``pkg/utils/nodeclaim/nodeclaim.go``) builds for ``CLOUD_PROVIDER=azure``:
labels ``karpenter.sh/nodepool: kaito`` + ``kaito.sh/workspace`` + ``kaito.sh/workspacenamespace``
+ the labelSelector's matchLabels, the ``karpenter.sh/do-not-disrupt`` annotation, nodeClassRef
``AKSNodeClass/default``, the ``sku=gpu:NoSchedule`` taint, requirements nodepool / instance-type /
os / ``karpenter.azure.com/sku-name``, and an ephemeral-storage request. Kaiflow differs on
purpose in the name (a stable hash, so a re-apply finds its NodeClaims), the nodeClassRef
``group`` (required by karpenter.sh/v1, which Kaito's Go struct leaves to the API default) and
the storage size (the plan's disk estimate rather than a per-preset constant).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.workspace_flow import workspace_flow
from infra import platforms, records
from infra.kube import manifests
from workspace import loader, plan, status
from workspace.errors import KaiflowError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"
GPU = "nvidia.com/gpu"
NODECLAIMS = "/apis/karpenter.sh/v1/nodeclaims"

pytestmark = pytest.mark.slow


def _run(path: Path):
    b = loader.load_files([path])
    ws = b.workspaces[0]
    return workspace_flow(workspace=ws, config_maps=b.config_maps, platform="kubernetes"), ws


def _claims(kube, name: str) -> list[dict]:
    return kube.list("karpenter.sh/v1", "NodeClaim", labels={"kaito.sh/workspace": name})


def _claim_writes(kube) -> int:
    """Creates and server-side applies of NodeClaims the API server received."""
    return sum(1 for r in kube.requests if r.method in ("POST", "PATCH") and r.path.startswith(NODECLAIMS)
               and not r.path.endswith("/status"))


@pytest.mark.parametrize("seed, selector", [("workspace-phi-3-mini.yaml", {"apps": "phi-3"}),
                                            ("workspace-phi-3-mini-adapter.yaml", {"apps": "phi-3-adapter"})])
def test_karpenter_nodeclaims_are_kaitos_and_the_node_runs_the_pods(kube_env, prefect_api, monkeypatch, seed, selector):
    kube = kube_env
    monkeypatch.delenv("KAIFLOW_PROVISIONER", raising=False)  # the default: karpenter
    result, ws = _run(SEED / seed)
    name = ws.name
    assert result["provision"]["provisioner"] == "karpenter"

    (claim,) = _claims(kube, name)
    meta, spec = claim["metadata"], claim["spec"]
    assert meta["name"] == manifests.nodeclaim_name("default", name, 0) and "namespace" not in meta
    assert meta["labels"] == {"karpenter.sh/nodepool": "kaito", "kaito.sh/workspace": name,
                              "kaito.sh/workspacenamespace": "default", "app.kubernetes.io/managed-by": "kaiflow",
                              **selector}
    assert meta["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    assert spec["nodeClassRef"] == {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "default"}
    assert spec["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert spec["requirements"] == [
        {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["kaito"]},
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["Standard_NC6s_v3"]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        {"key": "karpenter.azure.com/sku-name", "operator": "In", "values": ["Standard_NC6s_v3"]},
    ]
    disk = plan.plan_workspace(ws, "kubernetes").parts[0].details["disk_gib"]
    assert spec["resources"] == {"requests": {"ephemeral-storage": f"{int(disk)}Gi"}}
    assert not claim["metadata"].get("ownerReferences"), "cluster-scoped: cannot be owned by the namespaced CR"

    # the Node the claim brought up: Kaito's labels and taint, GPU capacity; it runs the inference pod
    node_name = claim["status"]["nodeName"]
    node = kube.get("v1", "Node", node_name)
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "Standard_NC6s_v3"
    assert {k: node["metadata"]["labels"][k] for k in selector} == selector
    assert node["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert node["status"]["capacity"][GPU] == "1"
    assert result["provision"]["nodes"] == [node_name]
    pods = kube.list("v1", "Pod", "default", labels=manifests.selector(ws, "inference"))
    assert [p["spec"]["nodeName"] for p in pods] == [node_name]
    cr = kube.get("kaito.sh/v1alpha1", "Workspace", name, "default")
    conds = {c["type"]: (c["status"], c["reason"]) for c in cr["status"]["conditions"]}
    assert conds["ResourceReady"] == ("True", "NodeClaimsReady") and conds["WorkspaceReady"][0] == "True"
    assert cr["status"]["workerNodes"] == [node_name]

    # re-apply: the same NodeClaim is found (one server-side apply, unchanged), no second one
    version = claim["metadata"]["resourceVersion"]
    writes = _claim_writes(kube)
    _run(SEED / seed)
    (again,) = _claims(kube, name)
    assert again["metadata"]["uid"] == claim["metadata"]["uid"]
    assert again["metadata"]["resourceVersion"] == version
    assert _claim_writes(kube) == writes + 1
    assert len(kube.list("v1", "Node")) == 1

    # delete: NodeClaims go by label (and the fake's Karpenter removes their Node)
    gone = platforms.get("kubernetes").teardown(records.load(name)).cluster
    assert gone["NodeClaim"] == [claim["metadata"]["name"]]
    assert _claims(kube, name) == [] and kube.get("v1", "Node", node_name) is None


def test_nodeclaim_quota_failure_is_reported_once_without_retries(kube_env, prefect_api, monkeypatch):
    kube = kube_env
    monkeypatch.delenv("KAIFLOW_PROVISIONER", raising=False)
    message = ("creating instance, insufficient capacity: the subscription's regional quota for "
               "standardNCSv3Family is 0 cores, 6 are needed")
    kube.controllers.nodeclaim_outcome = ("failed", "InsufficientCapacity", message)
    with pytest.raises(KaiflowError, match="InsufficientCapacity"):
        _run(SEED / "workspace-phi-3-mini.yaml")

    name = "workspace-phi-3-mini"
    cond = status.get_condition(records.load(name).conditions, status.RESOURCE_READY)
    assert cond["status"] == "False" and cond["reason"] == "QuotaExceeded"
    assert f"InsufficientCapacity: {message}" in cond["message"] and "raise the GPU quota" in cond["message"]
    cr = kube.get("kaito.sh/v1alpha1", "Workspace", name, "default")
    crc = {c["type"]: c for c in cr["status"]["conditions"]}
    assert (crc["ResourceReady"]["status"], crc["ResourceReady"]["reason"]) == ("False", "QuotaExceeded")
    assert message in crc["ResourceReady"]["message"]
    (claim,) = _claims(kube, name)
    assert {c["type"]: c["reason"] for c in claim["status"]["conditions"]}["Launched"] == "InsufficientCapacity"
    assert _claim_writes(kube) == 1, "created exactly once: a quota failure is not retried"
    assert kube.list("v1", "Node") == [] and kube.get("apps/v1", "StatefulSet", name, "default") is None
