"""Claims of the workspace flow on the kubernetes platform that had no test that would fail:

- the flow holds ``gpu-<sku>`` slots (KAIFLOW_GPU_QUOTA) around tuning and inference, so runs stay
  within the GPU quota: a run whose slot another run holds waits and then fails, having created
  nothing; a run that needs more nodes than the quota allows fails at once;
- a failed re-deploy puts back the serving ConfigMaps, not only the StatefulSet's template.

In-process flow runs against a real Prefect server and the fake API server, as tests/kube/test_flow.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from flows import concurrency
from flows.workspace_flow import workspace_flow
from tests.retrain.conftest import thread
from workspace import loader
from workspace.errors import KaiflowError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"
SKU = "Standard_NC6s_v3"

pytestmark = pytest.mark.slow


def _byo(monkeypatch, kube, labels: dict[str, str], n: int = 1) -> None:
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    for i in range(n):
        kube.add_node(f"gpu-{i}", labels=labels, instance_type=SKU,
                      taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])


def _run_text(text: str, tmp_path: Path) -> dict:
    path = tmp_path / "ws.yaml"
    path.write_text(text)
    b = loader.load_files([path])
    return workspace_flow(workspace=b.workspaces[0], config_maps=b.config_maps, platform="kubernetes")


CONFIGURED = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: adapter-inference-params}}
data:
  inference_config.yaml: |
    vllm:
      max-model-len: {max_len}
---
"""


class HeldSlot:
    """Another run holding one ``gpu-<sku>`` slot, in its own thread (a slot is re-entrant within one)."""

    def __init__(self, sku: str):
        self.sku, self.holding, self.release = sku, threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self._thread = thread(self._hold)

    def _hold(self) -> None:
        try:
            with concurrency.gpu_slots(self.sku, 1, "the other run"):
                self.holding.set()
                self.release.wait(120)
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.errors.append(exc)
            self.holding.set()

    def __enter__(self) -> "HeldSlot":
        self._thread.start()
        assert self.holding.wait(120) and not self.errors, self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._thread.join(120)
        assert not self.errors, self.errors


def test_inference_waits_for_its_gpu_slot_and_deploys_nothing_without_it(kube_env, prefect_api, monkeypatch, tmp_path):
    """Removing the inference ``gpu_slots`` from the workspace flow makes this deploy: the test fails."""
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3"})
    monkeypatch.setenv("KAIFLOW_GPU_QUOTA", f"{SKU}=1")
    monkeypatch.setenv("KAIFLOW_GPU_WAIT_S", "1")
    with HeldSlot(SKU):
        with pytest.raises(KaiflowError, match=f"inference of workspace-phi-3-mini: no free slot on 'gpu-{SKU}'"):
            _run_text((SEED / "workspace-phi-3-mini.yaml").read_text(), tmp_path)
    assert kube.list("apps/v1", "StatefulSet", "default") == []


def test_tuning_waits_for_its_gpu_slot_and_starts_no_job_without_it(kube_env, prefect_api, monkeypatch, tmp_path):
    """Removing the tuning ``gpu_slots`` from the workspace flow makes this start the tuning Job."""
    kube = kube_env
    monkeypatch.setenv("KAIFLOW_GPU_QUOTA", f"{SKU}=1")
    monkeypatch.setenv("KAIFLOW_GPU_WAIT_S", "1")
    with HeldSlot(SKU):
        with pytest.raises(KaiflowError, match=f"tuning of workspace-phi-3-mini: no free slot on 'gpu-{SKU}'"):
            _run_text((SEED / "kaito_workspace_phi_3.yaml").read_text(), tmp_path)
    assert kube.list("batch/v1", "Job", "default") == []


def test_a_failed_redeploy_puts_the_serving_configmaps_back(kube_env, prefect_api, monkeypatch, tmp_path):
    """The re-deploy changes the inference ConfigMap and an adapter image that does not pull: after the
    rollback the ConfigMap holds what the serving pod was started with (restoring only the
    StatefulSet would leave the new config under the old pod's next restart)."""
    kube = kube_env
    _byo(monkeypatch, kube, {"apps": "phi-3-adapter"})
    name = "workspace-phi-3-mini-adapter"
    doc = yaml.safe_load((SEED / "workspace-phi-3-mini-adapter.yaml").read_text())
    doc["inference"]["config"] = "adapter-inference-params"
    _run_text(CONFIGURED.format(max_len=4096) + yaml.safe_dump(doc), tmp_path)
    serving = kube.get("v1", "ConfigMap", "adapter-inference-params", "default")["data"]
    assert "max-model-len: 4096" in serving["inference_config.yaml"]

    doc["inference"]["adapters"][0]["source"]["image"] = "registry.example.com/adapters/broken:9"
    kube.controllers.pod_failure_for = lambda pod: "ImagePullBackOff" if "broken:9" in str(pod.get("spec")) else None
    with pytest.raises(KaiflowError, match="the previous version was put back"):
        _run_text(CONFIGURED.format(max_len=2048) + yaml.safe_dump(doc), tmp_path)

    assert kube.get("v1", "ConfigMap", "adapter-inference-params", "default")["data"] == serving
    sts = kube.get("apps/v1", "StatefulSet", name, "default")
    assert "broken:9" not in str(sts["spec"]["template"])
