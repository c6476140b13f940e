"""infra.aks against the fake ARM with the real azure-mgmt-containerservice client: create, reuse,
shape mismatch, ownership, busy pools, delete, and the pool name rules."""

from __future__ import annotations

import random
import re
import string

import pytest

from infra import aks
from tests.aks.conftest import TOKEN, aks_settings
from tests.support import fakearm
from workspace import errors, loader, spec
from workspace import plan as plan_mod

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def _plan(ws):
    return plan_mod.plan_workspace(ws, "aks")


def _workspace(name: str, namespace: str | None = None, instance: str = "Standard_NC6s_v3", labels: str = "app: x",
               preset: str = "phi-3-mini-4k-instruct", count: int | None = None):
    ns = f"\n  namespace: {namespace}" if namespace else ""
    cnt = f"\n  count: {count}" if count else ""
    text = f"""
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}{ns}
resource:
  instanceType: {instance}{cnt}
  labelSelector:
    matchLabels:
      {labels}
inference:
  preset:
    name: {preset}
"""
    return loader.load_text(text).workspaces[0]


def test_create_sends_the_pool_the_workspace_asks_for(arm, settings, credential, seed_workspace):
    result = aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)

    name = aks.pool_name(seed_workspace)
    assert result == {
        "pool": name,
        "node_selector": {
            "kubernetes.azure.com/agentpool": name,
            "kaito.sh/workspace": "workspace-phi-3-mini",
            "kaito.sh/workspacenamespace": "default",
            "app": "phi-3-adapter",
        },
        "count": 1,
        "gpu_per_node": 1,
        "created": True,
        "tolerations": [],
    }
    (put,) = arm.pool_requests("PUT")
    assert put.path == f"{arm.cluster_path}/agentPools/{name}"
    assert put.query == {"api-version": fakearm.SUPPORTED_API_VERSIONS[0]}
    assert put.bearer
    props = put.body["properties"]
    assert props["vmSize"] == "Standard_NC6s_v3"
    assert props["count"] == 1
    assert props["mode"] == "User"
    assert props["osType"] == "Linux"
    assert props["osSKU"] == "Ubuntu"
    assert props["type"] == "VirtualMachineScaleSets"
    assert props["enableAutoScaling"] is False
    assert props["nodeTaints"] == ["sku=gpu:NoSchedule"]
    assert props["nodeLabels"] == {
        "kaito.sh/workspace": "workspace-phi-3-mini",
        "kaito.sh/workspacenamespace": "default",
        "app": "phi-3-adapter",
    }
    # phi-3-mini: 7.64 GB of weights -> 7.12 GiB * 1.2 + 30 = 38.5 -> 39 GiB, as `kaiflow plan` says for inference
    assert props["osDiskSizeGB"] == 39
    assert not {"scaleSetPriority", "scaleSetEvictionPolicy", "spotMaxPrice"} & set(props)
    # the long-running operation was followed to its end, then the pool read back
    methods = [(r.method, "operations" in r.path) for r in arm.requests]
    assert methods[-3:] == [("GET", True), ("GET", True), ("GET", False)]
    assert arm.pools[name]["properties"]["provisioningState"] == "Succeeded"
    assert credential.scopes and all(s == ("https://management.azure.com/.default",) for s in credential.scopes)


def test_spot_and_azurelinux_pool(arm, credential):
    settings = aks_settings(arm, aks_spot=True, aks_os_sku="AzureLinux")
    ws = _workspace("spot-ws", namespace="team-a")
    seen: list[dict] = []
    arm.on_pool_ready = seen.append

    result = aks.ensure_agent_pool(ws, _plan(ws), settings, credential=credential)

    props = arm.pool_requests("PUT")[0].body["properties"]
    assert (props["scaleSetPriority"], props["scaleSetEvictionPolicy"], props["spotMaxPrice"]) == ("Spot", "Delete", -1)
    assert props["osSKU"] == "AzureLinux"
    assert props["nodeTaints"] == ["sku=gpu:NoSchedule"]  # AKS adds the spot taint itself
    assert props["nodeLabels"]["kaito.sh/workspacenamespace"] == "team-a"
    tol = {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}
    assert result["tolerations"] == [tol] == aks.extra_tolerations(settings)
    assert aks.extra_tolerations(aks_settings(arm)) == []
    # the nodes AKS brings carry the spot taint that toleration is for
    (pool,) = seen
    taints = fakearm.node_taints(pool)
    assert {"key": tol["key"], "value": "spot", "effect": "NoSchedule"} in taints
    # the spot pool is reused as is: AKS's own taint and label are not a "different shape"
    again = aks.ensure_agent_pool(ws, _plan(ws), settings, credential=credential)
    assert again["created"] is False and len(arm.pool_requests("PUT")) == 1


