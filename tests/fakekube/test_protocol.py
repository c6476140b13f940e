"""Patches, server-side apply, watches, faults, dry runs and printer columns, through the real client."""

from __future__ import annotations

import json
import threading
import time

import kubernetes_validate
import pytest
import urllib3
import yaml
from kubernetes import client, config, watch

from tests.support.fakekube import fixtures, printer, validation

pytestmark = pytest.mark.fake  # these tests check the fake API server itself, not kaiflow

NS = "default"
FIELD_MANAGER = "kaiflow"


def _sts(image: str = "serve:1", env: list | None = None) -> dict:
    container = {"name": "main", "image": image, "ports": [{"containerPort": 5000, "name": "http"}]}
    if env is not None:
        container["env"] = env
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "serve", "labels": {"a": "1"}},
            "spec": {"replicas": 1, "serviceName": "serve", "selector": {"matchLabels": {"app": "serve"}},
                     "template": {"metadata": {"labels": {"app": "serve"}}, "spec": {"containers": [container]}}}}


def _apply(api: client.ApiClient, body: dict, manager: str = FIELD_MANAGER, force: bool = False) -> dict:
    apps = client.AppsV1Api(api)
    kwargs = {"field_manager": manager, "_content_type": "application/apply-patch+yaml"}
    if force:
        kwargs["force"] = True
    return apps.patch_namespaced_stateful_set(body["metadata"]["name"], NS, body, **kwargs).to_dict()


def test_server_side_apply_creates_then_is_idempotent(kube_client, fakekube):
    first = _apply(kube_client, _sts(env=[{"name": "A", "value": "1"}]))
    create = [r for r in fakekube.requests if r.method == "PATCH"][-1]
    assert create.content_type == "application/apply-patch+yaml" and create.query["fieldManager"] == FIELD_MANAGER
    again = _apply(kube_client, _sts(env=[{"name": "A", "value": "1"}]))
    assert again["metadata"]["resource_version"] == first["metadata"]["resource_version"]
    assert again["metadata"]["generation"] == 1
    changed = _apply(kube_client, _sts(image="serve:2"))   # env no longer applied: removed
    assert int(changed["metadata"]["resource_version"]) > int(first["metadata"]["resource_version"])
    assert changed["metadata"]["generation"] == 2
    container = changed["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "serve:2" and container["env"] is None


def test_apply_needs_a_field_manager_and_conflicts_between_managers(kube_client, fakekube):
    apps = client.AppsV1Api(kube_client)
    with pytest.raises(client.ApiException) as err:
        apps.patch_namespaced_stateful_set("serve", NS, _sts(), _content_type="application/apply-patch+yaml")
    assert err.value.status == 422 and "fieldManager" in err.value.body
    _apply(kube_client, _sts())
    with pytest.raises(client.ApiException) as err:
        _apply(kube_client, _sts(image="other:1"), manager="someone-else")
    assert err.value.status == 409 and "someone-else" not in json.loads(err.value.body)["message"]
    assert 'conflict with "kaiflow"' in json.loads(err.value.body)["message"]
    forced = _apply(kube_client, _sts(image="other:1"), manager="someone-else", force=True)
    assert forced["spec"]["template"]["spec"]["containers"][0]["image"] == "other:1"


def test_merge_strategic_and_json_patches(kube_client):
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_stateful_set(NS, _sts(env=[{"name": "A", "value": "1"}]))
    # strategic (the typed client's default for a dict): containers and env merged by name
    patched = apps.patch_namespaced_stateful_set("serve", NS, {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "env": [{"name": "B", "value": "2"}]}]}}}})
    env = patched.spec.template.spec.containers[0].env
    assert [(e.name, e.value) for e in env] == [("A", "1"), ("B", "2")]
    assert patched.spec.template.spec.containers[0].image == "serve:1"
    # merge patch: lists replaced, null deletes
    patched = apps.patch_namespaced_stateful_set("serve", NS, {"metadata": {"labels": {"a": None, "b": "2"}}},
                                                 _content_type="application/merge-patch+json")
    assert patched.metadata.labels == {"b": "2"}
    # json patch (a list body)
    patched = apps.patch_namespaced_stateful_set("serve", NS, [
        {"op": "replace", "path": "/spec/replicas", "value": 3}])
    assert patched.spec.replicas == 3
    with pytest.raises(client.ApiException) as err:
        apps.patch_namespaced_stateful_set("serve", NS, [{"op": "remove", "path": "/spec/nothing"}])
    assert err.value.status == 422


