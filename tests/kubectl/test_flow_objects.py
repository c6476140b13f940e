"""kubectl reads what kaiflow's own kubernetes platform created: the seed's inference workspace run
through the real workspace flow against the fake, then ``kubectl get svc`` as the seed's guide shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.workspace_flow import workspace_flow
from tests.support.fakekube.fixtures import kube_env  # noqa: F401 - the fixture
from tests.support import kubebins
from workspace import loader

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"

pytestmark = pytest.mark.slow


def test_kubectl_gets_the_service_and_pods_the_flow_created(kube_env, prefect_api, monkeypatch, tmp_path):  # noqa: F811
    kube = kube_env
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    kube.add_node("gpu-0", labels={"apps": "phi-3"}, instance_type="Standard_NC6s_v3")
    bundle = loader.load_files([SEED / "workspace-phi-3-mini.yaml"])
    workspace_flow(workspace=bundle.workspaces[0], config_maps=bundle.config_maps, platform="kubernetes")

    kubectl = kubebins.Kubectl(kube.write_kubeconfig(tmp_path / "kubectl-config"))
    svc = {r["NAME"]: r for r in kubebins.table(kubectl("get", "svc"))}["workspace-phi-3-mini"]
    assert svc["TYPE"] == "ClusterIP" and svc["PORT(S)"] == "80/TCP,29500/TCP", svc
    pods = kubebins.table(kubectl("get", "pods", "-o", "wide"))
    serving = [(p["NAME"], p["READY"], p["STATUS"], p["NODE"]) for p in pods if p["NAME"].startswith("workspace-")]
    assert serving == [("workspace-phi-3-mini-0", "1/1", "Running", "gpu-0")], pods
    sts = kubebins.table(kubectl("get", "statefulset", "workspace-phi-3-mini"))[0]
    assert sts["READY"] == "1/1", sts
