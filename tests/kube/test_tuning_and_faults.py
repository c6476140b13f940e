"""Tuning on the kubernetes platform (the seed's tuning workspace, a real registry and data server),
Job failure, and API faults: 409 conflicts, 500s and timeouts are retried."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from flows.workspace_flow import workspace_flow
from infra import pod as pod_main, records, registry
from tests.support.fileserver import FileServer, write_jsonl
from tests.support.registry import LocalRegistry
from workspace import loader, status
from workspace.errors import KaiflowError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "seed"
GPU = "nvidia.com/gpu"

pytestmark = pytest.mark.slow


@pytest.fixture
def local_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "www").mkdir()
    write_jsonl(tmp_path / "www" / "train.jsonl", rows=20)
    monkeypatch.setenv("KAIFLOW_ALLOW_PRIVATE_URLS", "true")
    with FileServer(tmp_path / "www") as srv, LocalRegistry(tmp_path / "registry") as reg:
        yield srv, reg


def _tuning_seed_copy(tmp_path: Path, srv: FileServer, reg: LocalRegistry) -> Path:
    """The seed's tuning workspace with what cannot be reached offline pointed at local services:
    the Hugging Face dataset URL -> the file server, the placeholder image (not a valid OCI reference:
    upper case) -> the local registry. Every other field is the seed's."""
    doc = yaml.safe_load((SEED / "kaito_workspace_phi_3.yaml").read_text())
    doc["tuning"]["input"]["urls"] = [srv.url_for("train.jsonl")]
    doc["tuning"]["output"]["image"] = f"{reg.host}/image-name-here:0.0.1"
    out = tmp_path / "seed-tuning.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def _adapter(tmp_path: Path) -> Path:
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (d / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return d


def _run(path: Path):
    b = loader.load_files([path])
    return workspace_flow(workspace=b.workspaces[0], config_maps=b.config_maps, platform="kubernetes")


def test_seed_tuning_runs_a_job_and_reuses_it_on_reapply(kube_env, prefect_api, monkeypatch, tmp_path, local_services,
                                                          caplog):
    for logger in ("infra.kube.jobs", "infra.platforms.kubernetes"):  # the Job's report; the registry fallback
        caplog.set_level(logging.INFO, logger=logger)
    kube = kube_env
    srv, reg = local_services
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    kube.add_node("gpu-0", labels={"app": "phi-3-adapter"}, taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])
    path = _tuning_seed_copy(tmp_path, srv, reg)
    image = f"{reg.host}/image-name-here:0.0.1"
    pushed: list[str] = []
    kube.controllers.on_job_complete = lambda job: pushed.append(
        registry.push_adapter(_adapter(tmp_path), image, model_name="phi-3-mini-4k-instruct"))

    result = _run(path)
    assert len(pushed) == 1 and result["image"]["reference"] == pushed[0]
    assert "no termination message from the push-adapter container; resolved the tag" in caplog.text
    (job,) = kube.list("batch/v1", "Job", "default", labels={"kaito.sh/workspace": "workspace-phi-3-mini"})
    assert job["metadata"]["labels"]["kaiflow.io/cache-key"] == result["tuning"]["cache_key"][:63]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    pull, tune = pod["initContainers"]
    assert pull["command"][:4] == ["python", "-m", "infra.pod", "pull-data"]
    assert srv.url_for("train.jsonl") in pull["command"][5]
    assert tune["command"][:3] == ["python", "-m", "tuning"] and "qlora" in tune["command"]
    assert tune["resources"]["limits"] == {GPU: "1"}
    (push,) = pod["containers"]
    assert push["command"][:4] == ["python", "-m", "infra.pod", "push-adapter"]
    assert push["command"][push["command"].index("--image") + 1] == image
    assert "/mnt/secrets/ACR_REGISTRY_SECRET_HERE/config.json" in push["command"]
    secret_vol = next(v for v in pod["volumes"] if "secret" in v)
    assert secret_vol["secret"] == {"secretName": "ACR_REGISTRY_SECRET_HERE",
                                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    cr = kube.get("kaito.sh/v1alpha1", "Workspace", "workspace-phi-3-mini", "default")
    conds = {c["type"]: (c["status"], c["reason"]) for c in cr["status"]["conditions"]}
    assert conds["JobStarted"] == ("True", "TuningCompleted") and conds["WorkspaceSucceeded"][0] == "True"

    jobs_applied = sum(1 for r in kube.requests if r.method == "PATCH" and "/jobs/" in r.path)
    again = _run(path)
    assert again["tuning"]["reused"] is True and again["image"]["reference"] == pushed[0]
    assert sum(1 for r in kube.requests if r.method == "PATCH" and "/jobs/" in r.path) == jobs_applied
    assert len(pushed) == 1


def test_job_failure_sets_job_started_false_with_the_message(kube_env, prefect_api, monkeypatch, tmp_path, local_services):
    kube = kube_env
    srv, reg = local_services
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    kube.add_node("gpu-0", labels={"app": "phi-3-adapter"})
    kube.controllers.job_outcome = ("failed", "BackoffLimitExceeded", "torch.OutOfMemoryError: CUDA out of memory",
                                    "tune")  # the tune init container fails
    with pytest.raises(KaiflowError, match="tuning Job default/workspace-phi-3-mini-tune-.* failed: BackoffLimitExceeded"):
        _run(_tuning_seed_copy(tmp_path, srv, reg))
    cond = status.get_condition(records.load("workspace-phi-3-mini").conditions, status.JOB_STARTED)
    assert cond["status"] == "False" and cond["reason"] == "TuningFailed"
    assert "BackoffLimitExceeded" in cond["message"] and "kaiflow logs workspace-phi-3-mini --tuning" in cond["message"]
    assert "container tune Error (exit 1): torch.OutOfMemoryError: CUDA out of memory" in cond["message"]


def test_pushed_digest_comes_from_the_push_containers_termination_message(
        kube_env, prefect_api, monkeypatch, tmp_path, local_services, caplog):
    """The Job's own push-adapter command runs (``infra.pod``, its --dir mapped to a local folder)
    and writes the termination log; the tag is then moved to another push, so the registry
    fallback would give a different digest than the one the Job pushed."""
    for logger in ("infra.kube.jobs", "infra.platforms.kubernetes"):  # the Job's report; the registry fallback
        caplog.set_level(logging.INFO, logger=logger)
    kube = kube_env
    srv, reg = local_services
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    kube.add_node("gpu-0", labels={"app": "phi-3-adapter"}, taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])
    image = f"{reg.host}/image-name-here:0.0.1"
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("KAIFLOW_TERMINATION_LOG", str(termination_log))
    later = tmp_path / "later-adapter"
    later.mkdir()
    (later / "adapter_config.json").write_text('{"r": 16, "peft_type": "LORA"}')
    (later / "adapter_model.safetensors").write_bytes(b"\1" * 64)
    moved: list[str] = []

    def push_container_runs(job: dict) -> str:
        (push,) = job["spec"]["template"]["spec"]["containers"]
        args = list(push["command"][3:])
        args[args.index("--dir") + 1] = str(_adapter(tmp_path))
        assert pod_main.main(args) == 0
        moved.append(registry.push_adapter(later, image, model_name="phi-3-mini-4k-instruct"))
        return termination_log.read_text()

    kube.controllers.on_job_complete = push_container_runs
    result = _run(_tuning_seed_copy(tmp_path, srv, reg))

    from_message = json.loads(termination_log.read_text())["reference"]
    assert from_message.startswith(f"{reg.host}/image-name-here@sha256:") and moved and moved[0] != from_message
    assert result["image"]["reference"] == from_message
    assert result["image"]["digest"] == from_message.rsplit("@", 1)[1]
    assert records.load("workspace-phi-3-mini").adapter_image == from_message
    assert "read from the termination message of pod workspace-phi-3-mini-tune-" in caplog.text
    assert "resolved the tag" not in caplog.text
    (pod,) = kube.list("v1", "Pod", "default", labels={"kaito.sh/workspace": "workspace-phi-3-mini"})
    assert [c["name"] for c in pod["status"]["initContainerStatuses"]] == ["pull-data", "tune"]
    (push_status,) = pod["status"]["containerStatuses"]
    assert push_status["name"] == "push-adapter" and push_status["state"]["terminated"]["exitCode"] == 0
    result_cm = kube.get("v1", "ConfigMap", "workspace-phi-3-mini-tuning-result", "default")
    assert result_cm["data"]["reference"] == from_message


