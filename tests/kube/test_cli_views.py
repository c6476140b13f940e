"""`kaiflow get workspaces` / `describe workspace` on the kubernetes platform read the Workspace CR:
the same cells as `kubectl get workspace` (the CRD's printer columns, evaluated by the fake's
printer module), changes made on the cluster show, and an unreachable cluster still lists the
workspace from its local record, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from flows import cli
from flows.workspace_flow import workspace_flow
from infra import records
from tests.support.fakekube import printer
from workspace import loader, status

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"
NAME = "workspace-phi-3-mini"
COLUMNS = ["NAME", "Instance", "ResourceReady", "InferenceReady", "WorkspaceReady"]

pytestmark = pytest.mark.slow


def _get_row(capsys) -> list[str]:
    assert cli.main(["get", "workspaces"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]
    (row,) = [line.split() for line in out[1:]]
    return row


def test_get_and_describe_read_the_workspace_cr(kube_env, prefect_api, monkeypatch, tmp_path, capsys):
    kube = kube_env
    b = loader.load_files([SEED])
    workspace_flow(workspace=b.workspaces[0], config_maps=b.config_maps, platform="kubernetes")
    capsys.readouterr()
    crd = yaml.safe_load((REPO / "deployments" / "crds" / "workspace.kaito.sh.yaml").read_text())

    cr = kube.get("kaito.sh/v1alpha1", "Workspace", NAME, "default")
    kubectl = printer.columns(crd, cr)
    row = _get_row(capsys)
    assert row[:5] == [kubectl[c] for c in COLUMNS] == [NAME, "Standard_NC6s_v3", "True", "True", "True"]

    # the cluster's word wins over the local record: the CR's status changes, `get` follows
    api = config.new_client_from_config(str(tmp_path / "kubeconfig"))
    custom = client.CustomObjectsApi(api)
    body = custom.get_namespaced_custom_object("kaito.sh", "v1alpha1", "default", "workspaces", NAME)
    for c in body["status"]["conditions"]:
        if c["type"] == "InferenceReady":
            c.update(status="False", reason="CrashLoopBackOff", message="container inference: back-off")
    custom.replace_namespaced_custom_object_status("kaito.sh", "v1alpha1", "default", "workspaces", NAME, body)
    api.close()
    assert status.condition_value(records.load(NAME).conditions, status.INFERENCE_READY) == "True"
    row = _get_row(capsys)
    assert row[:5] == [printer.columns(crd, kube.get("kaito.sh/v1alpha1", "Workspace", NAME, "default"))[c]
                       for c in COLUMNS]
    assert row[3] == "False"

    assert cli.main(["describe", "workspace", NAME]) == 0
    out = capsys.readouterr().out
    node = kube.get("kaito.sh/v1alpha1", "Workspace", NAME, "default")["status"]["workerNodes"][0]
    assert f"Cluster:       Workspace default/{NAME}" in out and f"Worker nodes:  {node}" in out
    assert "InferenceReady       False    CrashLoopBackOff" in out and "container inference: back-off" in out
    assert "(not running)" not in out, "no local server process on kubernetes"

    # the cluster goes away: the workspace is still listed, from the local record, with a note
    kube.stop()
    monkeypatch.setenv("KAIFLOW_KUBE_REQUEST_TIMEOUT_S", "1")
    assert cli.main(["get", "workspaces"]) == 0
    got = capsys.readouterr()
    assert got.out.splitlines()[1].split()[:5] == [NAME, "Standard_NC6s_v3", "True", "True", "True"]
    assert f"note: {NAME}: cluster not reachable, showing the local record" in got.err
