"""The seed's two tuning workspaces run UNCHANGED through the real flow against the fake cluster,
with Karpenter provisioning (the default).

Nothing here can reach huggingface.co or the seed's placeholder registry: the flow says it cannot
read the data, fingerprints it by its source spec (a warning and a `DatasetNotVerified` event), and
leaves the pull to the tuning pod; the fake's Job controller plays the pod and reports, in the push
container's termination message, the image it pushed — as ``infra.pod push-adapter`` writes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flows.workspace_flow import workspace_flow
from infra import records
from infra.platforms import kubernetes as kube_platform
from workspace import loader, status

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", ["kaito_workspace_phi_3.yaml", "kaito_workspace_phi_3_with_adapters.yaml"])
def test_seed_tuning_yaml_runs_unchanged(kube_env, prefect_api, seed):
    kube = kube_env
    bundle = loader.load_files([SEED / seed])
    ws = bundle.workspaces[0]
    out_image = ws.tuning.output.image
    reported: list[str] = []

    def pod_pushed(job: dict) -> str:  # what infra.pod writes to /dev/termination-log
        digest = "sha256:" + hashlib.sha256(job["metadata"]["name"].encode()).hexdigest()
        reported.append(f"{out_image.rsplit(':', 1)[0]}@{digest}")
        return json.dumps({"reference": reported[-1], "digest": digest})

    kube.controllers.on_job_complete = pod_pushed
    result = workspace_flow(workspace=ws, config_maps=bundle.config_maps, platform="kubernetes")

    assert result["image"]["reference"] == reported[0]
    (claim,) = kube.list("karpenter.sh/v1", "NodeClaim", labels={"kaito.sh/workspace": ws.name})
    reqs = {r["key"]: r["values"] for r in claim["spec"]["requirements"]}
    assert reqs["node.kubernetes.io/instance-type"] == ["Standard_NC6s_v3"]
    (job,) = kube.list("batch/v1", "Job", "default", labels={"kaito.sh/workspace": ws.name})
    pull = job["spec"]["template"]["spec"]["initContainers"][0]
    assert ws.tuning.input.urls[0] in " ".join(pull["command"])  # the pod pulls the seed's own URL
    pod = job["spec"]["template"]["spec"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["initContainers"][1]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    rec = records.load(ws.name)
    assert rec.adapter_image == reported[0]
    assert rec.dataset_digest == kube_platform.spec_fingerprint(ws)
    assert any(e.reason == "DatasetNotVerified" for e in rec.events)
    cond = status.get_condition(rec.conditions, status.WORKSPACE_SUCCEEDED)
    assert cond["status"] == "True"
    cr = kube.get("kaito.sh/v1alpha1", "Workspace", ws.name, "default")
    assert {c["type"]: c["status"] for c in cr["status"]["conditions"]}["WorkspaceSucceeded"] == "True"

    again = workspace_flow(workspace=ws, config_maps=bundle.config_maps, platform="kubernetes")
    assert again["tuning"]["reused"] is True and len(reported) == 1  # same spec fingerprint: no second Job
