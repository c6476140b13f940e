"""Eval-gated retraining on the kubernetes platform: the real retrain flow against the fake cluster
(the real ``kubernetes`` client over HTTP), a real Prefect server, a real docker-registry and data
over HTTP. The fake's Job controller plays the pods by running each Job's OWN container commands on
this machine, paths under /mnt and /dev/termination-log mapped to a folder per pod: ``pull-data``,
``python -m tuning`` on tiny-phi-3 and ``push-adapter`` (a real push to the candidate tag) for the
tuning Jobs; ``pull-data``, ``pull-adapters`` (real pulls by digest) and ``python -m
tuning.evaluate`` for the evaluation Job, whose summary file is the termination message the flow
reads. So the decisions below are made by real scores:

    apply (adapter A) → data unchanged: no Job at all
    → data that helps, the evaluation Job fails: a clear error, nothing promoted
    → the same data again: the candidate is reused, evaluated → Promoted (tag and StatefulSet moved)
    → data that hurts → Rejected (tag and StatefulSet untouched)

The helpful/harmful data are those of tests/retrain/test_retrain_flow.py (read its docstring).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from flows import retrain
from infra import pod as pod_main, records, registry
from infra.kube import manifests
from tests.retrain.conftest import CONFIG, ENV
from tests.support.workspaces import KUBE_TUNE_AND_SERVE
from tests.retrain.test_retrain_flow import COPIES, N, P, decision_artifact, held_out_positions
from tests.support.fileserver import FileServer, write_qa_jsonl as write_rows
from tests.support.registry import LocalRegistry
from workspace import loader, plan
from workspace.errors import KaiflowError

REPO = Path(__file__).resolve().parents[2]
VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")
NAME = "rtk"

TEXT = CONFIG + KUBE_TUNE_AND_SERVE


class Pods:
    """The fake's ``on_job_complete``: runs a Job's containers here, in order; returns the main
    container's termination message. ``fail_evaluation``: the next evaluation Job fails in its
    evaluate container (as a CUDA OOM would), through the fake's Job outcome."""

    def __init__(self, kube, work: Path, image: str, termination_log: Path):
        self.kube, self.work, self.image, self.termination_log = kube, work, image, termination_log
        self.ran: list[tuple[str, str]] = []  # (part, job name)
        self.tag_during_evaluation: list[str | None] = []
        self.evaluation_messages: list[str] = []
        self.fail_evaluation = False

    def __call__(self, job: dict) -> str:
        part = job["metadata"]["labels"][manifests.PART_LABEL]
        name = job["metadata"]["name"]
        self.ran.append((part, name))
        if part == "evaluation":  # the output tag, read from the registry while the evaluation "runs"
            self.tag_during_evaluation.append(registry.store_for(self.image).resolve(self.image))
        if part == "tuning" and self.fail_evaluation:
            self.fail_evaluation = False
            self.kube.controllers.job_outcome = ("failed", "BackoffLimitExceeded",
                                                 "error: OutOfMemoryError: CUDA out of memory", "evaluate")
        message = self.run(job)
        if part == "evaluation":
            self.evaluation_messages.append(message)
        return message

    def run(self, job: dict) -> str:
        pod = job["spec"]["template"]["spec"]
        root = self.work / job["metadata"]["name"]
        dirs = {"/mnt/data": root / "data", "/mnt/output": root / "output", "/mnt/adapters": root / "adapters",
                "/mnt/config": root / "config", "/dev/termination-log": self.termination_log}
        for d in list(dirs.values())[:-1]:
            d.mkdir(parents=True, exist_ok=True)
        for vol in pod["volumes"]:  # the ConfigMap volume, as the kubelet projects it
            if "configMap" in vol:
                cm = self.kube.get("v1", "ConfigMap", vol["configMap"]["name"], "default")
                for key, text in cm["data"].items():
                    (root / "config" / key).write_text(text)
        self.termination_log.write_text("")
        for c in pod["initContainers"] + pod["containers"]:
            args = [_remap(a, dirs) for a in c["command"]]
            assert args[0] == "python"
            if args[1:3] == ["-m", "infra.pod"]:
                assert pod_main.main(args[3:]) == 0, f"{c['name']} failed"
            else:
                proc = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
                assert proc.returncode == 0, f"{c['name']}: {proc.stderr[-3000:]}"
        return self.termination_log.read_text()


def _remap(arg: str, dirs: dict[str, Path]) -> str:
    """``arg`` with the pod's paths (also inside ``NAME=/mnt/...``) moved to this pod's folders."""
    for prefix, local in dirs.items():
        arg = re.sub(re.escape(prefix) + r"(?=/|$)", str(local), arg)
    return arg


def _jobs(kube, part: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in kube.list("batch/v1", "Job", "default",
                                                          labels={manifests.PART_LABEL: part}))


