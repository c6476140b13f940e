"""The serving pod's commands run for real: the workspace flow deploys a StatefulSet to the fake API
server, and the test then plays the kubelet for its pod, as tests/kube/test_retrain.py does for
Jobs — the ConfigMap volume projected into a folder, the ``pull-adapters`` init container (a real
pull of a real adapter image from the OCI layout), then the ``inference`` container's own command
line, ``python -m serving ...``, with the pod's paths mapped to folders here and its port to a free
one. The container's readiness probe must pass and the endpoint must answer through the adapter.

So the StatefulSet's command is not only pinned as text (tests/kube/test_flow.py,
tests/kube/golden/) but shown to start a server with those very arguments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows.workspace_flow import workspace_flow
from infra import local_process, registry
from infra import pod as pod_main
from tests.serving.conftest import build_adapter
from workspace import loader

pytestmark = pytest.mark.slow

NAME = "podrun"
WORKSPACE = f"""
apiVersion: kaito.sh/v1alpha1
kind: Workspace
metadata:
  name: {NAME}
  annotations: {{kaito.sh/runtime: transformers}}
resource:
  instanceType: Standard_NC6s_v3
  labelSelector: {{matchLabels: {{apps: {NAME}}}}}
inference:
  preset: {{name: tiny-phi-3}}
  adapters:
    - source: {{name: {NAME}-adapter, image: "adapters/{NAME}:1"}}
      strength: "1.0"
"""


def _remap(arg: str, dirs: dict[str, Path]) -> str:
    """``arg`` with the pod's paths (also inside ``NAME=/mnt/...``) moved to this pod's folders."""
    for prefix, local in dirs.items():
        arg = re.sub(re.escape(prefix) + r"(?=/|$|:)", str(local), arg)
    return arg


def _with(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return args[:i + 1] + [value] + args[i + 2:]


def test_the_statefulsets_serving_command_starts_a_server_that_answers(kube_env, prefect_api, tiny_model, monkeypatch,
                                                                       tmp_path):
    kube = kube_env
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    monkeypatch.setenv("KAIFLOW_OCI_LAYOUT_ROOT", str(tmp_path / "oci"))
    kube.add_node("gpu-0", labels={"apps": NAME}, instance_type="Standard_NC6s_v3",
                  taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])
    adapter = build_adapter(tiny_model, tmp_path / "built-adapter", seed=1)
    registry.push_adapter(adapter, f"adapters/{NAME}:1", model_name="tiny-phi-3")
    (path := tmp_path / "ws.yaml").write_text(WORKSPACE)
    bundle = loader.load_files([path])
    workspace_flow(workspace=bundle.workspaces[0], config_maps=bundle.config_maps, platform="kubernetes")

    spec = kube.get("apps/v1", "StatefulSet", NAME, "default")["spec"]["template"]["spec"]
    root = tmp_path / "pod"
    mounts = {m["name"]: m["mountPath"] for c in spec["containers"] + spec.get("initContainers", [])
              for m in c.get("volumeMounts", [])}
    dirs = {path: root / name for name, path in mounts.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for vol in spec["volumes"]:  # the ConfigMap volume, as the kubelet projects it
        if "configMap" in vol:
            for key, text in kube.get("v1", "ConfigMap", vol["configMap"]["name"], "default")["data"].items():
                (root / vol["name"] / key).write_text(text)

    for init in spec.get("initContainers", []):
        args = [_remap(a, dirs) for a in init["command"]]
        assert args[:3] == ["python", "-m", "infra.pod"], args
        assert pod_main.main(args[3:]) == 0, f"init container {init['name']} failed"

    (main,) = [c for c in spec["containers"] if c["name"] == "inference"]
    args = [_remap(a, dirs) for a in main["command"]]
    assert args[:3] == ["python", "-m", "serving"], args
    port = local_process.free_port()
    args = _with(_with(args, "--host", "127.0.0.1"), "--port", str(port))
    assert "--adapter" in args and str(root) in " ".join(args)  # the adapter and config paths were mapped
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{e["name"]: e["value"] for e in main.get("env", []) if "value" in e}}
    log = tmp_path / "inference.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *args[1:]], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        probe = main["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{port}"
        local_process.wait_healthy(f"{url}{probe['path']}", pid=proc.pid, marker="-m serving", timeout=300, log_path=log)
        models = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
        assert models == {"tiny-phi-3", f"{NAME}-adapter"}
        chat = httpx.post(f"{url}/chat", json={"prompt": "Hello", "generate_kwargs": {"max_new_tokens": 4}}, timeout=120)
        assert chat.status_code == 200 and "Result" in chat.json(), chat.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
