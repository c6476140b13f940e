"""Controller simulation seen through the real client: NodeClaims, Jobs, StatefulSets, scheduling, GC."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
from kubernetes import client

pytestmark = pytest.mark.fake  # these tests check the fake API server itself, not kaiflow

NS = "default"
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def nodeclaim(name: str, instance_type: str = "Standard_NC12s_v3") -> dict:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": name, "labels": {"kaito.sh/workspace": "ws", "apps": "phi-3"}},
            "spec": {"requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                       "values": [instance_type]},
                                      {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["kaito"]}],
                     "taints": [GPU_TAINT], "resources": {"requests": {"storage": "120Gi"}},
                     "nodeClassRef": {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "image-family-ubuntu"}}}


def gpu_pod_spec(gpus: int = 1, image: str = "serve:1", **extra: Any) -> dict:
    return {"containers": [{"name": "main", "image": image, "command": ["python", "-m", "serving"],
                            "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}}}],
            "tolerations": [GPU_TOLERATION], "nodeSelector": {"apps": "phi-3"}, **extra}


def statefulset(name: str, replicas: int = 1, **spec: Any) -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": gpu_pod_spec(**spec)}}}


def job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": dict(gpu_pod_spec(image="tune:1"), restartPolicy="Never")}}}


def test_nodeclaim_ready_makes_a_gpu_node(kube_crds, kube_client):
    custom = client.CustomObjectsApi(kube_client)
    custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", nodeclaim("ws-a"))
    claim = wait_for(lambda: (c := kube_crds.get("karpenter.sh/v1", "NodeClaim", "ws-a")) and
                     conditions(c).get("Ready", {}).get("status") == "True" and c)
    assert {t: conditions(claim)[t]["status"] for t in ("Launched", "Registered", "Initialized")} == \
        {"Launched": "True", "Registered": "True", "Initialized": "True"}
    assert claim["status"]["nodeName"] == "ws-a" and claim["status"]["providerID"].startswith("azure:///")
    node = client.CoreV1Api(kube_client).read_node("ws-a")
    assert node.status.capacity["nvidia.com/gpu"] == "2" and node.status.allocatable["nvidia.com/gpu"] == "2"
    assert node.metadata.labels["node.kubernetes.io/instance-type"] == "Standard_NC12s_v3"
    assert node.metadata.labels["nvidia.com/gpu.product"] == "Tesla-V100-PCIE-16GB"
    assert node.metadata.labels["apps"] == "phi-3" and node.metadata.labels["karpenter.sh/nodepool"] == "kaito"
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [("sku", "gpu", "NoSchedule")]
    # deleting the NodeClaim removes its Node (Karpenter's finalizer; here the ownerReference)
    custom.delete_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", "ws-a")
    assert kube_crds.get("v1", "Node", "ws-a") is None


def test_nodeclaim_failure_reports_the_reason_and_makes_no_node(kube_crds, kube_client):
    kube_crds.controllers.nodeclaim_outcome = ("failed", "InsufficientCapacity",
                                               "creating instance, insufficient regional vcpu quota left")
    client.CustomObjectsApi(kube_client).create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims",
                                                                      nodeclaim("ws-b"))
    claim = wait_for(lambda: (c := kube_crds.get("karpenter.sh/v1", "NodeClaim", "ws-b")) and
                     "Launched" in conditions(c) and c)
    launched = conditions(claim)["Launched"]
    assert launched["status"] == "False" and launched["reason"] == "InsufficientCapacity"
    assert "quota" in launched["message"]
    kube_crds.controllers.settle()  # two more passes over the failed claim: still no Node
    assert kube_crds.list("v1", "Node") == []


def test_nodeclaim_spec_is_immutable(kube_crds, kube_client):
    custom = client.CustomObjectsApi(kube_client)
    custom.create_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", nodeclaim("ws-c"))
    with pytest.raises(client.ApiException) as err:
        custom.patch_cluster_custom_object("karpenter.sh", "v1", "nodeclaims", "ws-c", {"spec": {"taints": []}})
    assert err.value.status == 422 and "immutable" in err.value.body


def test_job_succeeds_after_on_job_complete(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    seen: list[dict] = []

    def effect(job_obj: dict) -> None:
        assert not conditions(job_obj), "called before the Job is marked complete"
        seen.append(job_obj)
    fakekube.controllers.on_job_complete = effect
    batch = client.BatchV1Api(kube_client)
    batch.create_namespaced_job(NS, job("tune"))
    done = wait_for(lambda: (j := batch.read_namespaced_job("tune", NS)).status.succeeded and j)
    assert [s["metadata"]["name"] for s in seen] == ["tune"]
    assert {c.type: c.status for c in done.status.conditions}["Complete"] == "True"
    assert done.status.start_time and done.status.completion_time and not done.status.active
    pods = client.CoreV1Api(kube_client).list_namespaced_pod(NS, label_selector="job-name=tune").items
    assert len(pods) == 1 and pods[0].status.phase == "Succeeded" and pods[0].spec.node_name == "gpu-0"
    assert pods[0].metadata.labels["batch.kubernetes.io/job-name"] == "tune"
    assert pods[0].metadata.owner_references[0].kind == "Job" and pods[0].metadata.owner_references[0].controller

    def log() -> str:
        # client 36 turns a non-JSON str response into "b'...'": read the raw body, as kaiflow must
        resp = client.CoreV1Api(kube_client).read_namespaced_pod_log(pods[0].metadata.name, NS,
                                                                      _preload_content=False)
        return resp.data.decode()
    assert "python -m serving" in log()
    fakekube.pod_logs[pods[0].metadata.name] = "step 10 loss 1.2\n"
    assert log() == "step 10 loss 1.2\n"


def test_job_failure_sets_failed_condition(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    fakekube.controllers.job_outcomes["tune-bad"] = ("failed", "BackoffLimitExceeded",
                                                     "Job has reached the specified backoff limit")
    batch = client.BatchV1Api(kube_client)
    batch.create_namespaced_job(NS, job("tune-bad"))
    failed = wait_for(lambda: (j := batch.read_namespaced_job("tune-bad", NS)).status.failed and j)
    cond = {c.type: c for c in failed.status.conditions}["Failed"]
    assert cond.status == "True" and cond.reason == "BackoffLimitExceeded" and "backoff limit" in cond.message
    pod = client.CoreV1Api(kube_client).list_namespaced_pod(NS, label_selector="job-name=tune-bad").items[0]
    assert pod.status.phase == "Failed"


def _job_pod(core: Any, job_name: str, phase: str | None = None) -> Any:
    pods = core.list_namespaced_pod(NS, label_selector=f"job-name={job_name}").items
    return pods[0] if pods and (phase is None or pods[0].status.phase == phase) else None


def _job_with_init(name: str) -> dict:
    obj = job(name)
    pod = obj["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "pull-data", "image": "tune:1", "command": ["python", "-m", "infra.pod"]},
                             {"name": "tune", "image": "tune:1", "command": ["python", "-m", "tuning"]}]
    pod["containers"] = pod["containers"] + [{"name": "sidecar", "image": "tune:1"}]
    return obj


def test_on_job_complete_str_is_the_termination_message_and_init_containers_are_reported(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    pinned = "registry.example/adapter@sha256:" + "ab" * 32
    fakekube.controllers.on_job_complete = lambda job_obj: pinned
    client.BatchV1Api(kube_client).create_namespaced_job(NS, _job_with_init("tune-msg"))
    core = client.CoreV1Api(kube_client)
    running = wait_for(lambda: (p := _job_pod(core, "tune-msg")) and p.status.init_container_statuses and p)
    assert [(s.name, s.state.terminated.exit_code) for s in running.status.init_container_statuses] == \
        [("pull-data", 0), ("tune", 0)]
    done = wait_for(lambda: _job_pod(core, "tune-msg", "Succeeded"))
    assert {s.name: s.state.terminated.message for s in done.status.container_statuses} == \
        {"main": pinned, "sidecar": pinned}
    assert [s.state.terminated.message for s in done.status.init_container_statuses] == [None, None]


def test_on_job_complete_without_a_str_leaves_no_termination_message(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    fakekube.controllers.on_job_complete = lambda job_obj: None
    client.BatchV1Api(kube_client).create_namespaced_job(NS, job("tune-quiet"))
    core = client.CoreV1Api(kube_client)
    done = wait_for(lambda: _job_pod(core, "tune-quiet", "Succeeded"))
    (main,) = done.status.container_statuses
    assert main.state.terminated.exit_code == 0 and main.state.terminated.message is None


def test_failed_init_container_is_named_and_what_follows_never_starts(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    fakekube.controllers.job_outcomes["tune-oom"] = ("failed", "BackoffLimitExceeded", "CUDA out of memory", "tune")
    client.BatchV1Api(kube_client).create_namespaced_job(NS, _job_with_init("tune-oom"))
    core = client.CoreV1Api(kube_client)
    pod = wait_for(lambda: _job_pod(core, "tune-oom", "Failed"))
    inits = {s.name: s.state for s in pod.status.init_container_statuses}
    assert inits["pull-data"].terminated.exit_code == 0
    assert (inits["tune"].terminated.exit_code, inits["tune"].terminated.message) == (1, "CUDA out of memory")
    assert {s.name: s.state.waiting.reason for s in pod.status.container_statuses} == \
        {"main": "PodInitializing", "sidecar": "PodInitializing"}
    assert conditions(fakekube.get("v1", "Pod", pod.metadata.name, NS))["Initialized"]["status"] == "False"


def test_statefulset_becomes_ready_and_rolls_on_template_change(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, gpu_count=2, taints=[GPU_TAINT])
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_stateful_set(NS, statefulset("serve", replicas=2))
    ready = wait_for(lambda: (s := apps.read_namespaced_stateful_set("serve", NS)).status.ready_replicas == 2 and s)
    assert ready.status.available_replicas == 2 and ready.status.updated_replicas == 2
    assert ready.status.observed_generation == 1 and ready.status.current_revision.startswith("serve-")
    pods = client.CoreV1Api(kube_client).list_namespaced_pod(NS, label_selector="app=serve").items
    assert sorted(p.metadata.name for p in pods) == ["serve-0", "serve-1"]
    assert all(p.status.phase == "Running" for p in pods)
    first_revision = ready.status.current_revision
    apps.patch_namespaced_stateful_set("serve", NS, {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "serve:2"}]}}}})
    rolled = wait_for(lambda: (s := apps.read_namespaced_stateful_set("serve", NS)).status.observed_generation == 2
                      and s.status.ready_replicas == 2 and s.status.current_revision != first_revision and s)
    images = {p.spec.containers[0].image for p in
              client.CoreV1Api(kube_client).list_namespaced_pod(NS, label_selector="app=serve").items}
    assert images == {"serve:2"} and rolled.spec.template.spec.containers[0].command == ["python", "-m", "serving"]


def test_deployment_gets_available(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    apps = client.AppsV1Api(kube_client)
    body = statefulset("web")
    body["kind"] = "Deployment"
    body["spec"].pop("serviceName")
    apps.create_namespaced_deployment(NS, body)
    dep = wait_for(lambda: (d := apps.read_namespaced_deployment("web", NS)).status.available_replicas == 1 and d)
    assert {c.type: c.status for c in dep.status.conditions}["Available"] == "True"


@pytest.mark.parametrize("nodes, words", [
    ([], "0/0 nodes are available"),
    ([dict(labels={"apps": "other"})], "1 node(s) didn't match Pod's node affinity/selector"),
    ([dict(labels={"apps": "phi-3"}, taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])],
     "1 node(s) had untolerated taint {dedicated: x}"),
    ([dict(labels={"apps": "phi-3"}, gpu_count=0)], "1 Insufficient nvidia.com/gpu"),
])
def test_unschedulable_pods_say_why(fakekube, kube_client, nodes, words):
    for i, node in enumerate(nodes):
        fakekube.add_node(f"n{i}", **node)
    client.AppsV1Api(kube_client).create_namespaced_stateful_set(NS, statefulset("serve"))
    pod = wait_for(lambda: (p := fakekube.get("v1", "Pod", "serve-0", NS)) and "PodScheduled" in conditions(p) and p)
    cond = conditions(pod)["PodScheduled"]
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable" and words in cond["message"], cond
    # a node that fits arrives: the pod is scheduled and the StatefulSet gets ready
    fakekube.add_node("fits", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    wait_for(lambda: (fakekube.get("apps/v1", "StatefulSet", "serve", NS)["status"].get("readyReplicas") == 1))
    assert fakekube.get("v1", "Pod", "serve-0", NS)["spec"]["nodeName"] == "fits"


@pytest.mark.parametrize("failure, phase, reason", [
    ("ImagePullBackOff", "Pending", "ImagePullBackOff"),
    ("CrashLoopBackOff", "Running", "CrashLoopBackOff"),
])
def test_pod_failures_on_demand(fakekube, kube_client, failure, phase, reason):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    fakekube.controllers.pod_failure = failure
    client.AppsV1Api(kube_client).create_namespaced_stateful_set(NS, statefulset("serve"))
    pod = wait_for(lambda: fakekube.get("v1", "Pod", "serve-0", NS) and
                   (p := client.CoreV1Api(kube_client).read_namespaced_pod("serve-0", NS)).status.container_statuses
                   and p)
    state = pod.status.container_statuses[0].state
    assert pod.status.phase == phase and state.waiting.reason == reason and not pod.status.container_statuses[0].ready
    assert not (fakekube.get("apps/v1", "StatefulSet", "serve", NS)["status"].get("readyReplicas"))
    fakekube.controllers.pod_failure = None
    wait_for(lambda: fakekube.get("apps/v1", "StatefulSet", "serve", NS)["status"].get("readyReplicas") == 1)


def test_forced_unschedulable(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    fakekube.controllers.pod_failure = "Unschedulable"
    client.AppsV1Api(kube_client).create_namespaced_stateful_set(NS, statefulset("serve"))
    pod = wait_for(lambda: (p := fakekube.get("v1", "Pod", "serve-0", NS)) and "PodScheduled" in conditions(p) and p)
    assert conditions(pod)["PodScheduled"]["reason"] == "Unschedulable" and not pod["spec"].get("nodeName")


@pytest.mark.parametrize("policy, pods_left", [("Background", 0), ("Foreground", 0), ("Orphan", 2)])
def test_delete_propagation_collects_dependents(fakekube, kube_client, policy, pods_left):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, gpu_count=2, taints=[GPU_TAINT])
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_stateful_set(NS, statefulset("serve", replicas=2))
    wait_for(lambda: apps.read_namespaced_stateful_set("serve", NS).status.ready_replicas == 2)
    apps.delete_namespaced_stateful_set("serve", NS, propagation_policy=policy)
    assert fakekube.get("apps/v1", "StatefulSet", "serve", NS) is None
    pods = client.CoreV1Api(kube_client).list_namespaced_pod(NS, label_selector="app=serve").items
    assert len(pods) == pods_left
    assert all(not p.metadata.owner_references for p in pods)


def test_job_delete_defaults_to_orphan_like_the_real_server(fakekube, kube_client):
    fakekube.add_node("gpu-0", labels={"apps": "phi-3"}, taints=[GPU_TAINT])
    batch = client.BatchV1Api(kube_client)
    batch.create_namespaced_job(NS, job("tune"))
    wait_for(lambda: batch.read_namespaced_job("tune", NS).status.succeeded)
    batch.delete_namespaced_job("tune", NS)
    assert len(fakekube.list("v1", "Pod", NS, labels={"job-name": "tune"})) == 1
