"""`kaiflow apply --dry-run` output: every object of every seed and Kaito example validates against
the official schemas (strict) for Kubernetes 1.30-1.34, custom resources against their CRDs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from infra.kube import manifests
from tests.support.fakekube import validation
from workspace import loader, plan, settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in [*(REPO / "examples" / "seed").glob("*.yaml"), *(REPO / "examples" / "kaito").rglob("*.yaml")]
                  if "kind: Workspace" in p.read_text())
VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")
CRDS = [d for p in sorted((REPO / "deployments" / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
        if d and d.get("kind") == "CustomResourceDefinition"]


def _crd_schema(api_version: str, kind: str) -> dict:
    """The openAPIV3Schema of the served CRD version for ``api_version``/``kind`` (deployments/crds)."""
    group, _, version = api_version.rpartition("/")
    for crd in CRDS:
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version and v.get("served"):
                    return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no CRD in deployments/crds serves {kind} {api_version}")


def _validate_cr(obj: dict) -> None:
    """As the API server does for a custom resource: structural defaults, then the schema, strict."""
    schema = _crd_schema(obj["apiVersion"], obj["kind"])
    validation.validate_custom(validation.apply_defaults(copy.deepcopy(obj), schema), schema)


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


def test_dry_run_custom_resources_validate_against_the_crds_strictly(tmp_path: Path):
    """Every Workspace and NodeClaim `kaiflow apply --dry-run -o yaml` prints for all seed/Kaito
    examples (one CLI run, every file) validates against deployments/crds, unknown fields rejected."""
    env = {"PATH": "/usr/bin:/bin", "KAIFLOW_HOME": str(tmp_path), "KAIFLOW_KUBECONFIG": str(tmp_path / "nope")}
    argv = [sys.executable, "-m", "flows.cli", "apply", "--dry-run", "-o", "yaml"]
    for path in EXAMPLES:
        argv += ["-f", str(path)]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    custom = [d for d in docs if d["kind"] in ("Workspace", "NodeClaim")]
    assert len([d for d in custom if d["kind"] == "Workspace"]) == len(EXAMPLES)
    assert {d["apiVersion"] for d in custom if d["kind"] == "Workspace"} == {"kaito.sh/v1alpha1", "kaito.sh/v1beta1"}
    assert [d for d in custom if d["kind"] == "NodeClaim"], "examples with an instanceType make NodeClaims"
    failures = []
    for obj in custom:
        try:
            _validate_cr(obj)
        except validation.Invalid as err:
            failures.append(f"{obj['kind']} {obj['metadata']['name']}: {err}")
    assert failures == []


@pytest.mark.parametrize("kind, path, bad", [
    ("Workspace", ("resource",), {"instanceTypo": "Standard_NC6s_v3"}),
    ("Workspace", ("inference",), {"preset": {"name": "phi-3-mini-4k-instruct", "extra": 1}}),
    ("NodeClaim", ("spec",), {"taint": []}),
])
def test_crd_validation_is_strict(kind: str, path: tuple, bad: dict):
    """The check above is not vacuous: an unknown field anywhere in a printed CR is rejected."""
    obj = next(o for o in _objects(REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml") if o["kind"] == kind)
    _validate_cr(obj)
    target = obj
    for key in path:
        target = target[key]
    target.update(bad)
    with pytest.raises(validation.Invalid, match="field not declared in schema"):
        _validate_cr(obj)


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


def test_custom_config_is_mounted_after_the_plans_own():
    """The user's ConfigMap is mounted and passed last (its keys win, as Kaito appends its
    --kaito-config-file); the plan's layout and memory arguments come first from a ConfigMap of its own."""
    objs = _objects(REPO / "examples" / "kaito" / "kaito_workspace_custom_config.yaml")
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert ("ConfigMap", "ds-inference-params") in kinds
    assert ("ConfigMap", "workspace-deepseek-r1-distill-qwen-14b-inference-params") in kinds
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "config", "configMap": {"name": "ds-inference-params"}}
    cmd = pod["containers"][0]["command"]
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"] == [
        "/mnt/plan/inference_config.yaml", "/mnt/config/inference_config.yaml"]


@pytest.mark.parametrize("message, expected", [
    ('{"reference": "reg.example/a@sha256:' + "0" * 64 + '", "digest": "sha256:' + "0" * 64 + '"}',
     "reg.example/a@sha256:" + "0" * 64),
    ("pushing...\nreg.example/a@sha256:" + "f" * 64 + "\n", "reg.example/a@sha256:" + "f" * 64),
    ('{"volume": "/mnt/out", "files": []}', ""),
    ("reg.example/a@sha256:1234", ""),
    ("Reached expected number of succeeded pods", ""),
    ("", ""),
])
def test_termination_reference_accepts_only_a_pinned_image(message: str, expected: str):
    from infra.kube import jobs

    assert jobs.termination_reference(message) == expected


def test_the_flows_url_policy_goes_with_the_pull_data_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Guards: a data server the flow admitted on a private address (one inside the cluster, as
    KAIFLOW_ALLOW_PRIVATE_URLS allows) is not refused again by the pod, whose own environment does
    not carry the flow's settings. The pull-data init container gets ``--allow-private-urls`` exactly
    when the flow's settings allow it, and ``python -m infra.pod pull-data`` then reads from a real
    HTTP server on 127.0.0.1 — which it refuses without the flag."""
    from infra import pod as pod_main
    from tests.support import fileserver

    path = REPO / "examples" / "kaito" / "kaito_workspace_tuning_phi_3.yaml"
    b = loader.load_files([path])
    ws = b.workspaces[0]

    def pull_cmd(allow: bool) -> list[str]:
        objs = manifests.objects_for(ws, b.config_maps, settings.Settings(platform="kubernetes", allow_private_urls=allow))
        job = next(o for o in objs if o["kind"] == "Job")
        init = next(c for c in job["spec"]["template"]["spec"]["initContainers"] if c["name"] == "pull-data")
        return init["command"]

    assert "--allow-private-urls" not in pull_cmd(False)
    cmd = pull_cmd(True)
    assert cmd[-1] == "--allow-private-urls" and cmd[:4] == ["python", "-m", "infra.pod", "pull-data"]

    monkeypatch.delenv("KAIFLOW_ALLOW_PRIVATE_URLS", raising=False)  # the pod's own environment
    with fileserver.FileServer(tmp_path / "www") as srv:
        fileserver.write_qa_jsonl(srv.root / "qa.jsonl", [("What is the capital of France?", "Paris.")])
        source = '{"urls": ["%s"]}' % srv.url_for("qa.jsonl")
        assert pod_main.main(["pull-data", "--source", source, "--dest", str(tmp_path / "refused")]) != 0
        assert pod_main.main(["pull-data", "--source", source, "--dest", str(tmp_path / "data"),
                              "--allow-private-urls"]) == 0
    assert (tmp_path / "data" / "qa.jsonl").read_text().count("Paris.") == 1