def test_patch_that_breaks_the_schema_is_422_and_changes_nothing(kube_client):
    apps = client.AppsV1Api(kube_client)
    made = apps.create_namespaced_stateful_set(NS, _sts())
    with pytest.raises(client.ApiException) as err:
        apps.patch_namespaced_stateful_set("serve", NS, {"spec": {"replicas": "three"}})
    assert err.value.status == 422 and "spec.replicas" in err.value.body
    assert apps.read_namespaced_stateful_set("serve", NS).metadata.resource_version == made.metadata.resource_version


def test_watch_streams_added_modified_deleted(kube_client):
    core = client.CoreV1Api(kube_client)
    start_rv = core.list_namespaced_config_map(NS).metadata.resource_version

    def writes() -> None:
        time.sleep(0.2)
        core.create_namespaced_config_map(NS, {"metadata": {"name": "w", "labels": {"watch": "me"}}})
        core.create_namespaced_config_map(NS, {"metadata": {"name": "other"}})
        core.patch_namespaced_config_map("w", NS, {"data": {"k": "v"}})
        core.delete_namespaced_config_map("w", NS)
    thread = threading.Thread(target=writes)
    thread.start()
    events = []
    started = time.monotonic()
    for event in watch.Watch().stream(core.list_namespaced_config_map, NS, resource_version=start_rv,
                                      label_selector="watch=me", timeout_seconds=2):
        events.append((event["type"], event["object"].metadata.name, event["object"].data))
    thread.join()
    assert [(t, n) for t, n, _ in events] == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    assert events[1][2] == {"k": "v"}
    # ends at timeoutSeconds, not before; the upper bound only catches a stream that never ends
    assert 1.8 < time.monotonic() - started < 30, "the stream ends at timeoutSeconds"


def test_watch_without_resource_version_lists_first_and_too_old_is_410(kube_client, fakekube, monkeypatch):
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "there"}})
    names = [e["object"].metadata.name for e in watch.Watch().stream(core.list_namespaced_config_map, NS,
                                                                     timeout_seconds=1)]
    assert names == ["there"]
    monkeypatch.setattr(fakekube.store, "events", fakekube.store.events[-1:])   # as if the log had been compacted
    resp = core.list_namespaced_config_map(NS, watch=True, resource_version="1", timeout_seconds=1,
                                           _preload_content=False)
    event = json.loads(resp.data.decode().splitlines()[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_500_then_success_with_the_clients_own_retries(fakekube, kubeconfig):
    cfg = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=cfg)
    cfg.retries = urllib3.Retry(total=3, status_forcelist=[500], allowed_methods=None, backoff_factor=0,
                                raise_on_status=False)
    api = client.ApiClient(cfg)
    fakekube.fail_next("POST", r"/configmaps$", status=500, times=2)
    made = client.CoreV1Api(api).create_namespaced_config_map(NS, {"metadata": {"name": "retried"}})
    assert made.metadata.name == "retried"
    posts = [r for r in fakekube.requests if r.method == "POST"]
    assert len(posts) == 3 and fakekube.faults[0].times == 0


def test_injected_errors_are_status_bodies_and_delays_time_out(fakekube, kube_client):
    core = client.CoreV1Api(kube_client)
    fakekube.fail_next("GET", r"/namespaces/default/pods$", status=503, reason="ServiceUnavailable")
    with pytest.raises(client.ApiException) as err:
        core.list_namespaced_pod(NS)
    assert err.value.status == 503 and json.loads(err.value.body)["reason"] == "ServiceUnavailable"
    assert core.list_namespaced_pod(NS).items == []      # only the next one failed
    # slow, then served: urllib3 retries an idempotent GET after a read timeout by itself ...
    fakekube.fail_next("GET", r"/pods$", status=0, delay_s=0.6)
    before = len(fakekube.requests)
    assert core.list_namespaced_pod(NS, _request_timeout=0.3).items == []
    assert len(fakekube.requests) - before == 2
    # ... but not a POST: the client times out although the server went on and created the object
    fakekube.fail_next("POST", r"/configmaps$", status=0, delay_s=0.6)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.create_namespaced_config_map(NS, {"metadata": {"name": "slow"}}, _request_timeout=0.3)
    deadline = time.monotonic() + 30  # the server serves it after its delay; the bound only catches a hang
    while fakekube.get("v1", "ConfigMap", "slow", NS) is None:
        assert time.monotonic() < deadline, "the delayed POST was never served"
        time.sleep(0.05)


def test_conflict_next_hits_the_next_write(fakekube, kube_client):
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}})
    fakekube.conflict_next("ConfigMap", "c")
    with pytest.raises(client.ApiException) as err:
        core.patch_namespaced_config_map("c", NS, {"data": {"a": "1"}})
    assert err.value.status == 409
    assert core.patch_namespaced_config_map("c", NS, {"data": {"a": "1"}}).data == {"a": "1"}


