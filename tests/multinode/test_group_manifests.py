"""A multi-node workspace on a cluster: one StatefulSet whose pod 0 leads, validated strictly for
Kubernetes 1.30-1.34 and applied to the fake API server through the real kubernetes client."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import manifests
from workspace import loader, plan, settings

REPO = Path(__file__).resolve().parents[2]
MULTINODE = sorted((REPO / "examples" / "multinode").glob("*.yaml"))
VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")


def _objects(path: Path) -> list[dict]:
    b = loader.load_files([path])
    return [o for w in b.workspaces for o in manifests.objects_for(w, b.config_maps, settings.Settings(platform="kubernetes"))]


def _sts(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "StatefulSet")


@pytest.mark.parametrize("path", MULTINODE, ids=lambda p: p.name)
def test_multinode_example_objects_validate_strictly_for_1_30_to_1_34(path: Path) -> None:
    objs = [o for o in _objects(path) if o["kind"] not in ("Workspace", "NodeClaim")]
    assert _sts(objs)["spec"]["replicas"] > 1, "the example needs more than one node"
    for obj in objs:
        for v in VERSIONS:
            kubernetes_validate.validate(obj, v, strict=True)


def test_every_pod_runs_the_same_group_command_with_its_rank_from_the_pod_index() -> None:
    objs = _objects(REPO / "examples" / "multinode" / "phi-3-medium-two-a10.yaml")
    sts = _sts(objs)
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["podManagementPolicy"] == "Parallel"
    c = sts["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--node-rank") + 1] == "auto"
    assert cmd[cmd.index("--master-addr") + 1] == \
        "phi-3-medium-two-a10-0.phi-3-medium-two-a10-headless.default.svc.cluster.local"
    assert cmd[cmd.index("--master-port") + 1] == "29500"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    # one probe set for both roles, on /health, which a worker answers while its stage runs: a worker's
    # readiness never waits on the leader (no rolling-update deadlock)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": 5000}
    params = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("inference-params"))
    assert "pipeline-parallel-size: 2" in params["data"]["inference_config.yaml"]


def test_one_node_workspace_has_no_group() -> None:
    objs = _objects(REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml")
    cmd = _sts(objs)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--nnodes" not in cmd
    client = next(o for o in objs if o["kind"] == "Service" and "clusterIP" not in o["spec"])
    assert manifests.POD_NAME_LABEL not in client["spec"]["selector"]


def test_group_applies_to_the_fake_cluster_and_the_client_service_selects_the_leader_only(kube_env) -> None:
    fake = kube_env
    path = REPO / "examples" / "multinode" / "phi-3-medium-two-a10.yaml"
    objs = [o for o in _objects(path) if o["kind"] in ("Workspace", "ConfigMap", "StatefulSet", "Service")]
    kube = kclient.connect(settings.load())
    for obj in objs:
        kapply.apply(kube, obj)
    sel = manifests.selector(loader.load_files([path]).workspaces[0], "inference")
    kapply.wait_for(kube, "v1", "Pod", "default", sel, lambda: True if len(fake.list("v1", "Pod", "default", sel)) == 2 else None,
                    timeout_s=30, describe=lambda: "the StatefulSet's 2 pods were not created")
    pods = fake.list("v1", "Pod", "default", sel)
    assert sorted(p["metadata"]["name"] for p in pods) == ["phi-3-medium-two-a10-0", "phi-3-medium-two-a10-1"]
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    client, headless = services["phi-3-medium-two-a10"], services["phi-3-medium-two-a10-headless"]
    assert [p["metadata"]["name"] for p in fake.list("v1", "Pod", "default", client["spec"]["selector"])] == \
        ["phi-3-medium-two-a10-0"]
    assert len(fake.list("v1", "Pod", "default", headless["spec"]["selector"])) == 2
    assert fake.get("v1", "Service", "phi-3-medium-two-a10-headless", "default")["spec"]["publishNotReadyAddresses"] is True


def test_plan_shows_the_leader_worker_layout_and_ports() -> None:
    ws = loader.load_files([REPO / "examples" / "multinode" / "phi-3-medium-two-a10.yaml"]).workspaces[0]
    lines = manifests.group_layout(ws, plan.plan_workspace(ws, "kubernetes"), "default")
    assert "pod 0 is the leader" in lines[0] and ":5000" in lines[0] and "port 80" in lines[0]
    assert "pod 1 runs a pipeline stage" in lines[1] and ":29500" in lines[1] and ":29501" in lines[1] and "no Ray" in lines[1]
