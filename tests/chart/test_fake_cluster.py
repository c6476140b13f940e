"""The chart on the fake API server (tests/support/fakekube), through the real kubectl: every
rendered object is accepted (validated there too), the controller's and worker's pods come up, and
`kaiflow controller` started with exactly the command and env the chart renders picks up the seed's
workspace — the run it starts carries the chart's provisioner and image.

Why kubectl and not `helm install`: helm stores its release in a Secret sent as protobuf, which
the fake does not read (it speaks JSON, as kubectl's apply does); what helm would send for the
objects themselves is the rendered YAML applied here.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import yaml

from tests.chart.conftest import NAMESPACE, REPO, VARIANTS, container, render
from tests.support import controller_deployments, kubebins
from tests.support.fakekube import FakeKube

SEED = REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"  # ../shared/seed's, verbatim
POOL = "kaiflow-chart-tests"  # no worker serves it: the runs the controller starts stay Scheduled
DEPLOYMENT = "workspace/chart-tests"
TEARDOWN = "teardown/chart-tests"


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run([kubebins.kubectl(), "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


def apply_chart(kube: FakeKube, kubeconfig: Path, objs: list[dict], namespaces: tuple[str, ...]) -> str:
    """`kubectl apply` the namespaces (helm install --create-namespace) and then the rendered chart."""
    ns_docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces]
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(ns_docs))
    return kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@pytest.fixture
def cluster(tmp_path: Path):
    kube = FakeKube(versions=("1.30", "1.34")).start()
    try:
        kube.add_node("system-0", labels={"kubernetes.io/os": "linux"}, gpu_count=0)
        yield kube, kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    finally:
        kube.stop()


# the aks and byo variants render the same kinds as these (other env values, fewer rules): checked in test_render
@pytest.mark.parametrize("variant", ["default", "karpenter-worker-nodeclaim", "namespaces"])
def test_every_rendered_object_is_accepted_and_the_pods_come_up(cluster, variant: str):
    kube, kubeconfig = cluster
    objs = render(*VARIANTS[variant])
    namespaces = (NAMESPACE, "team-a", "team-b") if variant == "namespaces" else (NAMESPACE,)
    out = apply_chart(kube, kubeconfig, objs, namespaces)
    assert out.count(" created") == len(objs)
    for o in objs:
        stored = kube.get(o["apiVersion"], o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
        assert stored is not None, f"{o['kind']} {o['metadata']['name']} is not on the server"
    for d in (o for o in objs if o["kind"] == "Deployment"):
        kubectl(kubeconfig, "rollout", "status", f"deployment/{d['metadata']['name']}", "-n", NAMESPACE, "--timeout=60s")
    # the CRDs the chart installed serve Workspaces: the seed's file is accepted as it is
    assert "workspace.kaito.sh/workspace-phi-3-mini created" in kubectl(kubeconfig, "apply", "-f", str(SEED))


def _register(api: str) -> None:
    controller_deployments.register(POOL, "chart-tests")


def _process_env(c: dict, kube: FakeKube, pod_name: str) -> dict[str, str]:
    """The container's env as the kubelet would give it (values, the pod's name, Secret keys), nothing
    inherited from this process."""
    env = {}
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            secret = kube.get("v1", "Secret", ref["name"], NAMESPACE)
            env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


@pytest.mark.slow  # a Prefect server and a controller process
def test_controller_from_the_charts_command_and_env_picks_up_the_seed_workspace(cluster, prefect_api, tmp_path: Path):
    kube, kubeconfig = cluster
    objs = render("--set", f"prefect.apiUrl={prefect_api}", "--set", f"controller.deployment={DEPLOYMENT}",
                  "--set", f"controller.teardownDeployment={TEARDOWN}", "--set", "prefect.apiKeySecret.name=prefect-api-key",
                  "--set", "provisioner.type=byo", "--set", "image.tag=chart-test")
    apply_chart(kube, kubeconfig, objs, (NAMESPACE,))
    # the Secret the chart only names (a self-hosted server ignores the key; it must still resolve)
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prefect-api-key", "namespace": NAMESPACE},
                 "stringData": {"key": "not-a-real-key"}})
    c = container(objs, "kaiflow-controller")
    pod = "kaiflow-controller-5d8f7c6b9-x2x7q"
    env = _process_env(c, kube, pod)
    assert env["PREFECT_API_URL"] == prefect_api
    # what a pod would have beyond the chart's env: in-cluster credentials (here a kubeconfig), a home
    env.update({"KAIFLOW_KUBECONFIG": str(kubeconfig), "KAIFLOW_HOME": str(tmp_path / "home"), "HOME": str(tmp_path),
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    log = open(tmp_path / "controller.log", "wb")  # noqa: SIM115 - the process keeps it
    proc = subprocess.Popen(c["command"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    runs: list[dict] = []
    try:
        _register(prefect_api)  # while the controller starts: it runs nothing before a workspace is applied
        kubectl(kubeconfig, "apply", "-f", str(SEED))
        ws = wait_for("the controller's finalizer on the seed workspace",
                      lambda: (w := kube.get("kaito.sh/v1alpha1", "Workspace", "workspace-phi-3-mini", "default"))
                      and "kaiflow.io/teardown" in (w["metadata"].get("finalizers") or []) and w)
        dep = httpx.get(f"{prefect_api}/deployments/name/{DEPLOYMENT}", timeout=10).json()
        body = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}, "tags": {"all_": ["workspace:workspace-phi-3-mini"]}}}
        runs = wait_for("the flow run", lambda: httpx.post(f"{prefect_api}/flow_runs/filter", json=body, timeout=10).json())
        (run,) = runs
        assert run["idempotency_key"] == f"{ws['metadata']['uid']}-{ws['metadata']['generation']}"
        assert run["parameters"]["platform"] == "kubernetes"
        assert run["parameters"]["run_settings"]["KAIFLOW_PROVISIONER"] == "byo"
        assert run["parameters"]["run_settings"]["KAIFLOW_IMAGE"] == "ghcr.io/kaiflow/kaiflow:chart-test"
        assert run["parameters"]["workspace"]["metadata"]["name"] == "workspace-phi-3-mini"
        lease = kube.get("coordination.k8s.io/v1", "Lease", "kaiflow-controller", NAMESPACE)
        assert lease["spec"]["holderIdentity"] == pod, "it leads through the chart's Lease, as the pod named by POD_NAME"
        assert proc.poll() is None, (tmp_path / "controller.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for r in runs:  # no other module's worker ever serves this pool; keep the session's server tidy anyway
            httpx.delete(f"{prefect_api}/flow_runs/{r['id']}", timeout=10)
    assert "Traceback" not in (tmp_path / "controller.log").read_text()
