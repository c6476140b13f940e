"""The KEDA example scales the InferenceSet example on a metric the server exposes; it validates
strictly against the ScaledObject schema and applies to the fake API server with the real kubectl."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from serving import metrics
from tests.support import kubebins
from tests.support.fakekube import validation

REPO = Path(__file__).resolve().parents[2]
KEDA = REPO / "deployments" / "keda"
EXAMPLE = KEDA / "scaledobject-inferenceset.yaml"
INFERENCESET = REPO / "examples" / "inferenceset" / "phi-3-mini-replicas.yaml"


def _schema() -> dict:
    crd = next(d for d in yaml.safe_load_all((KEDA / "scaledobjects.keda.sh.yaml").read_text()) if d)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]


def _validate(obj: dict) -> None:
    schema = _schema()
    validation.validate_custom(validation.apply_defaults(copy.deepcopy(obj), schema), schema)


def test_scaledobject_example_validates_strictly_and_targets_the_inferenceset_example() -> None:
    obj = yaml.safe_load(EXAMPLE.read_text())
    _validate(obj)
    iset = yaml.safe_load(INFERENCESET.read_text())
    ref = obj["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (iset["apiVersion"], "InferenceSet", iset["metadata"]["name"])
    crd = next(d for d in yaml.safe_load_all((REPO / "deployments" / "crds" / "inferenceset.kaito.sh.yaml").read_text()) if d)
    served = next(v for v in crd["spec"]["versions"] if v["name"] == ref["apiVersion"].split("/")[1])
    assert served["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas", "KEDA scales through /scale"
    query = obj["spec"]["triggers"][0]["metadata"]["query"]
    metric = re.search(r"(vllm:[a-z_]+)\{model_name=\"([^\"]+)\"", query)
    assert metric and metric.group(2) == iset["metadata"]["name"], "replicas serve under the set's name"
    assert metric.group(1) in metrics.__doc__, "a metric the server exposes on both engines"


@pytest.mark.parametrize("path, bad", [(("spec",), {"maxReplicas": 3}), (("spec", "triggers", 0), {"metricTyp": "Value"})])
def test_the_schema_refuses_a_misspelt_field(path: tuple, bad: dict) -> None:
    obj = yaml.safe_load(EXAMPLE.read_text())
    target = obj
    for key in path:
        target = target[key]
    target.update(bad)
    with pytest.raises(validation.Invalid, match="field not declared in schema"):
        _validate(obj)


def test_scaledobject_applies_to_the_fake_cluster_beside_the_inferenceset(kube_crds, kubectl: kubebins.Kubectl) -> None:
    kube_crds.install_crd(KEDA / "scaledobjects.keda.sh.yaml")
    kubectl("apply", "-f", str(INFERENCESET), "-f", str(EXAMPLE))
    stored = kube_crds.get("keda.sh/v1alpha1", "ScaledObject", "phi-3-mini-set", "default")
    assert stored["spec"]["scaleTargetRef"]["kind"] == "InferenceSet" and stored["spec"]["maxReplicaCount"] == 3