def test_same_shape_is_reused_without_a_put(arm, settings, credential, seed_workspace):
    first = aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    second = aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    assert first["created"] is True and second["created"] is False
    assert second["pool"] == first["pool"] and second["node_selector"] == first["node_selector"]
    assert len(arm.pool_requests("PUT")) == 1


def test_other_shape_is_reported_not_replaced(arm, settings, credential, seed_workspace):
    name = aks.pool_name(seed_workspace)
    want = aks.desired_pool(seed_workspace, _plan(seed_workspace), settings, "default")["properties"]
    arm.seed_pool(name, {**want, "vmSize": "Standard_NC12s_v3", "count": 2})

    with pytest.raises(errors.ProvisioningError) as info:
        aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)

    err = info.value
    assert err.reason == "PoolShapeMismatch" and not err.transient
    assert "vmSize is 'Standard_NC12s_v3', the workspace wants 'Standard_NC6s_v3'" in err.message
    assert "count is 2, the workspace wants 1" in err.message
    assert "kaiflow delete workspace workspace-phi-3-mini" in err.message
    assert arm.pool_requests("PUT") == [] and arm.pools[name]["properties"]["vmSize"] == "Standard_NC12s_v3"


def test_label_and_taint_differences_are_named(arm, settings, credential, seed_workspace):
    name = aks.pool_name(seed_workspace)
    want = aks.desired_pool(seed_workspace, _plan(seed_workspace), settings, "default")["properties"]
    labels = {**want["nodeLabels"], "app": "other"}
    arm.seed_pool(name, {**want, "nodeLabels": labels, "nodeTaints": []})
    with pytest.raises(errors.ProvisioningError) as info:
        aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    assert "node label app is 'other', the workspace wants 'phi-3-adapter'" in info.value.message
    assert "nodeTaints are [], the workspace wants ['sku=gpu:NoSchedule']" in info.value.message


def test_another_workspaces_pool_is_left_alone(arm, settings, credential, seed_workspace):
    name = aks.pool_name(seed_workspace)
    other = _workspace("someone-else")
    props = aks.desired_pool(other, _plan(other), settings, "default")["properties"]
    arm.seed_pool(name, props)

    with pytest.raises(errors.ProvisioningError) as create:
        aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    with pytest.raises(errors.ProvisioningError) as delete:
        aks.delete_agent_pool(seed_workspace, settings, credential=credential)

    assert create.value.reason == "PoolNameTaken" and "'someone-else'" in create.value.message
    assert delete.value.reason == "PoolNotOwned"
    assert name in arm.pools and arm.pool_requests("PUT") == arm.pool_requests("DELETE") == []


def test_failed_pool_of_the_same_shape_is_put_again(arm, settings, credential, seed_workspace):
    name = aks.pool_name(seed_workspace)
    want = aks.desired_pool(seed_workspace, _plan(seed_workspace), settings, "default")["properties"]
    arm.seed_pool(name, want, state="Failed")
    result = aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    assert result["created"] is False
    assert len(arm.pool_requests("PUT")) == 1
    assert arm.pools[name]["properties"]["provisioningState"] == "Succeeded"


def test_pool_still_creating_is_waited_for(arm, credential, seed_workspace):
    settings = aks_settings(arm, azure_poll_interval_s=0.05)
    name = aks.pool_name(seed_workspace)
    want = aks.desired_pool(seed_workspace, _plan(seed_workspace), settings, "default")["properties"]
    pool = arm.seed_pool(name, want, state="Creating")

    def third_get_finds_it_created(request) -> None:  # the pool is created while kaiflow polls it
        if len(arm.pool_requests("GET", name)) == 3:
            pool["properties"]["provisioningState"] = "Succeeded"

    arm.on_request = third_get_finds_it_created
    result = aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    assert result["created"] is False and arm.pool_requests("PUT") == []
    assert len(arm.pool_requests("GET", name)) == 3  # two answered Creating, the third Succeeded: no more


def test_pool_being_deleted_is_busy(arm, settings, credential, seed_workspace):
    name = aks.pool_name(seed_workspace)
    want = aks.desired_pool(seed_workspace, _plan(seed_workspace), settings, "default")["properties"]
    arm.seed_pool(name, want, state="Deleting")
    with pytest.raises(errors.ProvisioningError) as info:
        aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    assert info.value.reason == "PoolBusy" and "is Deleting" in info.value.message
    assert "az aks nodepool show" in info.value.message