def test_dry_run_validates_without_storing(fakekube, kube_client):
    core = client.CoreV1Api(kube_client)
    made = core.create_namespaced_config_map(NS, {"metadata": {"name": "dry"}}, dry_run="All")
    assert made.metadata.name == "dry" and fakekube.get("v1", "ConfigMap", "dry", NS) is None


def test_cached_validation_agrees_with_kubernetes_validate():
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}
    bad = json.loads(json.dumps(pod))
    bad["spec"]["containers"][0]["gpu"] = 1
    for version in ("1.30", "1.34"):
        kubernetes_validate.validate(pod, version, strict=True)
        validation.validate_builtin(pod, (version,))
        with pytest.raises(kubernetes_validate.ValidationError) as theirs:
            kubernetes_validate.validate(bad, version, strict=True)
        with pytest.raises(validation.Invalid) as ours:
            validation.validate_builtin(bad, (version,))
        assert theirs.value.message in str(ours.value)


def test_workspace_printer_columns_resolve(kube_crds, kube_client):
    crd = yaml.safe_load((fixtures.CRD_DIR / "workspace.kaito.sh.yaml").read_text())
    body = yaml.safe_load((fixtures.CRD_DIR.parents[1] / "examples" / "seed" / "workspace-phi-3-mini.yaml").read_text())
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces", body)
    conds = [{"type": t, "status": s, "reason": "Test", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}
             for t, s in (("ResourceReady", "True"), ("InferenceReady", "False"), ("WorkspaceReady", "False"))]
    ws = custom.patch_namespaced_custom_object_status("kaito.sh", "v1alpha1", NS, "workspaces",
                                                      body["metadata"]["name"], {"status": {"conditions": conds}})
    for version in ("v1alpha1", "v1beta1"):
        row = printer.columns(crd, ws, version)
        assert row == {"NAME": "workspace-phi-3-mini", "Instance": "Standard_NC6s_v3", "ResourceReady": "True",
                       "InferenceReady": "False", "WorkspaceReady": "False", "Age": ws["metadata"]["creationTimestamp"]}
    claim_crd = yaml.safe_load((fixtures.CRD_DIR / "nodeclaims.karpenter.sh.yaml").read_text())
    claim = {"apiVersion": "karpenter.sh/v1", "metadata": {"name": "n", "labels": {
        "node.kubernetes.io/instance-type": "Standard_NC6s_v3"}}, "status": {"nodeName": "n", "conditions": [
            {"type": "Ready", "status": "True"}]}}
    row = printer.columns(claim_crd, claim)
    assert row["Type"] == "Standard_NC6s_v3" and row["Ready"] == "True" and row["Node"] == "n"
