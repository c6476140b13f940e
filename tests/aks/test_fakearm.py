"""The fake ARM answers the real client as ARM would where kaiflow depends on it (api-version, pool
names, immutable fields, one operation at a time), and its pools' Nodes reach the fake Kubernetes
API with the labels, taints and GPUs AKS gives them."""

from __future__ import annotations

import json

import pytest

from infra import aks
from tests.aks.conftest import TOKEN, StaticCredential, aks_settings
from tests.support import fakearm
from tests.support.fakekube import FakeKube
from workspace import plan as plan_mod


def _client(arm: fakearm.FakeArm, **kwargs):
    from azure.mgmt.containerservice import ContainerServiceClient

    return ContainerServiceClient(StaticCredential(), arm.subscription, base_url=arm.url,
                                  connection_verify=str(arm.ca_file), polling_interval=0, retry_total=0, **kwargs)


POOL = {"properties": {"vmSize": "Standard_NC6s_v3", "count": 1, "mode": "User", "osDiskSizeGB": 64}}


def _error_code(exc_info) -> str:
    return exc_info.value.error.code


@pytest.mark.fake
def test_unknown_api_version_is_refused(arm):
    from azure.core.exceptions import HttpResponseError

    with _client(arm, api_version="2019-01-01") as client, pytest.raises(HttpResponseError) as info:
        client.agent_pools.get(arm.resource_group, arm.cluster, "gpu")
    assert _error_code(info) == "InvalidApiVersionParameter"
    assert info.value.status_code == 400


@pytest.mark.fake
def test_invalid_pool_name_and_unknown_fields_are_refused(arm):
    from azure.core.exceptions import HttpResponseError

    with _client(arm) as client:
        with pytest.raises(HttpResponseError) as bad_name:
            client.agent_pools.begin_create_or_update(arm.resource_group, arm.cluster, "GPU-pool-too-long", POOL)
        with pytest.raises(HttpResponseError) as bad_field:
            client.agent_pools.begin_create_or_update(
                arm.resource_group, arm.cluster, "gpu", {"properties": {**POOL["properties"], "vmsize": "x"}})
    assert _error_code(bad_name) == "InvalidParameter" and "12 characters" in str(bad_name.value)
    assert _error_code(bad_field) == "InvalidRequestContent" and "vmsize" in str(bad_field.value)
    assert arm.pools == {}


@pytest.mark.fake
def test_vm_size_cannot_change_and_one_operation_at_a_time(arm):
    from azure.core.exceptions import HttpResponseError

    with _client(arm) as client:
        client.agent_pools.begin_create_or_update(arm.resource_group, arm.cluster, "gpu", POOL).result()
        with pytest.raises(HttpResponseError) as change:
            client.agent_pools.begin_create_or_update(
                arm.resource_group, arm.cluster, "gpu", {"properties": {**POOL["properties"], "vmSize": "Standard_NC24ads_A100_v4"}})
        arm.poll_rounds = 5
        poller = client.agent_pools.begin_create_or_update(
            arm.resource_group, arm.cluster, "gpu", {"properties": {**POOL["properties"], "count": 2}})
        with pytest.raises(HttpResponseError) as busy:
            client.agent_pools.begin_delete(arm.resource_group, arm.cluster, "gpu")
        updated = poller.result()
        pools = [p.name for p in client.agent_pools.list(arm.resource_group, arm.cluster)]
    assert _error_code(change) == "PropertyChangeNotAllowed"
    assert busy.value.status_code == 409 and _error_code(busy) == "OperationNotAllowed"
    assert updated.as_dict()["properties"]["count"] == 2 and pools == ["gpu"]
    assert [r.status for r in arm.pool_requests("PUT")] == [201, 400, 200]


@pytest.mark.fake
def test_requests_never_keep_the_token(arm, settings, seed_workspace):
    aks.ensure_agent_pool(seed_workspace, plan_mod.plan_workspace(seed_workspace, "aks"), settings,
                          credential=StaticCredential())
    assert all(r.bearer for r in arm.requests)
    assert TOKEN not in json.dumps([r.__dict__ for r in arm.requests], default=str)


def test_credential_from_settings_import_path(arm, seed_workspace):
    settings = aks_settings(arm, azure_credential="tests.aks.conftest:StaticCredential")
    result = aks.ensure_agent_pool(seed_workspace, plan_mod.plan_workspace(seed_workspace, "aks"), settings)
    assert result["created"] is True
    broken = aks_settings(arm, azure_credential="tests.aks.no_such_module:X")
    with pytest.raises(aks.errors.ProvisioningError) as info:
        aks.ensure_agent_pool(seed_workspace, plan_mod.plan_workspace(seed_workspace, "aks"), broken)
    assert info.value.reason == "AzureNotConfigured" and "KAIFLOW_AZURE_CREDENTIAL" in info.value.message


@pytest.fixture
def kube():
    server = FakeKube(versions=("1.34",)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.fake
def test_pool_nodes_appear_in_kube_and_go_with_the_pool(arm, kube, tmp_path, seed_workspace):
    from infra.kube import client, nodes

    fakearm.attach_kube(arm, kube)
    settings = aks_settings(arm, aks_spot=True, kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="default"))
    plan = plan_mod.plan_workspace(seed_workspace, "aks")

    pool = aks.ensure_agent_pool(seed_workspace, plan, settings, credential=StaticCredential())
    ready = nodes.wait_for_gpu_nodes(client.connect(settings), pool["node_selector"], pool["count"],
                                     pool["gpu_per_node"], timeout=10)

    assert arm.hook_errors == []
    (node,) = ready
    assert node["metadata"]["name"] == fakearm.node_names(arm.pools[pool["pool"]])[0]
    labels = node["metadata"]["labels"]
    for key, value in pool["node_selector"].items():
        assert labels[key] == value
    assert labels["node.kubernetes.io/instance-type"] == "Standard_NC6s_v3"
    taints = {(t["key"], t.get("value"), t["effect"]) for t in node["spec"]["taints"]}
    assert taints == {("sku", "gpu", "NoSchedule"), ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule")}
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"

    assert aks.delete_agent_pool(seed_workspace, settings, credential=StaticCredential()) is True
    assert kube.list("v1", "Node", labels={"kubernetes.azure.com/agentpool": pool["pool"]}) == []
