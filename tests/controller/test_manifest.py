"""deployments/controller.yaml: valid for every Kubernetes version the project supports (strict: no
unknown fields), accepted by the fake API server through the real kubectl, its command line one the
CLI parses, and its ClusterRole no wider than what the controller calls."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flows import cli
from tests.support import kubebins
from tests.support.fakekube.fixtures import fakekube, kubeconfig  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deployments" / "controller.yaml"
DOCS = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
# what flows/controller.py and infra/kube/{watch,lease,crcontrol,inferenceset}.py call, by (group, resource): verbs
USED = {("kaito.sh", "workspaces"): {"get", "list", "watch", "patch", "create", "delete"},
        ("kaito.sh", "workspaces/status"): {"get", "patch"},
        ("kaito.sh", "inferencesets"): {"get", "list", "watch"},
        ("kaito.sh", "inferencesets/status"): {"get", "patch"},
        ("karpenter.sh", "nodeclaims"): {"get", "list"}}


def _one(kind: str) -> dict:
    (doc,) = [d for d in DOCS if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", ["1.30", "1.31", "1.32", "1.33", "1.34"])
def test_every_object_is_valid_strictly(version: str):
    assert [d["kind"] for d in DOCS] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                         "RoleBinding", "Lease", "Deployment"]
    for doc in DOCS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_command_line_is_one_the_cli_parses():
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["kaiflow", "controller"]
    args = cli._parser().parse_args(container["command"][1:])
    lease = _one("Lease")
    assert (args.lease_namespace, args.lease_name) == (lease["metadata"]["namespace"], lease["metadata"]["name"])
    assert _one("Deployment")["spec"]["replicas"] == 2
    assert _one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]


def test_rbac_grants_exactly_what_the_controller_calls():
    granted = {(g, r): set(rule["verbs"]) for rule in _one("ClusterRole")["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert granted == USED
    (lease_rule,) = _one("Role")["rules"]
    assert lease_rule == {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                          "resourceNames": ["kaiflow-controller"], "verbs": ["get", "update"]}


def test_kubectl_applies_it_to_the_api_server(fakekube, kubeconfig):  # noqa: F811
    out = subprocess.run([kubebins.kubectl(), "--kubeconfig", str(kubeconfig), "apply", "-f", str(MANIFEST)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(out.stdout.splitlines()) == len(DOCS) and all(line.endswith(" created") for line in out.stdout.splitlines())
    dep = fakekube.get("apps/v1", "Deployment", "kaiflow-controller", "kaiflow-system")
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"][1] == "controller"
    assert fakekube.get("coordination.k8s.io/v1", "Lease", "kaiflow-controller", "kaiflow-system")["spec"]["leaseDurationSeconds"] == 15
