"""deployments/chart with the real helm: lint, render with the default values and each provisioner,
every object valid for Kubernetes 1.30-1.34 (strict), values checked by the schema, the API key
only ever a Secret reference, and the default render equal to the loose manifests but for what is
pinned here."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (CHART, NAMESPACE, REPO, VARIANTS, container, env_of, find, helm_run,
                                  render)

VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")
CRDS = REPO / "deployments" / "crds"


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_passes(variant: str):
    r = helm_run("lint", str(CHART), "--strict", "-n", NAMESPACE, *VARIANTS[variant])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_validates_strictly_for_1_30_to_1_34(variant: str):
    objs = render(*VARIANTS[variant])
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Role", "Lease", "Deployment"} <= {o["kind"] for o in objs}
    for obj in objs:
        text = json.dumps(obj, sort_keys=True)
        if text in _VALID:  # the same object in another variant (the CRDs, most RBAC): checked once
            continue
        for v in VERSIONS:
            kubernetes_validate.validate(obj, v, strict=True)
        _VALID.add(text)


_VALID: set[str] = set()


def test_validation_is_strict():
    """The check above is not vacuous: an unknown field in a rendered object is refused."""
    dep = find(render(), "Deployment", "kaiflow-controller")
    dep["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.34", strict=True)


@pytest.mark.parametrize("variant, platform, nodeclaims", [("default", "kubernetes", True), ("byo", "kubernetes", False),
                                                           ("aks", "aks", False)])
def test_each_provisioner_reaches_the_controller_and_the_flow_runs(variant: str, platform: str, nodeclaims: bool):
    objs = render(*VARIANTS[variant])
    provisioner = "karpenter" if variant == "default" else variant
    env = env_of(container(objs, "kaiflow-controller"))
    assert (env["KAIFLOW_PLATFORM"], env["KAIFLOW_PROVISIONER"]) == (platform, provisioner)
    assert env["KAIFLOW_IMAGE"] == "ghcr.io/kaiflow/kaiflow:0.1.0"
    if variant == "aks":
        assert {k: env[k] for k in env if k.startswith("KAIFLOW_AZURE_")} == {
            "KAIFLOW_AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000", "KAIFLOW_AZURE_RESOURCE_GROUP": "rg-gpu",
            "KAIFLOW_AZURE_CLUSTER": "aks-gpu", "KAIFLOW_AZURE_CREDENTIAL": "default"}
    else:
        assert not [k for k in env if k.startswith("KAIFLOW_AZURE_")]
    # least privilege: the flow runs may touch NodeClaims only where Karpenter provisions
    rules = find(objs, "ClusterRole", "kaiflow")["rules"]
    assert any("karpenter.sh" in r["apiGroups"] for r in rules) == nodeclaims
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]} in rules
    if variant != "default":  # the worker's flow-run Jobs carry the same settings
        template = json.loads(find(objs, "ConfigMap", "kaiflow-worker")["data"]["base-job-template.json"])
        job_env = template["variables"]["properties"]["env"]["default"]
        assert {k: v for k, v in env.items() if k.startswith("KAIFLOW_")} == job_env


def test_gpu_quota_becomes_kaiflow_gpu_quota():
    env = env_of(container(render(*VARIANTS["karpenter-worker-nodeclaim"]), "kaiflow-controller"))
    assert env["KAIFLOW_GPU_QUOTA"] == "Standard_NC12s_v3=1,Standard_NC6s_v3=2"
    assert env["KAIFLOW_GPU_DEFAULT_LIMIT"] == "1"
    from flows import concurrency

    assert concurrency.parse_quota(env["KAIFLOW_GPU_QUOTA"]) == {"Standard_NC12s_v3": 1, "Standard_NC6s_v3": 2}


def test_api_key_is_only_ever_a_secret_reference():
    objs = render(*VARIANTS["karpenter-worker-nodeclaim"])
    assert not [o for o in objs if o["kind"] == "Secret"], "the chart never holds the key"
    ref = {"secretKeyRef": {"name": "prefect-api-key", "key": "key"}}
    pods = [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"]
    containers = [c for p in pods for c in [*p.get("initContainers", []), *p["containers"]]]
    assert len(containers) == 4  # controller; worker, its two init containers
    for c in containers:
        assert env_of(c)["PREFECT_API_KEY"] == ref, c["name"]
    worker = env_of(container(objs, "kaiflow-worker", "worker"))
    # prefect-kubernetes then gives each flow-run Job the key from the same Secret, not as a value
    assert worker["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME"] == "prefect-api-key"
    assert worker["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_KEY"] == "key"
    # without a Secret named, no key at all
    assert "PREFECT_API_KEY" not in env_of(container(render(), "kaiflow-controller"))


@pytest.mark.parametrize("args, says", [
    (("--set", "prefect.apiKey=pnu_0123456789abcdef"), "additional properties 'apiKey' not allowed"),
    (("--set", "provisioner.type=gke"), "/provisioner/type"),
    (("--set", "provisioner.type=aks"), "/provisioner/aks/subscriptionId"),
    (("--set", "controller.replica=3"), "additional properties 'replica' not allowed"),
    (("--set", "gpuQuota.limits.Standard_NC6s_v3=two"), "/gpuQuota/limits/Standard_NC6s_v3"),
    (("--set", "workspaceNamespaces={Team_A}"), "/workspaceNamespaces/0"),
    (("--set", "prefect.apiUrl=prefect:4200"), "/prefect/apiUrl"),
])
def test_bad_values_fail_naming_the_field(args: tuple[str, ...], says: str):
    r = helm_run("template", "kaiflow", str(CHART), *args)
    assert r.returncode != 0
    assert says in r.stderr, r.stderr
    assert "pnu_0123456789abcdef" not in r.stderr + r.stdout, "a key given by mistake is never echoed"


def _crd_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CRDS / name).read_text()) if d and d.get("kind") == "CustomResourceDefinition"]


def test_crds_come_from_deployments_crds_and_are_kept_on_uninstall():
    objs = render()
    crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
    expected = _crd_docs("workspace.kaito.sh.yaml")
    if (CRDS / "inferenceset.kaito.sh.yaml").exists():
        expected += _crd_docs("inferenceset.kaito.sh.yaml")
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(c["metadata"]["name"] for c in expected)
    for crd in crds:
        meta = crd["metadata"]
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert meta.pop("labels")["app.kubernetes.io/managed-by"] == "Helm"
        assert crd == next(e for e in expected if e["metadata"]["name"] == meta["name"]), "the same CRD, byte for byte as data"


def test_nodeclaim_crd_only_when_asked_and_none_without_crds_install():
    names = lambda objs: sorted(o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition")  # noqa: E731
    assert "nodeclaims.karpenter.sh" not in names(render())
    assert "nodeclaims.karpenter.sh" in names(render("--set", "crds.nodeClaim=true"))
    assert names(render("--set", "crds.install=false")) == []


def test_worker_base_job_template_is_the_repositorys_with_defaults_filled_in():
    objs = render(*VARIANTS["karpenter-worker-nodeclaim"])
    chart = json.loads(find(objs, "ConfigMap", "kaiflow-worker")["data"]["base-job-template.json"])
    repo = json.loads((REPO / "deployments" / "work-pools" / "kubernetes-base-job-template.json").read_text())
    assert chart["job_configuration"] == repo["job_configuration"]
    changed = {k: v["default"] for k, v in chart["variables"]["properties"].items()
               if v.get("default") != repo["variables"]["properties"][k].get("default")}
    assert changed == {
        "env": env_of_settings(container(objs, "kaiflow-controller")), "namespace": NAMESPACE,
        "service_account_name": "kaiflow", "cpu_request": "500m", "memory_request": "1Gi", "memory_limit": "4Gi",
        "finished_job_ttl": 3600}
    worker = container(objs, "kaiflow-worker", "worker")
    assert worker["command"][:7] == ["prefect", "worker", "start", "--type", "kubernetes", "--pool", "kaiflow-kubernetes"]
    init = find(objs, "Deployment", "kaiflow-worker")["spec"]["template"]["spec"]["initContainers"]
    assert [c["command"][:3] for c in init] == [["kaiflow", "deploy", "--pool-type"], ["prefect", "work-pool", "create"]]


def env_of_settings(c: dict) -> dict:
    return {k: v for k, v in env_of(c).items() if k.startswith("KAIFLOW_")}


def test_a_flow_run_job_from_the_workers_template_validates_and_runs_as_the_flow_account():
    """What prefect-kubernetes makes of the chart's template for one flow run, with the worker's
    settings from the chart: a Job valid for 1.30-1.34, with the flow's ServiceAccount, the kaiflow
    image, the worker's Prefect API and the KAIFLOW_* settings. (No Prefect API is contacted.)"""
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    objs = render(*VARIANTS["aks"])
    template = json.loads(find(objs, "ConfigMap", "kaiflow-worker")["data"]["base-job-template.json"])
    api = env_of(container(objs, "kaiflow-worker", "worker"))["PREFECT_API_URL"]
    with temporary_settings(updates={PREFECT_API_URL: api}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, {}))
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="workspace-phi-3-mini", flow_id=uuid.uuid4()))
    job = config.job_manifest
    job["metadata"]["name"] = "workspace-phi-3-mini-x7k2q"  # the API server's generateName
    for v in VERSIONS:
        kubernetes_validate.validate(job, v, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert (job["metadata"]["namespace"], pod["serviceAccountName"]) == (NAMESPACE, "kaiflow")
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/kaiflow/kaiflow:0.1.0"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["KAIFLOW_PLATFORM"], env["KAIFLOW_PROVISIONER"], env["KAIFLOW_AZURE_CLUSTER"]) == ("aks", "aks", "aks-gpu")
    assert env["PREFECT_API_URL"] == api == "https://prefect.example.com/api"
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}


