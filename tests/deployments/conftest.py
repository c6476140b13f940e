"""Fixtures for the deployment tests: a `kaiflow server` stack on the session's Prefect server.

``stack`` runs the real ``kaiflow server`` command, which finds the session server (tests/conftest.py
``prefect_api``), registers the deployments and starts a real process worker; flow runs are child
processes of that worker, with the transformers engine and a 1 s poll so runs start quickly.
One stack per session (test_server.py and test_ui.py share it); the worker is stopped at the
end, the server belongs to the session fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def tiny_workspace(name: str, **annotations: str) -> dict:
    ws = {"apiVersion": "kaito.sh/v1alpha1", "kind": "Workspace", "metadata": {"name": name},
          "resource": {"instanceType": "local"}, "inference": {"preset": {"name": "tiny-phi-3"}}}
    if annotations:
        ws["metadata"]["annotations"] = annotations
    return ws


def wait_run(api: str, run_id: str, timeout: float = 180) -> dict:
    """Poll the API until the flow run is final; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state_type"] in FINAL:
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} not final after {timeout} s: {run['state_type']}")


def deployment(api: str, full_name: str) -> dict:
    r = httpx.get(f"{api}/deployments/name/{full_name}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def run_deployment(api: str, full_name: str, parameters: dict) -> httpx.Response:
    dep = deployment(api, full_name)
    return httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}, timeout=10)


@pytest.fixture(scope="session")
def stack(prefect_api, tiny_model):
    env = {**os.environ, "KAIFLOW_ENGINE": "transformers", "KAIFLOW_WORKER_POLL_S": "2", "PREFECT_API_URL": prefect_api}
    from flows import server, teardown
    from infra import records

    try:
        out = subprocess.run([KAIFLOW, "server"], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        yield {"api": prefect_api, "env": env, "out": out.stdout}
    finally:  # delete what the runs started (their inference servers), then the worker — also when start failed
        for name in records.names():
            teardown.delete_workspace(name)
        server.stop_worker()
