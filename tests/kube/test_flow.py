"""The seed's workspaces through the real workspace flow (in-process, real Prefect server) against
the fake API server, driven by the real kubernetes client; objects checked field by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.workspace_flow import workspace_flow
from infra import platforms, records
from workspace import loader, status
from workspace.errors import KaiflowError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"
GPU = "nvidia.com/gpu"

pytestmark = pytest.mark.slow


def _byo(monkeypatch, kube, labels: dict[str, str], n: int = 1) -> None:
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    for i in range(n):
        kube.add_node(f"gpu-{i}", labels=labels, instance_type="Standard_NC6s_v3",
                      taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])


def _run(path: Path) -> tuple[dict, object]:
    b = loader.load_files([path])
    ws = b.workspaces[0]
    return workspace_flow(workspace=ws, config_maps=b.config_maps, platform="kubernetes"), ws


def _container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec.get("initContainers", []) + pod_spec["containers"] if c["name"] == name)


def test_seed_inference_runs_unchanged_and_objects_are_as_specified(kube_env, prefect_api, monkeypatch):
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3"})
    result, ws = _run(SEED / "workspace-phi-3-mini.yaml")
    name = "workspace-phi-3-mini"
    assert result["inference"]["endpoint"] == f"http://{name}.default.svc.cluster.local"

    sts = kube.get("apps/v1", "StatefulSet", name, "default")
    pod = sts["spec"]["template"]["spec"]
    c = _container(pod, "inference")
    assert c["image"] == "ghcr.io/kaiflow/kaiflow:test"
    assert c["command"][:9] == ["python", "-m", "serving", "--model", "phi-3-mini-4k-instruct", "--host", "0.0.0.0",
                                "--port", "5000"]
    assert c["resources"] == {"requests": {GPU: "1", "cpu": "1", "memory": "4Gi"}, "limits": {GPU: "1"}}
    assert {p["containerPort"] for p in c["ports"]} == {5000, 29500}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": 5000}
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "apps", "operator": "In", "values": ["phi-3"]}]}]
    params = yaml.safe_load(kube.get("v1", "ConfigMap", f"{name}-inference-params", "default")["data"]["inference_config.yaml"])
    assert params["vllm"] == {"max-model-len": "auto", "dtype": "float16", "gpu-memory-utilization": 0.84,
                              "tensor-parallel-size": 1}

    svc = kube.get("v1", "Service", name, "default")
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, 5000), (29500, 29500)]
    cr = kube.get("kaito.sh/v1alpha1", "Workspace", name, "default")
    for obj in (sts, svc, kube.get("v1", "Service", f"{name}-headless", "default")):
        assert obj["metadata"]["labels"]["kaito.sh/workspace"] == name
        assert obj["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
    conds = {c["type"]: c["status"] for c in cr["status"]["conditions"]}
    assert conds == {"ResourceReady": "True", "InferenceReady": "True", "WorkspaceReady": "True"}
    assert cr["status"]["workerNodes"] == ["gpu-0"]

    # re-apply: server-side applies change nothing
    versions = {k: kube.get(*k)["metadata"]["resourceVersion"] for k in
                (("apps/v1", "StatefulSet", name, "default"), ("v1", "Service", name, "default"))}
    _run(SEED / "workspace-phi-3-mini.yaml")
    assert {k: kube.get(*k)["metadata"]["resourceVersion"] for k in versions} == versions


def test_seed_adapter_inference_pulls_adapters_in_an_init_container(kube_env, prefect_api, monkeypatch):
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3-adapter"})
    _run(SEED / "workspace-phi-3-mini-adapter.yaml")
    pod = kube.get("apps/v1", "StatefulSet", "workspace-phi-3-mini-adapter", "default")["spec"]["template"]["spec"]
    init = _container(pod, "pull-adapters")
    assert init["command"] == ["python", "-m", "infra.pod", "pull-adapters", "--dest", "/mnt/adapter",
                               "--adapter", "phi-3-adapter=ACR_REPO_HERE.azurecr.io/ADAPTER_HERE:0.0.1"]
    main = _container(pod, "inference")
    assert main["command"][main["command"].index("--adapter") + 1] == "phi-3-adapter=/mnt/adapter/phi-3-adapter:1"
    assert {"name": "adapters", "mountPath": "/mnt/adapter", "readOnly": True} in main["volumeMounts"]
    assert {"name": "adapters", "emptyDir": {}} in pod["volumes"]


@pytest.mark.parametrize("failure", ["ImagePullBackOff", "CrashLoopBackOff", "Unschedulable"])
def test_pod_failures_surface_in_inference_ready(kube_env, prefect_api, monkeypatch, failure):
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3"})
    kube.controllers.pod_failure = failure
    with pytest.raises(KaiflowError):
        _run(SEED / "workspace-phi-3-mini.yaml")
    cond = status.get_condition(records.load("workspace-phi-3-mini").conditions, status.INFERENCE_READY)
    assert cond["status"] == "False" and cond["reason"] == failure and "put back" not in cond["message"]  # nothing served before
    cr = kube.get("kaito.sh/v1alpha1", "Workspace", "workspace-phi-3-mini", "default")
    crc = {c["type"]: c for c in cr["status"]["conditions"]}
    assert crc["InferenceReady"]["reason"] == failure and crc["WorkspaceReady"]["status"] == "False"


def test_a_failed_redeploy_puts_the_serving_version_back(kube_env, prefect_api, monkeypatch, tmp_path):
    """One replica: the StatefulSet replaces the serving pod before the new one is ready. A new
    adapter image that does not pull must not leave the endpoint down: the old template comes back."""
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3-adapter"})
    name = "workspace-phi-3-mini-adapter"
    seed = SEED / "workspace-phi-3-mini-adapter.yaml"
    _run(seed)
    serving = kube.get("apps/v1", "StatefulSet", name, "default")["spec"]["template"]
    record = records.load(name)

    doc = yaml.safe_load(seed.read_text())
    doc["inference"]["adapters"][0]["source"]["image"] = "registry.example.com/adapters/broken:9"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    kube.controllers.pod_failure_for = lambda pod: "ImagePullBackOff" if "broken:9" in str(pod.get("spec")) else None
    with pytest.raises(KaiflowError, match="ImagePullBackOff.*the previous version was put back and serves again"):
        _run(changed)

    assert kube.get("apps/v1", "StatefulSet", name, "default")["spec"]["template"] == serving
    pods = kube.list("v1", "Pod", "default", labels={"kaito.sh/workspace": name})
    assert len(pods) == 1 and "broken:9" not in str(pods[0]["spec"])
    assert {c["type"]: c["status"] for c in pods[0]["status"]["conditions"]}["Ready"] == "True"
    after = records.load(name)
    assert (after.endpoint, after.server) == (record.endpoint, record.server)
    cond = status.get_condition(after.conditions, status.INFERENCE_READY)
    assert cond["status"] == "False" and cond["reason"] == "ImagePullBackOff" and "put back" in cond["message"]


def test_byo_without_matching_nodes_is_a_clear_error(kube_env, prefect_api, monkeypatch):
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    kube_env.add_node("other", labels={"apps": "something-else"})
    with pytest.raises(KaiflowError, match="no nodes match resource.labelSelector apps=phi-3"):
        _run(SEED / "workspace-phi-3-mini.yaml")
    cond = status.get_condition(records.load("workspace-phi-3-mini").conditions, status.RESOURCE_READY)
    assert cond["reason"] == "NoMatchingNodes"


def test_delete_removes_everything(kube_env, prefect_api, monkeypatch):
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3"})
    _, ws = _run(SEED / "workspace-phi-3-mini.yaml")
    gone = platforms.get("kubernetes").teardown(records.load(ws.name)).cluster
    assert gone["StatefulSet"] == [ws.name] and sorted(gone["Service"]) == [ws.name, f"{ws.name}-headless"]
    assert gone["Workspace"] == [ws.name]
    sel = {"kaito.sh/workspace": ws.name}
    for av, kind in (("apps/v1", "StatefulSet"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Pod")):
        assert kube.list(av, kind, "default", labels=sel) == []
    assert kube.get("kaito.sh/v1alpha1", "Workspace", ws.name, "default") is None


def test_teardown_flow_deletes_the_cluster_objects_then_the_record(kube_env, prefect_api, monkeypatch):
    """The `teardown` deployment's flow does on a cluster what `kaiflow delete` does."""
    from flows.teardown import teardown_flow

    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3"})
    _, ws = _run(SEED / "workspace-phi-3-mini.yaml")
    result = teardown_flow(name=ws.name)
    assert result["deleted"] is True and result["cluster"]["StatefulSet"] == [ws.name]
    assert kube.list("apps/v1", "StatefulSet", "default", labels={"kaito.sh/workspace": ws.name}) == []
    assert kube.get("kaito.sh/v1alpha1", "Workspace", ws.name, "default") is None
    assert records.load(ws.name) is None
    assert teardown_flow(name=ws.name)["deleted"] is False  # idempotent: a second run is a no-op