def test_delete_waits_for_the_pool_to_go(arm, settings, credential, seed_workspace):
    gone: list[dict] = []
    arm.on_pool_deleted = gone.append
    aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    name = aks.pool_name(seed_workspace)

    assert aks.delete_agent_pool(seed_workspace, settings, credential=credential) is True
    assert name not in arm.pools and [p["name"] for p in gone] == [name]
    (delete,) = arm.pool_requests("DELETE")
    assert delete.status == 202
    assert aks.delete_agent_pool(seed_workspace, settings, credential=credential) is False
    assert len(arm.pool_requests("DELETE")) == 1


def test_workspace_that_does_not_fit_creates_nothing(arm, settings, credential):
    ws = _workspace("too-big", preset="gpt-oss-20b", count=1)  # MXFP4 weights: vLLM cannot run them on a V100
    with pytest.raises(errors.SizingError) as info:
        aks.ensure_agent_pool(ws, _plan(ws), settings, credential=credential)
    assert "compute capability" in info.value.message
    assert arm.requests == []


def test_count_follows_the_model_not_resource_count(arm, settings, credential):
    ws = _workspace("raised", preset="phi-4", count=1)  # phi-4 needs more than one V100 16 GiB node
    plan = _plan(ws)
    assert plan.fits and plan.adjustments() and plan.adjustments()[0].startswith("resource.count 1 raised to ")
    assert aks.node_count(ws, plan) == plan.parts[0].details["nodes"] > 1


def test_count_comes_from_the_plan(arm, settings, credential):
    ws = _workspace("two-nodes", preset="phi-4")
    plan = _plan(ws)
    nodes = plan.parts[0].details["nodes"]
    assert nodes > 1  # phi-4 (29 GB) spreads over V100 16 GiB nodes
    result = aks.ensure_agent_pool(ws, plan, settings, credential=credential)
    props = arm.pool_requests("PUT")[0].body["properties"]
    assert result["count"] == props["count"] == nodes
    assert props["osDiskSizeGB"] == plan.parts[0].details["disk_gib"]


# ------------------------------------------------------------------ pool names


def _random_names(rng: random.Random, n: int) -> list[str]:
    alphabet = string.ascii_lowercase + string.digits
    names = set()
    while len(names) < n:
        body = "".join(rng.choice(alphabet + "-.") for _ in range(rng.randint(0, 60)))
        name = (rng.choice(alphabet) + body + rng.choice(alphabet)).replace("..", ".")
        names.add(name.replace("-.", "-a").replace(".-", "a-"))
    return sorted(names)


def _named(name: str, namespace: str | None = None):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return spec.Workspace.model_validate({
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": meta,
        "resource": {"instanceType": "Standard_NC6s_v3"},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    })


def test_pool_names_are_valid_stable_and_distinct():
    rng = random.Random(8)
    names = _random_names(rng, 400)
    long_prefix = "workspace-phi-3-mini-4k-instruct-tuning-run-"
    names += [f"{long_prefix}{i}" for i in range(200)] + ["0", "123-456", "9.9.9", "a", "x" * 253]
    pools = {}
    for name in names:
        ws = _named(name)
        pool = aks.pool_name(ws)
        assert NAME_RE.match(pool), (name, pool)
        assert pool == aks.pool_name(_named(name)) == aks.pool_name(ws, "default")
        pools[pool] = name
    assert len(pools) == len(set(names))
    # the same name in two namespaces is two workspaces
    ws = _named("shared-name")
    assert aks.pool_name(ws, "team-a") != aks.pool_name(ws, "team-b")
    assert aks.pool_name(_named("shared-name", namespace="team-a")) == aks.pool_name(ws, "team-a")
    # readable: the workspace's name starts the pool's where it can
    assert aks.pool_name(_named("phi3-tune")).startswith("phi3tu")
    assert aks.pool_name(_named("123-456")).startswith("ws")


def test_namespace_from_settings_when_the_workspace_names_none(arm, credential, seed_workspace):
    settings = aks_settings(arm, namespace="ml")
    result = aks.ensure_agent_pool(seed_workspace, _plan(seed_workspace), settings, credential=credential)
    assert result["pool"] == aks.pool_name(seed_workspace, "ml") != aks.pool_name(seed_workspace)
    assert result["node_selector"]["kaito.sh/workspacenamespace"] == "ml"
    assert TOKEN not in repr(arm.requests)