def _served_adapters(kube) -> list[str]:
    sts = kube.get("apps/v1", "StatefulSet", NAME, "default")
    (pull,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert pull["name"] == "pull-adapters"
    cmd = pull["command"]
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--adapter"]


@pytest.mark.slow
def test_retrain_on_kubernetes_unchanged_failed_promoted_rejected(kube_env, prefect_api, tiny_model, monkeypatch,
                                                                   tmp_path):
    kube = kube_env
    for key, value in {**ENV, "KAIFLOW_PROVISIONER": "byo", "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "240",
                       "KAIFLOW_TERMINATION_LOG": str(tmp_path / "termination-log")}.items():
        monkeypatch.setenv(key, value)
    for node in ("gpu-0", "gpu-1"):  # one serves, the other runs the Jobs
        kube.add_node(node, labels={"app": NAME})
    (tmp_path / "www").mkdir()
    with FileServer(tmp_path / "www") as srv, LocalRegistry(tmp_path / "registry") as reg:
        image = f"{reg.host}/adapters/{NAME}:1"
        bundle = loader.load_text(TEXT.format(name=NAME, url=srv.url_for("qa.jsonl"), image=image), source="rtk.yaml")
        ws, cms = bundle.workspaces[0], bundle.config_maps
        data = tmp_path / "www" / "qa.jsonl"
        pods = Pods(kube, tmp_path / "pods", image, tmp_path / "termination-log")
        kube.controllers.on_job_complete = pods

        helps = [pair for pair in P + N for _ in range(COPIES)]
        held = held_out_positions(len(helps), tmp_path, cms, ws)
        held_q = {helps[i][0] for i in held}
        assert held_q <= {helps[i][0] for i in range(len(helps)) if i not in held}

        # apply: adapter A pushed by the tuning Job's own push-adapter, served by the StatefulSet
        write_rows(data, P)
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="kubernetes")
        assert out["outcome"] == "FirstRun"
        image_a = records.load(NAME).adapter_image
        digest_a = image_a.rsplit("@", 1)[1]
        assert registry.store_for(image).resolve(image) == digest_a and _served_adapters(kube) == [f"{NAME}={image_a}"]

        # unchanged data: no Job at all
        jobs_before = _jobs(kube, "tuning") + _jobs(kube, "evaluation")
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="kubernetes")
        assert out["outcome"] == "Unchanged" and _jobs(kube, "tuning") + _jobs(kube, "evaluation") == jobs_before

        # helpful data, but the evaluation Job fails: a clear error, nothing promoted
        write_rows(data, helps)
        pods.fail_evaluation = True
        with pytest.raises(KaiflowError, match=r"evaluation Job default/rtk-eval-\w+ failed: BackoffLimitExceeded: "
                           r"container evaluate Error \(exit 1\): error: OutOfMemoryError.*nothing was promoted.*"
                           r"`kaiflow logs rtk --tuning`"):
            retrain.retrain_flow(workspace=ws, config_maps=cms, platform="kubernetes")
        kube.controllers.job_outcome = "succeeded"
        assert registry.store_for(image).resolve(image) == digest_a and _served_adapters(kube) == [f"{NAME}={image_a}"]
        rec = records.load(NAME)
        assert rec.adapter_image == image_a and rec.events[-1].reason == "RetrainFailed"
        (cand_job,) = [n for n in _jobs(kube, "tuning") if "-cand-" in n]
        # the candidate's split lives in a ConfigMap of its own; the user's is as applied
        assert "train_test_split: 0.75" in kube.get("v1", "ConfigMap", f"{NAME}-retrain-config", "default")["data"][
            "training_config.yaml"]
        assert "train_test_split" not in kube.get("v1", "ConfigMap", f"{NAME}-config", "default")["data"][
            "training_config.yaml"]

        # the same data again: the candidate is reused (no second tuning Job), evaluated, promoted
        tuned_before = sum(1 for part, _ in pods.ran if part == "tuning")
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="kubernetes")
        assert out["outcome"] == "Promoted", out["reason"]
        assert sum(1 for part, _ in pods.ran if part == "tuning") == tuned_before
        cand, serv = out["scores"]["adapters"]["candidate"], out["scores"]["adapters"]["serving"]
        assert cand["exact_match"] >= serv["exact_match"] and cand["loss"] < serv["loss"] and out["scores"]["rows"] == len(held)
        assert pods.tag_during_evaluation[-1] == digest_a, "the output tag moved before the decision"
        summary = json.loads(pods.evaluation_messages[-1])  # what a termination message can hold
        assert len(pods.evaluation_messages[-1]) < 4096 and "samples" not in summary
        assert summary["adapters"]["candidate"]["loss"] == cand["loss"]
        result = kube.get("v1", "ConfigMap", f"{NAME}-candidate-result", "default")["data"]
        assert result["job"] == cand_job and result["image"].startswith(f"{reg.host}/adapters/{NAME}:1-candidate-")
        digest_b = result["digest"]
        assert digest_b != digest_a and registry.store_for(result["image"]).resolve(result["image"]) == digest_b
        assert registry.store_for(image).resolve(image) == digest_b  # the tag moved to the candidate's digest
        image_b = f"{reg.host}/adapters/{NAME}@{digest_b}"
        assert out["image"] == image_b and records.load(NAME).adapter_image == image_b
        assert _served_adapters(kube) == [f"{NAME}={image_b}"]
        assert records.load(NAME).events[-1].reason == "RetrainPromoted"
        assert "**Promoted**" in decision_artifact(NAME)

        # the evaluation Job as applied validates strictly, and pulled both adapters by digest
        (eval_job,) = [kube.get("batch/v1", "Job", n, "default") for n in _jobs(kube, "evaluation")]
        body = {"apiVersion": "batch/v1", "kind": "Job", "spec": eval_job["spec"],
                "metadata": {k: eval_job["metadata"][k] for k in ("name", "namespace", "labels", "ownerReferences")}}
        for v in VERSIONS:
            kubernetes_validate.validate(body, v, strict=True)
        pull_adapters = eval_job["spec"]["template"]["spec"]["initContainers"][1]["command"]
        assert f"serving={image_a}" in pull_adapters and any(a.startswith("candidate=") and a.endswith(digest_b)
                                                             for a in pull_adapters)

        # data that hurts: rejected; tag, record and StatefulSet untouched, the candidate tag stays
        wrong = {q: P[(i + 1) % len(P)][1] if i < len(P) else N[(i - len(P) + 1) % len(N)][1]
                 for i, (q, _) in enumerate(P + N)}
        write_rows(data, [(q, a if i in held or q not in held_q else wrong[q]) for i, (q, a) in enumerate(helps)])
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="kubernetes")
        assert out["outcome"] == "Rejected", out["reason"]
        assert "exact-match" in out["reason"] and "the candidate stays at" in out["reason"]
        assert pods.tag_during_evaluation[-1] == digest_b
        assert registry.store_for(image).resolve(image) == digest_b and _served_adapters(kube) == [f"{NAME}={image_b}"]
        rec = records.load(NAME)
        assert rec.adapter_image == image_b and rec.events[-1].reason == "RetrainRejected"
        assert "**Rejected**" in decision_artifact(NAME)
        assert len([n for n in _jobs(kube, "tuning") if "-cand-" in n]) == 2


