"""The controller's pure parts: Kaito's update rules (api/v1alpha1/workspace_validation.go,
validateUpdate) and the flow parameters made from a Workspace resource as the API server returns it."""

from __future__ import annotations

import copy

import pytest

from flows import controller
from workspace.errors import SpecError

SEED = {"apiVersion": "kaito.sh/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "workspace-phi-3-mini", "namespace": "default", "uid": "u-1", "generation": 3,
                     "resourceVersion": "42", "creationTimestamp": "2026-12-01T00:00:00Z", "finalizers": ["kaiflow.io/teardown"],
                     "managedFields": [{"manager": "kubectl"}],
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                                     "kaiflow.io/accepted-spec": "{}", "kaito.sh/runtime": "transformers"}},
        "resource": {"instanceType": "Standard_NC6s_v3", "count": 1, "labelSelector": {"matchLabels": {"apps": "phi-3"}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        "status": {"conditions": [], "observedGeneration": 2}}


def _changed(path: str, value) -> dict:
    obj = copy.deepcopy(SEED)
    *parents, last = path.split(".")
    node = obj
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return obj


@pytest.mark.parametrize("path,value,line", [
    ("resource.instanceType", "Standard_NC24ads_A100_v4",
     'resource.instanceType: field is immutable (was "Standard_NC6s_v3", now "Standard_NC24ads_A100_v4")'),
    ("resource.count", 2, "resource.count: field is immutable (was 1, now 2)"),
    ("resource.labelSelector", {"matchLabels": {"apps": "other"}}, "resource.labelSelector: field is immutable"),
    ("inference.preset", {"name": "phi-3-mini-128k-instruct"}, "inference.preset: field is immutable"),
])
def test_a_field_kaito_forbids_changing_is_refused_naming_it(path, value, line):
    refused = controller.refused_changes(controller.immutable_view(SEED), controller.immutable_view(_changed(path, value)))
    assert len(refused) == 1 and refused[0].startswith(line), refused


def test_turning_inference_into_tuning_is_refused_both_ways():
    tuning = {k: v for k, v in SEED.items() if k != "inference"}
    tuning["tuning"] = {"preset": {"name": "phi-3-mini-4k-instruct"}, "method": "qlora", "input": {"urls": ["https://x/y"]}}
    refused = controller.refused_changes(controller.immutable_view(SEED), controller.immutable_view(tuning))
    assert [r.split(":")[0] for r in refused] == ["inference", "tuning"]


def test_changes_kaito_allows_are_not_refused():
    for path, value in (("inference.config", "my-params"), ("inference.adapters", [{"source": {"name": "a", "image": "r/a:1"}}]),
                        ("resource.labelSelector", {"matchExpressions": [{"key": "apps", "operator": "In", "values": ["phi-3"]}]})):
        assert controller.refused_changes(controller.immutable_view(SEED), controller.immutable_view(_changed(path, value))) == []


def test_parameters_keep_the_users_fields_and_drop_what_the_server_and_kubectl_added():
    params = controller.workspace_parameters(SEED)
    assert params == {"apiVersion": "kaito.sh/v1alpha1", "kind": "Workspace",
                      "metadata": {"name": "workspace-phi-3-mini", "namespace": "default",
                                   "annotations": {"kaito.sh/runtime": "transformers"}},
                      "resource": {"instanceType": "Standard_NC6s_v3", "count": 1,
                                   "labelSelector": {"matchLabels": {"apps": "phi-3"}}},
                      "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}}


def test_a_resource_that_is_no_valid_workspace_is_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"workspace default/workspace-phi-3-mini: inference: unknown field 'presetName'; did you mean 'preset'"):
        controller.workspace_parameters(_changed("inference.presetName", "phi-3"))
