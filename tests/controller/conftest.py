"""The workspace controller's stack: the fake API server (CRDs installed), the session's real Prefect
server, a real process worker, and ``kaiflow controller`` as a real process (SIGKILL-able).

One stack per module (the worker and its deployments are slow to start; each test uses its own
workspace names). The deployments ``workspace/controller-tests`` and ``teardown/controller-tests``
are the project's own flows registered on a pool of their own, so runs of this module are never
picked up by another module's worker (which would run them on another platform).

The controller reaches the API server through :class:`Proxy`, a TCP relay the tests can cut: a
dropped watch, or the API server gone for a while, is a real closed connection.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

from tests.support import controller_deployments
from tests.support.fakekube import FakeKube

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "deployments" / "crds"
SEED = REPO / "examples" / "seed"
POOL = "kaiflow-controller-tests"
DEPLOYMENT = "workspace/controller-tests"
TEARDOWN = "teardown/controller-tests"
KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Proxy:
    """A TCP relay 127.0.0.1:port -> target; ``cut()`` closes every open connection (a dropped
    watch), ``down()`` also refuses new ones until ``up()``."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.refusing = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> int:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(conns) // 2

    def down(self) -> None:
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.sock.close()
        self.cut()


def kubeconfig_for(kube: FakeKube, path: Path, port: int | None = None) -> Path:
    path = kube.write_kubeconfig(path, namespace="default")
    if port is not None:
        cfg = yaml.safe_load(path.read_text())
        cfg["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(cfg))
    return path


def register_deployments(api: str) -> None:
    controller_deployments.register(POOL, "controller-tests")


def flow_runs(api: str, name: str | None = None, deployment: str = DEPLOYMENT) -> list[dict]:
    """The runs of a deployment (of one workspace: its tag), oldest first."""
    dep = httpx.get(f"{api}/deployments/name/{deployment}", timeout=10).json()
    body: dict[str, Any] = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}
    if name:
        body["flow_runs"]["tags"] = {"all_": [f"workspace:{name}"]}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90, interval: float = 0.3) -> Any:
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def conditions(obj: dict | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or []}


class Stack:
    def __init__(self, kube: FakeKube, api: str, home: Path, worker: subprocess.Popen, env: dict[str, str]) -> None:
        self.kube, self.api, self.home, self.worker, self.env = kube, api, home, worker, env
        self.proxy = Proxy(int(kube.url.rsplit(":", 1)[1]))  # the API server, as the controller reaches it
        self.prefect_proxy = Proxy(int(api.split(":")[2].split("/")[0]))  # the Prefect API, likewise
        self.kubeconfig = kubeconfig_for(kube, home / "kubeconfig-direct")
        self.proxied_kubeconfig = kubeconfig_for(kube, home / "kubeconfig-proxied", self.proxy.port)
        self.controllers: list[subprocess.Popen] = []

    def start_controller(self, *extra: str, identity: str = "ctl-a", log_name: str | None = None) -> subprocess.Popen:
        env = {**self.env, "KAIFLOW_KUBECONFIG": str(self.proxied_kubeconfig), "KAIFLOW_KUBE_REQUEST_TIMEOUT_S": "5",
               "PREFECT_API_URL": f"http://127.0.0.1:{self.prefect_proxy.port}/api"}
        log = open(self.home / f"{log_name or identity}.log", "ab")  # noqa: SIM115 - the process keeps it
        p = subprocess.Popen([KAIFLOW, "controller", "--deployment", DEPLOYMENT, "--teardown-deployment", TEARDOWN,
                              "--lease-namespace", "default", "--lease-duration", "3", "--poll", "0.5",
                              "--identity", identity, *extra], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.controllers.append(p)
        return p

    def log(self, identity: str = "ctl-a") -> str:
        path = self.home / f"{identity}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_controllers(self) -> None:
        for p in self.controllers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.controllers:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.controllers.clear()

    def kubectl_apply(self, doc: dict) -> dict:
        """Create or update like a user would (server-side apply with their own field manager)."""
        import json

        from kubernetes import config

        api = config.new_client_from_config(str(self.kubeconfig))
        try:
            m = doc["metadata"]
            ns = m.get("namespace") or "default"
            plural = {"Workspace": "workspaces", "InferenceSet": "inferencesets"}[doc["kind"]]
            url = f"/apis/{doc['apiVersion']}/namespaces/{ns}/{plural}/{m['name']}"
            resp = api.call_api(url, "PATCH", query_params=[("fieldManager", "user"), ("force", "true")],
                                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                                body=doc, auth_settings=["BearerToken"], _preload_content=False)
            return json.loads(resp.data)
        finally:
            api.close()

    def delete(self, name: str, api_version: str = "kaito.sh/v1alpha1") -> None:
        from kubernetes import config

        api = config.new_client_from_config(str(self.kubeconfig))
        try:
            api.call_api(f"/apis/{api_version}/namespaces/default/workspaces/{name}", "DELETE",
                         header_params={"Accept": "application/json"}, auth_settings=["BearerToken"], _preload_content=False)
        finally:
            api.close()

    def workspace(self, name: str) -> dict | None:
        return self.kube.get("kaito.sh/v1alpha1", "Workspace", name, "default")

    def ready(self, name: str) -> bool:
        obj = self.workspace(name)
        return bool(obj and conditions(obj).get("WorkspaceReady") == "True"
                    and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation"))


def inference_workspace(name: str, instance_type: str = "Standard_NC6s_v3", preset: str = "phi-3-mini-4k-instruct",
                        **resource: Any) -> dict:
    return {"apiVersion": "kaito.sh/v1alpha1", "kind": "Workspace", "metadata": {"name": name, "namespace": "default"},
            "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"apps": name}}, **resource},
            "inference": {"preset": {"name": preset}}}


@pytest.fixture(scope="module")
def stack(prefect_api, tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("controller")
    kube = FakeKube(versions=("1.30", "1.34")).start()
    worker = None
    try:
        for path in sorted(CRDS.glob("*.yaml")):  # as `kubectl apply -f deployments/crds/` would
            kube.install_crd(path)
        register_deployments(prefect_api)
        direct = kubeconfig_for(kube, home / "kubeconfig-worker")
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "KAIFLOW_PLATFORM": "kubernetes",
               "KAIFLOW_KUBECONFIG": str(direct), "KAIFLOW_HOME": str(home / "kaiflow-home"),
               "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "60", "KAIFLOW_KUBE_BACKOFF_S": "0.05", "KAIFLOW_RETRY_BACKOFF_S": "0.1",
               "KAIFLOW_KUBE_REQUEST_TIMEOUT_S": "5", "KAIFLOW_IMAGE": "ghcr.io/kaiflow/kaiflow:test",
               "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        worker_log = open(home / "worker.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", "controller-tests"],
                                  env=env, stdout=worker_log, stderr=subprocess.STDOUT, cwd=REPO)
        s = Stack(kube, prefect_api, home, worker, env)
        yield s
        s.stop_controllers()
        s.proxy.close()
        s.prefect_proxy.close()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        kube.stop()