def test_conflicts_500s_and_timeouts_are_retried(kube_env, prefect_api, monkeypatch):
    kube = kube_env
    monkeypatch.setenv("KAIFLOW_PROVISIONER", "byo")
    kube.add_node("gpu-0", labels={"apps": "phi-3"})
    name = "workspace-phi-3-mini"
    b = loader.load_files([REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"])
    workspace_flow(workspace=b.workspaces[0], config_maps=b.config_maps, platform="kubernetes")
    kube.conflict_next("StatefulSet", name, times=2)  # on the re-apply: the objects exist now
    kube.fail_next("PATCH", rf"/services/{name}$", status=500, times=2)
    kube.fail_next("GET", r"/api/v1/nodes$", status=0, times=1, delay_s=4)  # client timeout is 3 s
    kube.fail_next("PATCH", r"/workspaces/", status=503, times=1)
    b = loader.load_files([REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"])
    result = workspace_flow(workspace=b.workspaces[0], config_maps=b.config_maps, platform="kubernetes")
    assert result["inference"]["service"] == name
    assert [f.times for f in kube.faults] == [0, 0, 0], "every injected 500/503/timeout was met and retried past"
    assert all(c[2] == 0 for c in kube.store.conflicts), "both 409s on the StatefulSet were met and retried past"
    cond = status.get_condition(records.load(name).conditions, status.INFERENCE_READY)
    assert cond["status"] == "True"
    assert kube.get("apps/v1", "StatefulSet", name, "default") is not None
