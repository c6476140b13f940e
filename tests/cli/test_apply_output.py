"""What `kaiflow apply` prints when a step fails (issue 24 item 8): the error once, not five times.

A real apply (the installed entry point, a real Prefect server) of a tuning workspace whose dataset
URL has nothing listening: the pull step fails (retried, as a connection fault is), the flow fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
WORKSPACE = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {name: noisy}
resource: {instanceType: local}
tuning:
  preset: {name: tiny-phi-3}
  method: qlora
  input: {urls: ["http://127.0.0.1:9/none.jsonl"]}
  output: {image: "adapters/noisy:1"}
"""
MESSAGE = "could not download http://127.0.0.1:9/none.jsonl"


@pytest.mark.timeout(300)
def test_a_failed_step_is_said_once_and_the_platforms_lines_once(prefect_api, tmp_path):
    f = tmp_path / "ws.yaml"
    f.write_text(WORKSPACE)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "KAIFLOW_HOME": str(tmp_path / "home"),
           "KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_DATASET_ATTEMPTS": "1", "KAIFLOW_RETRY_BACKOFF_S": "0"}
    out = subprocess.run([KAIFLOW, "apply", "-f", str(f)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 1
    err = out.stderr
    assert err.rstrip().splitlines()[-1].startswith(f"error: {MESSAGE}")
    # the first retry line keeps the error's text, the later ones say "the same error"; the final
    # state says the step and the error's type; the flow's own summary and the engine's line are gone
    assert err.count(MESSAGE) == 2, err
    assert "Task run failed again with the same error - Retries are exhausted" in err
    assert "Finished in state Failed (DatasetError)" in err
    assert "Encountered exception during execution" not in err and "workspace noisy failed" not in err
    assert "Traceback" not in err
    # the platform's log lines are printed once, as the task's (not again under the infra logger's name)
    assert err.count("plan tuning: tiny-phi-3 on local") == 1 and "infra.platforms.local -" not in err

    debug = subprocess.run([KAIFLOW, "apply", "-f", str(f), "--debug"], env=env, capture_output=True, text=True, timeout=240)
    assert debug.returncode != 0 and "Encountered exception during execution" in debug.stderr  # --debug keeps all


@pytest.mark.timeout(300)
def test_an_in_process_run_is_tagged_with_its_workspace(prefect_api, tmp_path):
    """Issue 24 item 11: in-process runs cannot sit under the `workspace` deployment (Prefect links a
    run to a deployment only when the deployment created it); they carry tags the UI filters on."""
    import httpx

    f = tmp_path / "ws.yaml"
    f.write_text(WORKSPACE.replace("name: noisy", "name: tagged"))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "KAIFLOW_HOME": str(tmp_path / "home"),
           "KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_DATASET_ATTEMPTS": "1", "KAIFLOW_RETRY_BACKOFF_S": "0"}
    subprocess.run([KAIFLOW, "apply", "-f", str(f)], env=env, capture_output=True, text=True, timeout=240)
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["tagged"]}}}, timeout=10).json()
    assert runs and set(runs[0]["tags"]) >= {"kaiflow", "workspace:tagged", "in-process"}
