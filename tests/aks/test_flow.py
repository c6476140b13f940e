"""The whole workspace flow on the aks platform: the seed's tuning YAML (Standard_NC6s_v3) through
``flows.workspace_flow`` in-process, against the fake ARM (HTTPS, real azure client) and the fake
Kubernetes API (real kubernetes client): the agent pool is created, its Nodes appear, the tuning
Job is scheduled onto them (taints tolerated, pool selected), and teardown deletes the pool.

Two inputs of the seed are swapped for local ones, as nothing here reaches the internet: the
dataset URL (a local file server) and the output image (a local docker-registry, where the
"tuning pod" — the fake's Job completion hook — pushes a small adapter).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import aks
from tests.aks.conftest import SEED_TUNING
from tests.support import fakearm, fileserver
from tests.support import registry as test_registry
from workspace import loader

@pytest.fixture
def aks_env(kube_crds, arm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """FakeKube (CRDs installed) + fake ARM wired together, kaiflow settings aimed at both."""
    fakearm.attach_kube(arm, kube_crds)
    kubeconfig = kube_crds.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    env = {
        "KAIFLOW_PLATFORM": "aks", "KAIFLOW_PROVISIONER": "aks", "KAIFLOW_KUBECONFIG": str(kubeconfig),
        "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "20", "KAIFLOW_KUBE_BACKOFF_S": "0.05", "KAIFLOW_RETRY_BACKOFF_S": "0.1",
        "KAIFLOW_KUBE_REQUEST_TIMEOUT_S": "3", "KAIFLOW_IMAGE": "ghcr.io/kaiflow/kaiflow:test",
        "KAIFLOW_HOME": str(tmp_path / "home"), "KAIFLOW_ALLOW_PRIVATE_URLS": "true",
        "KAIFLOW_AZURE_SUBSCRIPTION_ID": arm.subscription, "KAIFLOW_AZURE_RESOURCE_GROUP": arm.resource_group,
        "KAIFLOW_AZURE_CLUSTER": arm.cluster, "KAIFLOW_AZURE_BASE_URL": arm.url,
        "KAIFLOW_AZURE_CA_BUNDLE": str(arm.ca_file), "KAIFLOW_AZURE_POLL_INTERVAL_S": "0",
        "KAIFLOW_AZURE_CREDENTIAL": "tests.aks.conftest:StaticCredential",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return kube_crds


def _seed_with_local_inputs(data_url: str, image: str):
    ws = loader.load_file(SEED_TUNING).workspaces[0]
    assert ws.instance_type == "Standard_NC6s_v3"
    ws.tuning.input.urls = [data_url]
    ws.tuning.output.image = image
    ws.tuning.output.image_push_secret = None
    return ws


@pytest.mark.slow
@pytest.mark.e2e
def test_seed_tuning_yaml_provisions_a_pool_and_tunes_on_it(aks_env, arm, prefect_api, tmp_path):
    from flows import workspace_flow
    from infra import platforms, records, registry

    test_registry.require_binaries()
    kube = aks_env
    data = fileserver.write_jsonl(tmp_path / "www" / "train.jsonl", rows=20)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    scheduled: list[dict] = []

    with fileserver.FileServer(data.parent) as files, test_registry.LocalRegistry(tmp_path / "registry") as reg:
        image = f"{reg.host}/phi-3-adapter:0.0.1"

        def tuning_pod_pushes(job: dict) -> None:  # what the push-adapter container does in a real pod
            pods = kube.list("v1", "Pod", job["metadata"]["namespace"], labels=job["spec"]["selector"]["matchLabels"])
            scheduled.extend(pods)
            registry.push_adapter(adapter, image, model_name="phi-3-mini-4k-instruct")

        kube.controllers.on_job_complete = tuning_pod_pushes
        ws = _seed_with_local_inputs(f"{files.url}/train.jsonl", image)
        result = workspace_flow.workspace_flow(ws, platform="aks")

        # the pool, as the seed's workspace asks for it
        name = aks.pool_name(ws, "default")
        (put,) = arm.pool_requests("PUT")
        props = put.body["properties"]
        assert (props["vmSize"], props["count"], props["mode"]) == ("Standard_NC6s_v3", 1, "User")
        assert props["nodeTaints"] == ["sku=gpu:NoSchedule"]
        assert props["nodeLabels"] == {"kaito.sh/workspace": "workspace-phi-3-mini",
                                       "kaito.sh/workspacenamespace": "default", "app": "phi-3-adapter"}
        assert props["osSKU"] == "Ubuntu" and props["osDiskSizeGB"] == 39
        # its node came up and the provision step found it
        node_names = fakearm.node_names(arm.pools[name])
        assert result["provision"]["nodes"] == node_names
        # the tuning pod ran on the pool's node
        assert scheduled and scheduled[0]["spec"].get("nodeName") in node_names
        assert result["image"]["reference"].startswith(f"{reg.host}/phi-3-adapter@sha256:")

        # teardown removes the pool and its nodes
        deleted = platforms.get("aks").teardown(records.load(ws.name)).cluster
        assert deleted["AgentPool"] == [name]
        assert name not in arm.pools and kube.list("v1", "Node", labels={"kubernetes.azure.com/agentpool": name}) == []
    assert arm.hook_errors == []


def test_quota_lands_in_resource_ready_and_is_not_retried(aks_env, arm):
    """The provision step (no Prefect needed) writes the reason and message to ResourceReady."""
    from infra import platforms, records
    from workspace import errors, status

    arm.fail("PUT", 0, "QuotaExceeded", "exceeding approved standardNCSv3Family Cores quota", at="operation")
    ws = _seed_with_local_inputs("http://127.0.0.1:9/unused.jsonl", "127.0.0.1:9/unused:0.0.1")
    with pytest.raises(errors.QuotaExceeded) as info:
        aks_platform = platforms.get("aks")
        aks_platform.provision(ws, aks_platform.reporter(ws))
    assert not errors.is_transient(info.value)
    record = records.load(ws.name)
    conds = {c["type"]: c for c in record.conditions}
    ready = conds[status.RESOURCE_READY]
    assert ready["status"] in (False, "False") and ready["reason"] == "QuotaExceeded"
    assert "az vm list-usage" in ready["message"]
    assert len(arm.pool_requests("PUT")) == 1


@pytest.mark.slow
@pytest.mark.e2e
def test_seed_tuning_yaml_runs_unchanged_on_aks(aks_env, arm, prefect_api):
    """The seed file as the user has it: its Hugging Face URL and placeholder registry are
    unreachable here, so the flow fingerprints the data by its spec and the tuning pod (the fake's
    Job controller) reports the image it pushed in its termination message, as ``infra.pod`` does."""
    import hashlib
    import json

    from flows import workspace_flow
    from infra import records

    kube = aks_env
    bundle = loader.load_file(SEED_TUNING)
    ws = bundle.workspaces[0]
    pushed: list[str] = []

    def tuning_pod_reports(job: dict) -> str:
        digest = "sha256:" + hashlib.sha256(job["metadata"]["uid"].encode()).hexdigest()
        pushed.append(f"{ws.tuning.output.image.rsplit(':', 1)[0]}@{digest}")
        return json.dumps({"reference": pushed[-1], "digest": digest})

    kube.controllers.on_job_complete = tuning_pod_reports
    result = workspace_flow.workspace_flow(ws, config_maps=bundle.config_maps, platform="aks")

    (put,) = arm.pool_requests("PUT")
    assert put.body["properties"]["vmSize"] == "Standard_NC6s_v3"
    assert result["image"]["reference"] == pushed[0]
    (job,) = kube.list("batch/v1", "Job", "default", labels={"kaito.sh/workspace": ws.name})
    assert ws.tuning.input.urls[0] in " ".join(job["spec"]["template"]["spec"]["initContainers"][0]["command"])
    rec = records.load(ws.name)
    assert any(e.reason == "DatasetNotVerified" for e in rec.events) and rec.adapter_image == pushed[0]


@pytest.mark.slow
@pytest.mark.e2e
def test_seed_inference_yaml_serves_on_the_pool_and_teardown_removes_it(aks_env, arm, prefect_api):
    """The seed's first workspace (phi-3-mini inference on Standard_NC6s_v3), unchanged, on aks: the
    pool's node runs the inference pod behind the Service; delete takes the pool away."""
    from flows import teardown, workspace_flow

    kube = aks_env
    seed = SEED_TUNING.parent / "workspace-phi-3-mini.yaml"
    bundle = loader.load_file(seed)
    ws = bundle.workspaces[0]
    result = workspace_flow.workspace_flow(ws, config_maps=bundle.config_maps, platform="aks")

    name = aks.pool_name(ws, "default")
    (put,) = arm.pool_requests("PUT")
    props = put.body["properties"]
    assert (props["vmSize"], props["count"]) == ("Standard_NC6s_v3", 1)
    assert props["nodeLabels"]["apps"] == "phi-3"  # the seed's labelSelector lands on the nodes
    nodes = fakearm.node_names(arm.pools[name])
    (pod,) = kube.list("v1", "Pod", "default", labels={"kaito.sh/workspace": ws.name})
    assert pod["spec"]["nodeName"] in nodes
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    svc = kube.get("v1", "Service", ws.name, "default")
    assert any(p["port"] == 80 for p in svc["spec"]["ports"])
    assert result["inference"]

    gone = teardown.delete_workspace(ws.name)
    assert gone["cluster"]["AgentPool"] == [name] and name not in arm.pools