# --- the default render against the loose manifests (deployments/crds, rbac.yaml, controller.yaml) ---

HELM_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
               "app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/component"}


def _loose() -> list[dict]:
    objs = []
    for path in [*sorted(CRDS.glob("*.yaml")), REPO / "deployments" / "rbac.yaml", REPO / "deployments" / "controller.yaml"]:
        objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return objs


def _key(o: dict) -> tuple[str, str, str]:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def test_default_render_is_what_the_loose_manifests_create_but_for_the_pinned_differences():
    """`helm template kaiflow deployments/chart -n kaiflow-system` (the default values) against
    `kubectl apply -f deployments/crds -f deployments/rbac.yaml -f deployments/controller.yaml`.

    Pinned differences (README "Install on a cluster"):
    1. the chart makes no Namespace (`helm install --create-namespace`) and no NodeClaim CRD unless
       crds.nodeClaim=true (Karpenter's chart owns it);
    2. the flow runs' ServiceAccount `kaiflow` and its Role/RoleBinding are in the release namespace
       (where the worker starts their Jobs; workspaceNamespaces adds Roles elsewhere), not in
       `default` as in rbac.yaml;
    3. Helm's labels on every object, helm.sh/resource-policy: keep on the CRDs;
    4. the controller gets `--lease-duration` (the Lease's own duration, so the two cannot drift) and
       the KAIFLOW_* settings (platform, provisioner, image, GPU limit) it passes with each run, and
       says imagePullPolicy: IfNotPresent (the default for a tagged image) outright.
    """
    chart = render()
    loose = _loose()
    # 1.
    assert [o["metadata"]["name"] for o in loose if o["kind"] == "Namespace"] == [NAMESPACE]
    loose = [o for o in loose if o["kind"] != "Namespace" and o["metadata"]["name"] != "nodeclaims.karpenter.sh"]
    # 2.
    for o in loose:
        if o["metadata"]["name"] == "kaiflow" and o["metadata"].get("namespace") == "default":
            o["metadata"]["namespace"] = NAMESPACE
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding") and o["metadata"]["name"] == "kaiflow":
            o["subjects"][0]["namespace"] = NAMESPACE
    # 3.
    for o in chart:
        meta = o["metadata"]
        labels = meta.pop("labels")
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and set(labels) <= HELM_LABELS
        loose_labels = next((x["metadata"].get("labels") for x in loose if _key(x) == _key(o)), None) or {}
        assert loose_labels.items() <= labels.items(), f"{_key(o)} keeps the loose manifest's labels"
        if o["kind"] == "CustomResourceDefinition":
            assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
    for o in loose:
        o["metadata"].pop("labels", None)
    # 4.
    ctl = find(chart, "Deployment", "kaiflow-controller")["spec"]["template"]["spec"]["containers"][0]
    assert ctl["command"][-2:] == ["--lease-duration", "15"]
    assert find(chart, "Lease", "kaiflow-controller")["spec"]["leaseDurationSeconds"] == 15
    del ctl["command"][-2:]
    settings = [e for e in ctl["env"] if e["name"].startswith("KAIFLOW_")]
    assert {e["name"] for e in settings} == {"KAIFLOW_PLATFORM", "KAIFLOW_PROVISIONER", "KAIFLOW_IMAGE", "KAIFLOW_GPU_DEFAULT_LIMIT"}
    ctl["env"] = [e for e in ctl["env"] if e not in settings]
    ctl.pop("imagePullPolicy")  # IfNotPresent: the default for a tagged image, said outright
    # then the rest is equal, object by object
    assert sorted(map(_key, chart)) == sorted(map(_key, loose))
    by_key = {_key(o): o for o in loose}
    for o in chart:
        assert o == by_key[_key(o)], f"{_key(o)} differs from the loose manifest"


