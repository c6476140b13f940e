"""The fake API server through the real ``kubernetes`` client: CRUD, conflicts, validation, discovery."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, config, dynamic

pytestmark = pytest.mark.fake  # these tests check the fake API server itself, not kaiflow

NS = "default"


def _pod(name: str, **container: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "demo"}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36", **container}]}}


def _status(err: client.ApiException) -> dict:
    return json.loads(err.body)


def test_kubeconfig_loads_with_the_real_loader(fakekube, kubeconfig):
    api = config.new_client_from_config(str(kubeconfig))
    assert api.configuration.host == fakekube.url
    version = client.VersionApi(api).get_code()
    assert version.major == "1" and version.minor == "34"
    contexts, active = config.list_kube_config_contexts(str(kubeconfig))
    assert active["context"]["namespace"] == "default"


def test_create_get_list_delete_pod(kube_client, fakekube):
    core = client.CoreV1Api(kube_client)
    created = core.create_namespaced_pod(NS, _pod("web"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) > 0 and created.metadata.generation == 1
    got = core.read_namespaced_pod("web", NS)
    assert got.spec.containers[0].image == "busybox:1.36"
    assert got.spec.restart_policy == "Always"
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["web"]
    deleted = core.delete_namespaced_pod("web", NS)
    assert deleted.metadata.name == "web"
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_pod("web", NS)
    assert err.value.status == 404
    body = _status(err.value)
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["message"] == 'pods "web" not found'


def test_create_twice_is_409_already_exists(kube_client):
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"a": "2"}})
    assert err.value.status == 409 and _status(err.value)["reason"] == "AlreadyExists"


def test_generate_name_and_missing_namespace(kube_client):
    core = client.CoreV1Api(kube_client)
    made = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "tune-"}})
    assert made.metadata.name.startswith("tune-") and len(made.metadata.name) > len("tune-")
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert err.value.status == 404 and "nowhere" in _status(err.value)["message"]


def test_replace_with_stale_resource_version_is_409(kube_client):
    core = client.CoreV1Api(kube_client)
    first = core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    first.data = {"a": "2"}
    second = core.replace_namespaced_config_map("cfg", NS, first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"a": "3"}   # still carries the old resourceVersion
    with pytest.raises(client.ApiException) as err:
        core.replace_namespaced_config_map("cfg", NS, first)
    assert err.value.status == 409 and _status(err.value)["reason"] == "Conflict"
    assert "the object has been modified" in _status(err.value)["message"]
    assert core.read_namespaced_config_map("cfg", NS).data == {"a": "2"}


@pytest.mark.parametrize("container, field, words", [
    ({"imagePullPolicy": "Always", "gpu": 1}, "spec.containers[0]", "'gpu' was unexpected"),
    ({"ports": [{"containerPort": "eighty"}]}, "spec.containers[0].ports[0].containerPort", "is not of type"),
])
def test_bad_pod_is_422_invalid_with_causes(kube_client, fakekube, container, field, words):
    core = client.CoreV1Api(kube_client)
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_pod(NS, _pod("bad", **container))
    assert err.value.status == 422
    body = _status(err.value)
    assert body["reason"] == "Invalid" and words in body["message"] and "1.30" in body["message"]
    assert body["details"]["causes"][0]["field"] == field
    assert fakekube.get("v1", "Pod", "bad", NS) is None


def test_every_version_is_checked(fakekube):
    """A field that exists in 1.34 but not in 1.30 (pod-level resources) fails on the 1.30 schema."""
    pod = _pod("new-field")
    pod["spec"]["resources"] = {"limits": {"cpu": "1"}}
    from tests.support.fakekube import store
    with pytest.raises(store.ApiError) as err:
        fakekube.create(pod)
    assert err.value.code == 422 and "1.30" in err.value.message


def test_job_needs_never_or_on_failure_and_template_is_immutable(kube_client):
    batch = client.BatchV1Api(kube_client)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "tune"},
           "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "tune:1"}]}}}}
    with pytest.raises(client.ApiException) as err:
        batch.create_namespaced_job(NS, job)
    assert err.value.status == 422 and "restartPolicy" in _status(err.value)["message"]
    job["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    made = batch.create_namespaced_job(NS, job)
    assert made.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": made.metadata.uid}
    assert made.spec.template.metadata.labels["job-name"] == "tune"
    with pytest.raises(client.ApiException) as err:
        batch.patch_namespaced_job("tune", NS, {"spec": {"template": {"spec": {"containers": [
            {"name": "t", "image": "tune:2"}]}}}})
    assert err.value.status == 422 and "immutable" in _status(err.value)["message"]


def test_label_and_field_selectors(kube_client):
    core = client.CoreV1Api(kube_client)
    for name, labels in {"a": {"tier": "gpu", "ws": "one"}, "b": {"tier": "cpu", "ws": "one"},
                         "c": {"tier": "gpu"}}.items():
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})

    def names(**kw: str) -> list[str]:
        return [c.metadata.name for c in core.list_namespaced_config_map(NS, **kw).items]
    assert names(label_selector="tier=gpu") == ["a", "c"]
    assert names(label_selector="tier!=gpu") == ["b"]
    assert names(label_selector="tier in (cpu, tpu)") == ["b"]
    assert names(label_selector="tier notin (cpu),ws") == ["a"]
    assert names(label_selector="!ws") == ["c"]
    assert names(label_selector="ws,tier==gpu") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]


def test_discovery_serves_the_dynamic_client(kube_client, tmp_path):
    dyn = dynamic.DynamicClient(kube_client, cache_file=str(tmp_path / "discovery.json"))
    for api_version, kind in [("v1", "Pod"), ("apps/v1", "StatefulSet"), ("batch/v1", "Job"),
                              ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("v1", "Secret"),
                              ("apiextensions.k8s.io/v1", "CustomResourceDefinition")]:
        assert dyn.resources.get(api_version=api_version, kind=kind).kind == kind
    services = dyn.resources.get(api_version="v1", kind="Service")
    svc = services.create(namespace=NS, body={"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
                                              "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}})
    assert svc.spec.clusterIP and svc.spec.ports[0].targetPort == 80
    assert [i.metadata.name for i in services.get(namespace=NS).items] == ["svc"]


def test_secret_string_data_is_folded_into_data(kube_client):
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_secret(NS, {"metadata": {"name": "push"}, "type": "kubernetes.io/dockerconfigjson",
                                       "stringData": {".dockerconfigjson": "{}"}})
    secret = core.read_namespaced_secret("push", NS)
    assert secret.data == {".dockerconfigjson": "e30="} and secret.string_data is None


def test_requests_are_recorded(kube_client, fakekube):
    client.CoreV1Api(kube_client).create_namespaced_config_map(NS, {"metadata": {"name": "r"}})
    post = [r for r in fakekube.requests if r.method == "POST"][-1]
    assert post.path == "/api/v1/namespaces/default/configmaps"
    assert post.content_type == "application/json" and post.body["metadata"]["name"] == "r"


def test_deleting_a_namespace_deletes_what_is_in_it(kube_client, fakekube):
    core = client.CoreV1Api(kube_client)
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_config_map("team", {"metadata": {"name": "cfg"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}})
    core.delete_namespace("team")
    assert fakekube.get("v1", "ConfigMap", "cfg", "team") is None
    assert fakekube.get("v1", "ConfigMap", "cfg", NS) is not None


def test_dynamic_client_watch_and_apply(kube_client, tmp_path):
    dyn = dynamic.DynamicClient(kube_client, cache_file=str(tmp_path / "discovery.json"))
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "namespace": NS},
            "data": {"a": "1"}}
    first = cms.server_side_apply(body=body, namespace=NS, field_manager="kaiflow")
    again = cms.server_side_apply(body=body, namespace=NS, field_manager="kaiflow")
    assert first.metadata.resourceVersion == again.metadata.resourceVersion
    events = [(e["type"], e["object"].metadata.name) for e in
              dyn.watch(cms, namespace=NS, timeout=1, resource_version="0")]
    assert events == [("ADDED", "applied")]
