"""Adapters whose source is a volume (Kaito #1877, issue 15): Kaito v0.12 serves a tuning job's output
volume without a registry. Locally the volume is ``hostPath.path``; on Kubernetes it is mounted into
the serving pod and only image adapters are pulled. Real apply, real server, real adapter files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from flows import cli  # noqa: F401 - the CLI's imports, as the dry run below uses them
from infra.kube import manifests
from tests.serving.conftest import build_adapter
from workspace import loader, settings

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")


def workspace(name: str, folder: Path | None = None, claim: str | None = None) -> dict:
    source = {"hostPath": {"path": str(folder)}} if folder else {"persistentVolumeClaim": {"claimName": claim}}
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "local"},
            "inference": {"preset": {"name": "tiny-phi-3"}, "adapters": [
                {"source": {"name": "from-volume", "volumeSource": source}, "strength": "1.0"}]}}


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_an_adapter_on_a_host_folder_is_served_locally(tiny_model, tmp_path):
    folder = build_adapter(tiny_model, tmp_path / "tuning-output", seed=3)
    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(workspace("vol-adapter", folder)))
    env = {**os.environ, "KAIFLOW_HOME": str(tmp_path / "home"), "KAIFLOW_ENGINE": "transformers"}
    env.pop("PREFECT_API_URL", None)
    try:
        out = subprocess.run([KAIFLOW, "apply", "-f", str(f)], env=env, capture_output=True, text=True, timeout=500)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        rec = json.loads((tmp_path / "home" / "workspaces" / "vol-adapter" / "record.json").read_text())
        [adapter] = rec["server"]["adapters"]
        assert adapter["name"] == "from-volume" and adapter["dir"] == str(folder) and adapter["digest"].startswith("sha256:")
        models = httpx.get(f"{rec['endpoint']}/v1/models", timeout=30).json()["data"]
        assert "from-volume" in [m["id"] for m in models]
        chat = httpx.post(f"{rec['endpoint']}/v1/chat/completions", timeout=120, json={
            "model": "from-volume", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert chat.status_code == 200, chat.text
    finally:
        subprocess.run([KAIFLOW, "delete", "workspace", "vol-adapter"], env=env, capture_output=True, timeout=120)
        subprocess.run([sys.executable, "-c", "from flows import prefect_server; prefect_server.stop()"], env=env, timeout=60)


def test_a_folder_without_an_adapter_is_a_clear_error(tmp_path):
    from infra.platforms import local
    from workspace.errors import DeploymentError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DeploymentError, match=r"inference.adapters\[0\].source.volumeSource: .* holds no adapter"):
        local._volume_adapter({"hostPath": {"path": str(tmp_path / "empty")}}, "inference.adapters[0].source.volumeSource")


def test_on_kubernetes_the_volume_is_mounted_and_not_pulled(tmp_path):
    f = tmp_path / "ws.yaml"
    ws = workspace("vol-adapter", claim="tuning-output")
    ws["resource"] = {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": "x"}}}
    ws["inference"]["preset"]["name"] = "phi-3-mini-4k-instruct"
    ws["inference"]["adapters"].append({"source": {"name": "from-image", "image": "myacr.azurecr.io/adapters/x:1"}})
    f.write_text(yaml.safe_dump(ws))
    bundle = loader.load_files([str(f)])
    objs = manifests.objects_for(bundle.workspaces[0], {}, settings.load(), namespace="ns")
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [vol] = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert vol["persistentVolumeClaim"] == {"claimName": "tuning-output"}
    main = pod["containers"][0]
    assert {"name": vol["name"], "mountPath": "/mnt/adapter-volumes/from-volume", "readOnly": True} in main["volumeMounts"]
    cmd = main["command"]
    assert "from-volume=/mnt/adapter-volumes/from-volume:1" in cmd and "from-image=/mnt/adapter/from-image:1" in cmd
    [pull] = pod["initContainers"]
    assert "from-image=myacr.azurecr.io/adapters/x:1" in pull["command"]
    assert not any("from-volume" in arg for arg in pull["command"])
