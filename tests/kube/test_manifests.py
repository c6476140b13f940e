"""`kaiflow apply --dry-run` output: every object of every seed and Kaito example validates against
the official schemas (strict) for Kubernetes 1.30-1.34, custom resources against their CRDs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from infra.kube import manifests
from workspace import loader, plan, settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in [*(REPO / "examples" / "seed").glob("*.yaml"), *(REPO / "examples" / "kaito").rglob("*.yaml")]
                  if "kind: Workspace" in p.read_text())
VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")


def _objects(path: Path) -> list[dict]:
    b = loader.load_files([path])
    return [o for w in b.workspaces for o in manifests.objects_for(w, b.config_maps, settings.Settings(platform="kubernetes"))]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_dry_run_object_validates_strictly_for_1_30_to_1_34(path: Path):
    objs = _objects(path)
    builtin = [o for o in objs if o["kind"] not in ("Workspace", "NodeClaim")]
    assert builtin, "every workspace makes built-in objects"
    for obj in builtin:
        for v in VERSIONS:
            kubernetes_validate.validate(obj, v, strict=True)


def test_dry_run_cli_prints_multi_doc_yaml_without_a_cluster(tmp_path: Path):
    seed = REPO / "examples" / "seed" / "kaito_workspace_phi_3_with_adapters.yaml"
    env = {"PATH": "/usr/bin:/bin", "KAIFLOW_HOME": str(tmp_path), "KAIFLOW_KUBECONFIG": str(tmp_path / "nope")}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "apply", "--dry-run", "-o", "yaml", "-f", str(seed)],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["kind"] for d in docs] == ["Workspace", "NodeClaim", "Job"]
    assert docs == _objects(seed)


def test_nodeclaim_is_kaitos_shape():
    ws = loader.load_files([REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"]).workspaces[0]
    (claim,) = manifests.nodeclaims(ws, plan.plan_workspace(ws, "kubernetes"), "default")
    assert claim["metadata"]["labels"] == {"karpenter.sh/nodepool": "kaito", "kaito.sh/workspace": "workspace-phi-3-mini",
                                           "kaito.sh/workspacenamespace": "default", "app.kubernetes.io/managed-by": "kaiflow",
                                           "apps": "phi-3"}
    assert claim["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    spec = claim["spec"]
    assert spec["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["Standard_NC6s_v3"]} in spec["requirements"]
    assert spec["nodeClassRef"] == {"group": "karpenter.azure.com", "kind": "AKSNodeClass", "name": "default"}
    assert spec["resources"]["requests"]["ephemeral-storage"] == "39Gi"
    assert manifests.nodeclaims(ws, plan.plan_workspace(ws, "kubernetes"), "default")[0]["metadata"]["name"] == \
        claim["metadata"]["name"], "names are stable, so a re-apply finds the same NodeClaims"


def test_custom_config_is_mounted_and_no_generated_config():
    objs = _objects(REPO / "examples" / "kaito" / "kaito_workspace_custom_config.yaml")
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert ("ConfigMap", "ds-inference-params") in kinds
    assert not any(n.endswith("-inference-params") and n != "ds-inference-params" for _, n in kinds)
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    assert sts["spec"]["template"]["spec"]["volumes"][0] == {"name": "config", "configMap": {"name": "ds-inference-params"}}
