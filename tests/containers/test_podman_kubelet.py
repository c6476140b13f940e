"""The fake cluster's podman mode on its own (tests/support/fakekube/podman.py): objects created
through the real ``kubernetes`` client, pods run as podman containers of the Debian base image
kaiflow's image is built on (deployments/images/build.sh makes it), status read back through the API."""

from __future__ import annotations

import base64
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.containers.images import build
from tests.support.fakekube.podman import PodmanKubelet, podman_env
from tests.support.waiting import wait_for

BASE = "localhost/kaiflow-base:bookworm"
pytestmark = [pytest.mark.fake, pytest.mark.slow]


@pytest.fixture(scope="module")
def base_image() -> str:
    build()   # makes the base first (and the kaiflow image the other container tests share)
    return BASE


@pytest.fixture
def podman_kube(kube_crds, base_image, tmp_path: Path) -> Iterator[Any]:  # noqa: F811 (fixture from conftest)
    kube = kube_crds
    kube.add_node("node-0", labels={})
    kubelet = PodmanKubelet(kube, tmp_path / "pods")
    kube.controllers.kubelet = kubelet
    try:
        yield kube
    finally:
        kube.controllers.kubelet = None
        kubelet.stop()
        left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label=kaiflow-fakekube={kubelet.tag}"],
                              capture_output=True, text=True, env=podman_env()).stdout.split()
        assert left == [], f"containers left behind: {left}"
        assert kubelet.errors == []


def _container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": BASE, "command": ["sh", "-c", script], **extra}


def _job(name: str, init: list[dict], main: dict) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
                "initContainers": init, "containers": [main],
                "volumes": [{"name": "work", "emptyDir": {}},
                            {"name": "cfg", "configMap": {"name": "cfg"}},
                            {"name": "sec", "secret": {"secretName": "sec", "items": [{"key": "token", "path": "t/token"}]}}]}}}}


def _finished(kube, name: str) -> dict[str, Any] | None:
    job = kube.get("batch/v1", "Job", name, "default")
    conds = {c["type"]: c["status"] for c in (job.get("status") or {}).get("conditions") or []}
    return job if conds.get("Complete") == "True" or conds.get("Failed") == "True" else None


def _pod_of(kube, job: str) -> dict[str, Any]:
    (pod,) = kube.list("v1", "Pod", "default", labels={"job-name": job})
    return pod


def _setup(kube_client) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})
    core.create_namespaced_secret("default", {"metadata": {"name": "sec"},
                                              "data": {"token": base64.b64encode(b"s3cret").decode()}})


@pytest.fixture
def kube_client(podman_kube, tmp_path: Path):
    from kubernetes import config

    api = config.new_client_from_config(str(podman_kube.write_kubeconfig(tmp_path / "kubeconfig")))
    yield api
    api.close()


def test_job_pod_runs_init_containers_in_order_with_volumes_and_reports_its_termination_message(podman_kube, kube_client):
    from kubernetes import client

    _setup(kube_client)
    mounts = [{"name": "work", "mountPath": "/work"}, {"name": "cfg", "mountPath": "/cfg", "readOnly": True},
              {"name": "sec", "mountPath": "/sec", "readOnly": True}]
    job = _job("steps", [
        _container("first", "echo first > /work/order && cat /cfg/greeting > /work/greeting", volumeMounts=mounts),
        _container("second", "test -f /work/order && echo second >> /work/order && echo \"$TOKEN\" > /work/token",
                   volumeMounts=mounts, env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}}]),
    ], _container("main", "echo main log line; printf '%s|' \"$(tr '\\n' ' ' < /work/order)\" \"$(cat /work/greeting)\" "
                          "\"$(cat /sec/t/token)\" \"$(id -u)\" > /dev/termination-log", volumeMounts=mounts))
    client.BatchV1Api(kube_client).create_namespaced_job("default", job)

    done = wait_for(lambda: _finished(podman_kube, "steps"), 300, "the Job finished")
    assert {c["type"]: c["status"] for c in done["status"]["conditions"]}["Complete"] == "True"
    pod = _pod_of(podman_kube, "steps")
    assert pod["status"]["phase"] == "Succeeded"
    assert [(s["name"], s["state"]["terminated"]["exitCode"]) for s in pod["status"]["initContainerStatuses"]] == \
        [("first", 0), ("second", 0)]
    (main,) = pod["status"]["containerStatuses"]
    assert main["state"]["terminated"]["message"] == "first second |hello|s3cret|1000|"
    log = client.CoreV1Api(kube_client).read_namespaced_pod_log(pod["metadata"]["name"], "default",
                                                                _preload_content=False).data.decode()
    assert "main log line" in log


def test_failed_init_container_fails_the_job_and_main_never_starts(podman_kube, kube_client):
    from kubernetes import client

    _setup(kube_client)
    job = _job("broken", [_container("pull", "echo 'error: no such dataset' > /dev/termination-log; exit 3")],
               _container("main", "echo should not run"))
    client.BatchV1Api(kube_client).create_namespaced_job("default", job)

    done = wait_for(lambda: _finished(podman_kube, "broken"), 300, "the Job finished")
    assert {c["type"]: c["status"] for c in done["status"]["conditions"]}["Failed"] == "True"
    pod = _pod_of(podman_kube, "broken")
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 3
    assert init["state"]["terminated"]["message"].strip() == "error: no such dataset"
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deployment_pod_is_ready_by_its_probe_reachable_on_the_host_and_stopped_when_deleted(podman_kube, kube_client):
    from kubernetes import client

    port = _free_port()
    container = _container("web", f"echo up > /srv/health && cd /srv && exec python3 -m http.server {port} --bind 127.0.0.1",
                           volumeMounts=[{"name": "srv", "mountPath": "/srv"}],
                           readinessProbe={"httpGet": {"path": "/health", "port": port}, "periodSeconds": 1})
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [container], "volumes": [{"name": "srv", "emptyDir": {}}]}}}}
    apps = client.AppsV1Api(kube_client)
    apps.create_namespaced_deployment("default", deploy)
    wait_for(lambda: (podman_kube.get("apps/v1", "Deployment", "web", "default").get("status") or {}).get("readyReplicas"),
             300, "the Deployment's pod Ready")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
        assert resp.read() == b"up\n"
    apps.delete_namespaced_deployment("web", "default", propagation_policy="Background")
    kubelet = podman_kube.controllers.kubelet
    wait_for(lambda: not kubelet.pods, 60, "the kubelet forgot the deleted pod")

    def closed() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        except OSError:
            return True
        return False
    wait_for(closed, 60, "the container stopped")