def test_the_packaged_chart_carries_the_linked_crds_and_template(tmp_path):
    """files/crds and files/work-pools are links into deployments/: `helm package` must copy what
    they point at, so a chart pushed to a registry renders the same objects as this folder."""
    r = helm_run("package", str(CHART), "-d", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (tgz,) = tmp_path.glob("kaiflow-*.tgz")
    args = VARIANTS["karpenter-worker-nodeclaim"]
    r = helm_run("template", "kaiflow", str(tgz), "-n", NAMESPACE, *args)
    assert r.returncode == 0, r.stderr
    assert [d for d in yaml.safe_load_all(r.stdout) if d] == render(*args)


def test_workspace_namespaces_put_the_flow_roles_where_rbac_yaml_has_them():
    """`--set workspaceNamespaces={default}` gives rbac.yaml's Role and RoleBinding, in `default`."""
    chart = render("--set", "workspaceNamespaces={default}")
    loose = {_key(o): o for o in _loose()}
    for kind in ("Role", "RoleBinding"):
        o = find(chart, kind, "kaiflow", "default")
        o["metadata"].pop("labels")
        want = loose[(kind, "default", "kaiflow")]
        want["metadata"].pop("labels", None)
        if kind == "RoleBinding":
            assert o["subjects"][0].pop("namespace") == NAMESPACE
            want["subjects"][0].pop("namespace")
        assert o == want
    assert not [o for o in chart if o["kind"] == "Role" and o["metadata"]["name"] == "kaiflow" and
                o["metadata"]["namespace"] == NAMESPACE]
