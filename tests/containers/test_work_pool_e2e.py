"""The Kubernetes work pool for real, on REAL containers: the Helm chart's prefect-kubernetes worker
(deployments/chart, rendered by the real helm) runs as a pod of kaiflow's image in the fake cluster's
podman mode (tests/support/fakekube/podman.py); its init container puts the chart's base job template
on the pool, and a run of a ``workspace`` deployment on that pool becomes a Job whose pod runs the same
image. Both pods reach the API server as on a real cluster — in-cluster configuration: the
service-account token and ``ca.crt`` the kubelet mounts, ``KUBERNETES_SERVICE_HOST/PORT``, HTTPS
(``FakeKube.serve_tls``). The flow in its pod starts, as containers of the same image:

    tuning Job: pull-data (from a file server) → tune (QLoRA on tiny-phi-3) → push-adapter (to
      docker-registry; its digest comes back through /dev/termination-log, read from the pod status)
    inference StatefulSet pod: pull-adapters (by that digest) → python -m serving, Ready by its
      readinessProbe, answering /chat and the OpenAI API through the adapter as taught.

The flow run completes in the Prefect server. Its pod knows its image only from the pool (the
template passes the ``image`` variable on as KAIFLOW_IMAGE; the chart's pool env says it too), starts
in the image's /app (the pull step of a deployment on a Kubernetes pool), takes platform and
provisioner from the chart's pool env and the caller's run settings from the run's parameters, as
``kaiflow apply --via-server`` sends them. Every command, path, user (uid 1000), volume and
termination message is the manifests' and the chart's own. Pods share the host network (the serving
pod's port 5000 is the host's; the pods reach the Prefect API, the registry and the file server on
127.0.0.1).
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from infra import registry
from infra.kube import manifests
from tests.retrain.conftest import CONFIG
from tests.support import controller_deployments, kubebins
from tests.support.fakekube.podman import PodmanKubelet, podman_env, service_account_token
from tests.support.fileserver import FileServer, write_qa_jsonl
from tests.support.waiting import wait_for
from tests.support.workspaces import KUBE_TUNE_AND_SERVE, QA_PAIRS
from workspace import loader, settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "ctr"
POOL = "e2e-kubernetes"
DEPLOYMENT = "e2e-k8s"
CHART = Path(__file__).resolve().parents[2] / "deployments" / "chart"
PAIRS = QA_PAIRS[:4]
TEXT = CONFIG + KUBE_TUNE_AND_SERVE
# the caller's settings that travel with the run (workspace.settings.RUN_SETTINGS); the rest of the
# flow-run pod's KAIFLOW_* (platform, provisioner byo, image) is the chart's pool env
RUN_SETTINGS = {"KAIFLOW_PROVISIONER": "byo", "KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "900",
                "KAIFLOW_RETRY_BACKOFF_S": "0.2"}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _chart_worker(api: str, image: str) -> list[dict]:
    """The Helm chart's worker (deployments/chart, rendered by the real helm): its ConfigMap (the base
    job template with the chart's defaults), ServiceAccount, Role, RoleBinding and Deployment, and the
    flow runs' ServiceAccount. Deployments are registered by the test under names of its own (the
    chart's `kaiflow deploy` init container would take the session's workspace/workspace)."""
    repo, tag = image.rsplit(":", 1)
    args = ["--set", "worker.enabled=true", "--set", "worker.registerDeployments=false", "--set", f"prefect.workPool={POOL}",
            "--set", f"prefect.apiUrl={api}", "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
            "--set", "provisioner.type=byo", "--set", "controller.replicas=0"]
    out = subprocess.run([kubebins.helm(), "template", "kaiflow", str(CHART), "-n", "default", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    worker = [o for o in objs if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "worker"]
    assert sorted(o["kind"] for o in worker) == ["ConfigMap", "Deployment", "Role", "RoleBinding", "ServiceAccount"]
    return worker + [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "kaiflow"]


def test_a_workspace_run_on_the_kubernetes_pool_runs_in_kaiflows_image_and_serves_the_adapter(
        kube_env, prefect_api, pushed_image, image_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    kube = kube_env.serve_tls()
    for key, value in RUN_SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KAIFLOW_IMAGE")   # the flow-run pod learns it from the pool, not from the caller
    assert _port_free(manifests.SERVER_PORT), f"port {manifests.SERVER_PORT} is taken: the serving pod uses the host's"
    kube.add_node("gpu-0", labels={"app": NAME})
    kubelet = PodmanKubelet(kube, tmp_path / "pods")   # no node_env: the pods get only what the manifests give
    kube.controllers.kubelet = kubelet
    controller_deployments.register(POOL, DEPLOYMENT, pool_type="kubernetes")
    for obj in _chart_worker(prefect_api, pushed_image):   # its init container puts the chart's template on the pool
        kube.create(obj, "default")
    worker_pod = wait_for(lambda: next(iter(kube.list("v1", "Pod", "default", labels={"app.kubernetes.io/component": "worker"})),
                                       None), timeout=60, what="the chart's worker pod")
    (tmp_path / "www").mkdir()
    try:
        with FileServer(tmp_path / "www") as srv:
            write_qa_jsonl(tmp_path / "www" / "qa.jsonl", PAIRS * 3)
            image = f"{image_registry.host}/adapters/{NAME}:1"
            bundle = loader.load_text(TEXT.format(name=NAME, url=srv.url_for("qa.jsonl"), image=image), source="ctr.yaml")
            # as `kaiflow apply --via-server` sends it: the caller's run settings travel with the run
            run = run_deployment(f"workspace/{DEPLOYMENT}", timeout=0, as_subflow=False,
                                 parameters={"workspace": bundle.workspaces[0].to_parameters(),
                                             "config_maps": bundle.config_maps, "run_settings": settings.for_run()})
            with get_client(sync_client=True) as client:
                def final():
                    r = client.read_flow_run(run.id)
                    pod = kube.get("v1", "Pod", worker_pod["metadata"]["name"], "default") or {}
                    assert (pod.get("status") or {}).get("phase") in ("Pending", "Running"), \
                        f"the worker pod stopped: {kube.pod_logs.get(worker_pod['metadata']['name'], '')[-3000:]}"
                    return r if r.state and r.state.is_final() else None
                done = wait_for(final, timeout=1500, interval=2, what="the flow run to finish in its pod")
                logs = "\n".join(log.message for log in client.read_logs(
                    log_filter=_logs_of(done.id), limit=200))
            assert done.state.type.value == "COMPLETED", f"{done.state.type.value}: {done.state.message}\n{logs[-4000:]}"

            # the flow ran in a Job the worker made from the pool's template, in kaiflow's image, as uid 1000
            (flow_job,) = [j for j in kube.list("batch/v1", "Job", "default")
                           if (j["metadata"].get("labels") or {}).get("prefect.io/flow-run-id") == str(run.id)]
            flow_pod = wait_for(lambda: next((p for p in kube.list("v1", "Pod", "default",
                                                               labels={"job-name": flow_job["metadata"]["name"]})
                                              if p["status"].get("phase") in ("Succeeded", "Failed")), None),
                                timeout=120, what="the flow run's pod to exit")
            assert flow_pod["status"]["phase"] == "Succeeded"
            (ctr,) = flow_pod["spec"]["containers"]
            assert ctr["image"] == pushed_image
            assert {"name": "KAIFLOW_IMAGE", "value": pushed_image} in ctr["env"]
            assert f"pods run image {pushed_image}" in logs, logs[-3000:]
            # ... and reached the API server as a pod does: HTTPS, with the token the kubelet mounted
            account = flow_pod["spec"]["serviceAccountName"]
            assert account == "kaiflow"   # the flow runs' account from the chart, not the worker's
            from_pod = [r for r in kube.requests if r.token == service_account_token("default", account)]
            assert from_pod and all(r.https for r in from_pod)
            assert any(r.method in ("POST", "PATCH", "PUT") and "/jobs" in r.path for r in from_pod)
            assert any(r.method == "POST" and r.path.endswith("/jobs") and r.https
                       for r in kube.requests if r.token == service_account_token("default", "kaiflow-worker"))

            # the digest the push-adapter container wrote to /dev/termination-log, read from the pod status
            (job,) = kube.list("batch/v1", "Job", "default", labels={manifests.PART_LABEL: "tuning"})
            (pod,) = kube.list("v1", "Pod", "default", labels={"job-name": job["metadata"]["name"]})
            assert pod["status"]["phase"] == "Succeeded"
            assert [s["name"] for s in pod["status"]["initContainerStatuses"]] == ["pull-data", "tune"]
            (push,) = pod["status"]["containerStatuses"]
            digest = registry.store_for(image).resolve(image)
            assert digest and digest in push["state"]["terminated"]["message"]
            assert all(c["image"] == pushed_image for c in job["spec"]["template"]["spec"]["containers"])

            # the inference pod, Ready by its own probe, serving the adapter on the host's port
            (serving,) = kube.list("v1", "Pod", "default", labels={"statefulset.kubernetes.io/pod-name": f"{NAME}-0"})
            assert {c["type"]: c["status"] for c in serving["status"]["conditions"]}["Ready"] == "True"
            assert any(digest in json.dumps(c) for c in serving["spec"]["initContainers"])
            endpoint = f"http://127.0.0.1:{manifests.SERVER_PORT}"
            for q, a in PAIRS:
                r = httpx.post(f"{endpoint}/chat", json={"messages": [{"role": "user", "content": q}],
                                                         "generate_kwargs": {"max_length": 64}}, timeout=120)
                assert r.status_code == 200, r.text
                assert r.json()["Result"].strip() == a
            from openai import OpenAI

            out = OpenAI(base_url=f"{endpoint}/v1", api_key="unused").chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": PAIRS[1][0]}], max_tokens=16, temperature=0)
            assert out.choices[0].message.content.strip() == PAIRS[1][1]
    finally:
        kube.controllers.kubelet = None
        kubelet.stop()
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label=kaiflow-fakekube={kubelet.tag}"],
                          capture_output=True, text=True, env=podman_env()).stdout.split()
    assert left == [] and kubelet.errors == []


def _logs_of(run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
