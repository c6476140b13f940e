"""The parts of the fake only kubectl reads, checked without kubectl (tests/kubectl drives the real one):
Table negotiation, ages, OpenAPI v3 documents, the scale subresource, finalizers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.support.fakekube import tables

pytestmark = pytest.mark.fake
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


def _get(kube, path: str, accept: str = "application/json") -> dict:
    request = urllib.request.Request(kube.url + path, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("accept,wanted", [(TABLE, True), ("application/json", False), (None, False),
                                           ("application/json, application/json;as=Table;g=meta.k8s.io;v=v1", False),
                                           ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", True)])
def test_table_only_when_asked_first(accept, wanted):
    assert tables.wants_table(accept) is wanted


@pytest.mark.parametrize("seconds,text", [(-5, "<invalid>"), (5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"),
                                          (4 * 3600 + 60, "4h1m"), (30 * 3600, "30h"), (3 * 86400 + 3600, "3d1h"),
                                          (20 * 86400, "20d"), (3 * 365 * 86400, "3y")])
def test_ages_read_like_kubectls(seconds, text):
    assert tables.human_duration(seconds) == text


def test_tables_openapi_and_scale_over_http(kube_crds):
    kube = kube_crds
    kube.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ws"},
                 "spec": {"ports": [{"name": "http", "port": 80}, {"name": "torch", "port": 29500}]}})
    table = _get(kube, "/api/v1/namespaces/default/services", TABLE)
    assert table["kind"] == "Table" and [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name", "Type", "Cluster-IP", "External-IP", "Port(s)"]
    assert table["rows"][0]["cells"][4] == "80/TCP,29500/TCP"
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert _get(kube, "/api/v1/namespaces/default/services")["kind"] == "ServiceList"

    root = _get(kube, "/openapi/v3")["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/kaito.sh/v1beta1"} <= set(root)
    doc = _get(kube, root["apis/kaito.sh/v1beta1"]["serverRelativeURL"])
    patch = doc["paths"]["/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "kaito.sh", "version": "v1beta1", "kind": "Workspace"}
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    assert "sh.kaito.v1beta1.Workspace" in doc["components"]["schemas"]
    core = _get(kube, root["api/v1"]["serverRelativeURL"])
    ports = core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert ports["x-kubernetes-patch-merge-key"] == "name"

    kube.create({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "ws"},
                 "spec": {"replicas": 2, "serviceName": "ws", "selector": {"matchLabels": {"app": "ws"}},
                          "template": {"metadata": {"labels": {"app": "ws"}},
                                       "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}})
    scale = _get(kube, "/apis/apps/v1/namespaces/default/statefulsets/ws/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "app=ws"


def test_finalizers_hold_a_deleted_object_until_the_last_goes(kube_crds):
    kube = kube_crds
    rtype = kube.store.find_type("v1", "ConfigMap")
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["a", "b"]}})
    deleted = kube.store.delete(rtype, "default", "held")
    assert deleted["metadata"]["deletionTimestamp"]
    obj = kube.get("v1", "ConfigMap", "held", "default")
    obj["metadata"]["finalizers"] = ["b"]
    obj["metadata"].pop("deletionTimestamp")           # a client cannot clear it
    kube.store.replace(rtype, "default", "held", obj)
    assert kube.get("v1", "ConfigMap", "held", "default")["metadata"]["deletionTimestamp"] == deleted["metadata"][
        "deletionTimestamp"]
    obj = kube.get("v1", "ConfigMap", "held", "default")
    obj["metadata"]["finalizers"] = []
    kube.store.replace(rtype, "default", "held", obj)
    assert kube.get("v1", "ConfigMap", "held", "default") is None
    assert [e[1] for e in kube.store.events if e[2] == ("", "configmaps")][-1] == "DELETED"


def test_a_bug_in_the_new_paths_is_recorded_as_the_fakes_own_error(kube_crds, monkeypatch):
    kube = kube_crds
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}})

    def broken(obj):
        raise KeyError("a bug in a printer")
    columns, _ = tables.BUILTIN[("", "ConfigMap")]
    monkeypatch.setitem(tables.BUILTIN, ("", "ConfigMap"), (columns, broken))
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(kube, "/api/v1/namespaces/default/configmaps", TABLE)
    assert err.value.code == 500
    assert any("a bug in a printer" in e for e in kube.internal_errors())
    kube.clear_internal_errors()          # broken on purpose: the autouse check must not fail this test