def test_evaluation_and_candidate_jobs_validate_strictly_and_apply_is_unchanged():
    """The seed's tuning workspace (pull and push secrets): the candidate tuning Job pushes to the
    candidate tag only; the evaluation Job validates for 1.30-1.34 and mounts the push secret to pull."""
    b = loader.load_files([REPO / "examples" / "seed" / "kaito_workspace_phi_3.yaml"])
    ws = b.workspaces[0]
    p = plan.plan_workspace(ws, "kubernetes")
    key = "ab" * 32
    plain = manifests.tuning_job(ws, p, "default", "img:1", cache_key=key)
    assert json.dumps(plain) == json.dumps(manifests.tuning_job(ws, p, "default", "img:1", cache_key=key,
                                                                output_image=None))
    cand_ref = manifests.candidate_reference(ws.tuning.output.image, key)
    cand = manifests.tuning_job(ws, p, "default", "img:1", cache_key=key, output_image=cand_ref)
    push = cand["spec"]["template"]["spec"]["containers"][0]["command"]
    assert push[push.index("--image") + 1] == cand_ref and ws.tuning.output.image not in push
    assert cand["metadata"]["name"] != plain["metadata"]["name"]
    job = manifests.evaluation_job(ws, p, "default", "img:1", name=manifests.evaluation_job_name(ws.name, key, "x"),
                                   cache_key=key, adapters={"serving": "r.io/a@sha256:" + "1" * 64,
                                                            "candidate": "r.io/a@sha256:" + "2" * 64},
                                   config="cfg")
    for obj in (cand, job):
        for v in VERSIONS:
            kubernetes_validate.validate(obj, v, strict=True)
    spec = job["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["pull-data", "pull-adapters"]
    (ev,) = spec["containers"]
    assert ev["command"][:3] == ["python", "-m", "tuning.evaluate"] and "--summary" in ev["command"]
    assert ev["terminationMessagePath"] == "/dev/termination-log" and ev["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert "/mnt/secrets/ACR_REGISTRY_SECRET_HERE/config.json" in spec["initContainers"][1]["command"]


@pytest.mark.parametrize("output,expected", [
    ("reg.io:5000/team/adapter:0.0.1", "reg.io:5000/team/adapter:0.0.1-candidate-abababababab"),
    ("reg.io:5000/team/adapter", "reg.io:5000/team/adapter:latest-candidate-abababababab"),
    ("reg.io/a:" + "t" * 128, "reg.io/a:" + "t" * 105 + "-candidate-abababababab"),
])
def test_candidate_reference_is_a_valid_tag_beside_the_output(output, expected):
    ref = manifests.candidate_reference(output, "ab" * 32)
    assert ref == expected
    parsed = registry.parse_reference(ref)
    assert len(parsed.tag) <= 128 and parsed.tag.endswith("-candidate-abababababab")
