"""The workspace controller at scale: N inference-only workspaces applied at once with kubectl.

Against the fake API server (tests/support/fakekube: its controllers turn NodeClaims into Nodes and
StatefulSets into ready pods), a real Prefect server and one real process worker, runs
``kaiflow controller`` and ``kubectl apply -f`` of one file holding N Workspaces, then waits until
every one shows WorkspaceReady=True at its generation. Prints:

    workspaces/min to WorkspaceReady   N / (time from the kubectl apply to the last one Ready)
    controller peak RSS                VmHWM of the controller process
    Prefect runs created               runs of the deployment (must be exactly N: exit 1 otherwise)

and the same for the time to the last flow run *created* (the controller's own share).

    .venv/bin/python bench/controller.py [--count 100] [--worker-limit 12]

``--count 3`` is the test suite's quick run (tests/controller/test_bench_smoke.py). The Prefect
server PREFECT_API_URL names is used when it is set, else one is started under a temporary
KAIFLOW_HOME and stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POOL = "kaiflow-controller-bench"
NAME = "controller-bench"


def workspaces(count: int) -> list[dict]:
    return [{"apiVersion": "kaito.sh/v1alpha1", "kind": "Workspace", "metadata": {"name": f"bench-{i:03d}", "namespace": "default"},
             "resource": {"instanceType": "Standard_NC6s_v3", "labelSelector": {"matchLabels": {"apps": f"bench-{i:03d}"}}},
             "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}} for i in range(count)]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def runs_of(api: str, deployment: str) -> list[dict]:
    dep = httpx.get(f"{api}/deployments/name/{deployment}", timeout=30).json()
    out: list[dict] = []
    while True:
        page = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]}},
                                                           "limit": 200, "offset": len(out)}, timeout=30).json()
        out += page
        if len(page) < 200:
            return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--worker-limit", type=int, default=12, help="flow runs the worker runs at once (each is a process)")
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args()

    from tests.support import controller_deployments, kubebins
    from tests.support.fakekube import FakeKube

    home = Path(tempfile.mkdtemp(prefix="kaiflow-bench-controller-"))
    started_server = not os.environ.get("PREFECT_API_URL")
    os.environ.setdefault("KAIFLOW_HOME", str(home / "home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows import prefect_server

    api = os.environ.get("PREFECT_API_URL") or prefect_server.ensure()
    os.environ["PREFECT_API_URL"] = api
    kube = FakeKube(versions=("1.30",)).start()
    procs: list[subprocess.Popen] = []
    try:
        for path in sorted((REPO / "deployments" / "crds").glob("*.yaml")):
            kube.install_crd(path)
        kubeconfig = kube.write_kubeconfig(home / "kubeconfig")
        controller_deployments.register(POOL, NAME)
        env = {**os.environ, "PREFECT_API_URL": api, "KAIFLOW_PLATFORM": "kubernetes", "KAIFLOW_KUBECONFIG": str(kubeconfig),
               "KAIFLOW_HOME": str(home / "worker-home"), "KAIFLOW_KUBE_WAIT_TIMEOUT_S": "600", "KAIFLOW_GPU_WAIT_S": "1200",
               "KAIFLOW_GPU_QUOTA": f"Standard_NC6s_v3={args.count}", "KAIFLOW_IMAGE": "ghcr.io/kaiflow/kaiflow:bench",
               "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500"}
        prefect = str(Path(sys.executable).parent / "prefect")
        kaiflow = str(Path(sys.executable).parent / "kaiflow")
        procs.append(subprocess.Popen([prefect, "worker", "start", "--pool", POOL, "--type", "process", "--name", NAME,
                                       "--limit", str(args.worker_limit)], env=env, cwd=REPO,
                                      stdout=open(home / "worker.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
        ctl = subprocess.Popen([kaiflow, "controller", "--deployment", f"workspace/{NAME}", "--teardown-deployment",
                                f"teardown/{NAME}", "--no-leader-election", "--poll", "1"], env=env, cwd=REPO,
                               stdout=open(home / "controller.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        procs.append(ctl)
        log = home / "controller.log"
        wait_until = time.time() + 120
        while "leading; watching" not in log.read_text(errors="replace"):  # measured from a controller at work
            if ctl.poll() is not None or time.time() > wait_until:
                print(f"the controller did not start (log: {log})", file=sys.stderr)
                return 1
            time.sleep(0.2)
        manifest = home / "workspaces.yaml"
        manifest.write_text(yaml.safe_dump_all(workspaces(args.count)))

        t0 = time.perf_counter()
        out = subprocess.run([kubebins.kubectl(), "--kubeconfig", str(kubeconfig), "apply", "-f", str(manifest)],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            print(out.stdout + out.stderr, file=sys.stderr)
            return 1
        applied = time.perf_counter() - t0
        created_at = None
        deadline = time.time() + args.timeout
        while True:
            items = kube.list("kaito.sh/v1alpha1", "Workspace", "default")
            done = [w for w in items if (w.get("status") or {}).get("observedGeneration") == w["metadata"]["generation"]]
            ready = [w for w in done if any(c["type"] == "WorkspaceReady" and c["status"] == "True"
                                            for c in w["status"].get("conditions") or [])]
            if created_at is None and len(runs_of(api, f"workspace/{NAME}")) >= args.count:
                created_at = time.perf_counter() - t0
            if len(done) == args.count:  # every run final: Ready, or said why not
                break
            if ctl.poll() is not None or time.time() > deadline:
                print(f"only {len(done)}/{args.count} done, {len(ready)} Ready (controller exit code {ctl.poll()}); logs in {home}",
                      file=sys.stderr)
                return 1
            time.sleep(1)
        total = time.perf_counter() - t0
        rss = peak_rss_mib(ctl.pid)
        runs = runs_of(api, f"workspace/{NAME}")
        states: dict[str, int] = {}
        for r in runs:
            states[r["state_type"]] = states.get(r["state_type"], 0) + 1
        print(f"workspaces: {args.count} applied with one `kubectl apply -f` in {applied:.1f} s; worker limit {args.worker_limit}")
        print(f"all flow runs created after {created_at or total:.1f} s "
              f"({args.count / max(created_at or total, 1e-9) * 60:.0f} workspaces/min created)")
        print(f"all WorkspaceReady after {total:.1f} s: {len(ready) / total * 60:.1f} workspaces/min to WorkspaceReady "
              f"({len(ready)}/{args.count} Ready)")
        print(f"controller peak RSS: {rss:.0f} MiB")
        crashed = states.get("CRASHED", 0)
        print(f"Prefect runs created: {len(runs)} ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))}); expected {args.count}"
              + (f" + {crashed} started again after crashing" if crashed else ""))
        per_workspace = {}
        for r in runs:
            if r["state_type"] != "CRASHED":
                per_workspace[r["name"]] = per_workspace.get(r["name"], 0) + 1
        doubled = sorted(n for n, c in per_workspace.items() if c > 1)
        if doubled:
            print(f"DOUBLED: {', '.join(doubled)}")
        return 0 if len(runs) - crashed == args.count and not doubled and len(ready) == args.count else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        kube.stop()
        if started_server:
            prefect_server.stop()


if __name__ == "__main__":
    sys.exit(main())
