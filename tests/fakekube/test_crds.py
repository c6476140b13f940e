"""The Workspace and NodeClaim CRDs installed through the API, custom resources validated against them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client, dynamic

from tests.support.fakekube import fixtures

pytestmark = pytest.mark.fake  # these tests check the fake API server itself, not kaiflow

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "seed").glob("*.yaml")) + sorted((REPO / "examples" / "kaito").rglob("*.yaml"))
NS = "default"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _dyn(kube_client, tmp_path: Path) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(kube_client, cache_file=str(tmp_path / "discovery.json"))


def _install(dyn: dynamic.DynamicClient) -> None:
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    for path in sorted(fixtures.CRD_DIR.glob("*.yaml")):
        for doc in _docs(path):
            crds.create(body=doc)


def test_custom_kind_is_404_until_its_crd_exists(kube_client, tmp_path):
    custom = client.CustomObjectsApi(kube_client)
    with pytest.raises(client.ApiException) as err:
        custom.list_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces")
    assert err.value.status == 404
    _install(_dyn(kube_client, tmp_path))
    assert custom.list_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces")["items"] == []
    crd = client.ApiextensionsV1Api(kube_client).read_custom_resource_definition("workspaces.kaito.sh")
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"


def test_every_example_creates_through_the_api(kube_client, tmp_path):
    dyn = _dyn(kube_client, tmp_path)
    _install(dyn)
    created = 0
    for i, path in enumerate(EXAMPLES):
        ns = f"example-{i}"
        client.CoreV1Api(kube_client).create_namespace({"metadata": {"name": ns}})
        for doc in _docs(path):
            doc["metadata"].pop("namespace", None)   # a few examples say "default": one namespace per file here
            resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            obj = resource.create(body=doc, namespace=ns)
            assert obj.metadata.name == doc["metadata"]["name"], path
            created += doc["kind"] == "Workspace"
    assert created >= 40


def test_workspace_defaults_and_both_versions(kube_client, tmp_path):
    _install(_dyn(kube_client, tmp_path))
    custom = client.CustomObjectsApi(kube_client)
    body = _docs(REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml")[0]
    body["resource"].pop("instanceType", None)
    made = custom.create_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces", body)
    assert made["resource"]["count"] == 1 and made["resource"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert made["inference"]["preset"]["accessMode"] == "public"
    read_beta = custom.get_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", body["metadata"]["name"])
    assert read_beta["apiVersion"] == "kaito.sh/v1beta1" and read_beta["metadata"]["uid"] == made["metadata"]["uid"]


@pytest.mark.parametrize("mutate, field", [
    (lambda w: w["resource"].update(gpus=2), "resource.gpus"),
    (lambda w: w.update(spec={"resource": {}}), "spec"),
    (lambda w: w["resource"].update(count="two"), "resource.count"),
    (lambda w: w["resource"].pop("labelSelector"), "resource"),
    (lambda w: w["inference"]["preset"].update(accessMode="secret"), "inference.preset.accessMode"),
])
def test_broken_workspace_is_422(kube_client, tmp_path, mutate, field):
    _install(_dyn(kube_client, tmp_path))
    body = copy.deepcopy(_docs(REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml")[0])
    mutate(body)
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(kube_client).create_namespaced_custom_object("kaito.sh", "v1alpha1", NS,
                                                                             "workspaces", body)
    status = json.loads(err.value.body)
    assert err.value.status == 422 and status["reason"] == "Invalid"
    assert field in [c["field"] for c in status["details"]["causes"]], status


def test_status_subresource_only_touches_status(kube_client, tmp_path):
    _install(_dyn(kube_client, tmp_path))
    custom = client.CustomObjectsApi(kube_client)
    body = _docs(REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml")[0]
    name = body["metadata"]["name"]
    made = custom.create_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces", body)
    cond = {"type": "ResourceReady", "status": "True", "reason": "NodesReady", "message": "",
            "lastTransitionTime": "2025-01-01T00:00:00Z"}
    patched = custom.patch_namespaced_custom_object_status(
        "kaito.sh", "v1alpha1", NS, "workspaces", name,
        {"status": {"conditions": [cond]}, "resource": {"instanceType": "Standard_NC12s_v3"}})
    assert patched["status"]["conditions"][0]["reason"] == "NodesReady"
    assert patched["resource"]["instanceType"] == made["resource"]["instanceType"]
    assert patched["metadata"]["generation"] == made["metadata"]["generation"]
    # and writes of the main resource leave status alone
    again = custom.patch_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces", name,
                                                  {"status": {"conditions": []}, "resource": {"count": 1}})
    assert again["status"]["conditions"][0]["type"] == "ResourceReady"
