"""resource.count follows the model's need, as Kaito's estimator decides, and the workspace says so:
the seed's phi-3 workspace asking for 3 Standard_NC6s_v3 nodes gets the 1 it needs (one NodeClaim,
one replica) and a NodeCountAdjusted warning event, through the real workspace flow against the
fake API server (whose controller plays Karpenter)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.workspace_flow import workspace_flow
from infra import records
from workspace import loader, plan

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "workspace-phi-3-mini.yaml"

pytestmark = pytest.mark.slow


def test_count_lowered_to_the_models_need_is_applied_and_said(kube_env, prefect_api, monkeypatch, tmp_path):
    kube = kube_env
    monkeypatch.delenv("KAIFLOW_PROVISIONER", raising=False)  # karpenter
    doc = yaml.safe_load(SEED.read_text())
    doc["apiVersion"] = "kaito.sh/v1beta1"  # v1alpha1 wants a max-model-len for count > 1
    doc["metadata"]["name"] = "phi-3-three"
    doc["resource"]["count"] = 3
    path = tmp_path / "ws.yaml"
    path.write_text(yaml.safe_dump(doc))
    b = loader.load_files([path])
    workspace_flow(workspace=b.workspaces[0], config_maps=b.config_maps, platform="kubernetes")

    assert len(kube.list("karpenter.sh/v1", "NodeClaim", labels={"kaito.sh/workspace": "phi-3-three"})) == 1
    assert kube.get("apps/v1", "StatefulSet", "phi-3-three", "default")["spec"]["replicas"] == 1
    events = [e for e in records.load("phi-3-three").events if e.reason == plan.COUNT_ADJUSTED]
    assert len(events) == 1 and events[0].type == "Warning"
    assert events[0].message.startswith("resource.count 3 lowered to 1: phi-3-mini-4k-instruct needs 1 GPU(s)")
