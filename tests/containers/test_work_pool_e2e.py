"""The Kubernetes work pool for real, on REAL containers: a prefect-kubernetes worker polls a pool made
from kaiflow's base job template (deployments/work-pools/), so a ``workspace`` deployment run becomes
a Job in the fake cluster whose pod runs kaiflow's image as a podman container
(tests/support/fakekube/podman.py). Inside that pod the flow reaches the cluster the way it does on a
real one — in-cluster configuration: the service-account token and ``ca.crt`` the kubelet mounts,
``KUBERNETES_SERVICE_HOST/PORT``, the API over HTTPS (``FakeKube.serve_tls``) — and starts, as
containers of the same image:

    tuning Job: pull-data (from a file server) → tune (QLoRA on tiny-phi-3) → push-adapter (to
      docker-registry; its digest comes back through /dev/termination-log, read from the pod status)
    inference StatefulSet pod: pull-adapters (by that digest) → python -m serving, Ready by its
      readinessProbe, answering /chat and the OpenAI API through the adapter as taught.

The flow run completes in the Prefect server; its pod knows its image only from the pool's ``image``
variable (the template passes it on as KAIFLOW_IMAGE), starts in the image's /app (the deployment's
pull step on a Kubernetes pool), and gets the run's settings from the pool's env, as the Helm chart
sets them. Every command, path, user (uid 1000), volume and termination message is the manifests'
own. Pods share the host network (the serving pod's port 5000 is the host's; the pods reach the
Prefect API, the registry and the file server on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from infra import registry
from infra.kube import manifests
from tests.retrain.conftest import CONFIG
from tests.support import controller_deployments
from tests.support.fakekube.podman import PodmanKubelet, podman_env
from tests.support.fileserver import FileServer, write_qa_jsonl
from tests.support.waiting import wait_for
from tests.support.workspaces import KUBE_TUNE_AND_SERVE, QA_PAIRS
from workspace import loader

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "ctr"
POOL = "e2e-kubernetes"
DEPLOYMENT = "e2e-k8s"
PAIRS = QA_PAIRS[:4]
TEXT = CONFIG + KUBE_TUNE_AND_SERVE
# what the pool's env carries to every flow-run pod (the chart's worker sets KAIFLOW_* there too)
POOL_ENV = {"KAIFLOW_PROVISIONER": "byo", "KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "900",
            "KAIFLOW_RETRY_BACKOFF_S": "0.2"}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _set_pool_defaults(pool: str, image: str, env: dict[str, str]) -> None:
    """What the Helm chart's sync-work-pool step does: the pool's image and env defaults filled in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        template = client.read_work_pool(pool).base_job_template
        props = template["variables"]["properties"]
        props["image"]["default"] = image
        props["env"]["default"] = env
        props["pod_watch_timeout_seconds"]["default"] = 900
        client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))


def _start_worker(api: str, kubeconfig: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api, "KUBECONFIG": str(kubeconfig), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": "default",
           "PREFECT_HOME": str(log.parent / "prefect-home")}
    for key in [k for k in env if k.startswith("KAIFLOW_")]:   # the worker knows nothing of kaiflow's settings
        del env[key]
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "kubernetes",
                                 "--name", "e2e-worker"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def test_a_workspace_run_on_the_kubernetes_pool_runs_in_kaiflows_image_and_serves_the_adapter(
        kube_env, prefect_api, pushed_image, image_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    kube = kube_env.serve_tls()
    for key in ("KAIFLOW_PROVISIONER", "KAIFLOW_ALLOW_PRIVATE_URLS"):   # the caller's admission check, as in the pod
        monkeypatch.setenv(key, POOL_ENV[key])
    assert _port_free(manifests.SERVER_PORT), f"port {manifests.SERVER_PORT} is taken: the serving pod uses the host's"
    kube.add_node("gpu-0", labels={"app": NAME})
    kubelet = PodmanKubelet(kube, tmp_path / "pods")   # no node_env: the pods get only what the manifests give
    kube.controllers.kubelet = kubelet
    controller_deployments.register(POOL, DEPLOYMENT, pool_type="kubernetes")
    _set_pool_defaults(POOL, pushed_image, POOL_ENV)
    kubeconfig = kube.write_kubeconfig(tmp_path / "worker-kubeconfig")
    worker = _start_worker(prefect_api, kubeconfig, tmp_path / "worker.log")
    (tmp_path / "www").mkdir()
    try:
        with FileServer(tmp_path / "www") as srv:
            write_qa_jsonl(tmp_path / "www" / "qa.jsonl", PAIRS * 3)
            image = f"{image_registry.host}/adapters/{NAME}:1"
            bundle = loader.load_text(TEXT.format(name=NAME, url=srv.url_for("qa.jsonl"), image=image), source="ctr.yaml")
            run = run_deployment(f"workspace/{DEPLOYMENT}", timeout=0, as_subflow=False,
                                 parameters={"workspace": bundle.workspaces[0].to_parameters(),
                                             "config_maps": bundle.config_maps, "platform": "kubernetes"})
            with get_client(sync_client=True) as client:
                def final():
                    r = client.read_flow_run(run.id)
                    assert worker.poll() is None, f"the worker exited: {(tmp_path / 'worker.log').read_text()[-3000:]}"
                    return r if r.state and r.state.type.value in FINAL else None
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
            from_pod = [r for r in kube.requests if r.token == "fakekube-sa-default-default"]
            assert from_pod and all(r.https for r in from_pod)
            assert any(r.method in ("POST", "PATCH", "PUT") and "/jobs" in r.path for r in from_pod)

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
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        kube.controllers.kubelet = None
        kubelet.stop()
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label=kaiflow-fakekube={kubelet.tag}"],
                          capture_output=True, text=True, env=podman_env()).stdout.split()
    assert left == [] and kubelet.errors == []


def _logs_of(run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
