"""`kaiflow server` and the deployments it registers, driven the ways users drive them: the
`prefect` CLI (`deployment run --params`), `kaiflow apply --via-server`, `kaiflow schedule`, and
`prefect deploy` from deployments/prefect.yaml. Real server, real worker, real flow runs serving
tiny-phi-3 with the transformers engine.
"""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest

from flows import deployments
from infra import records
from tests.deployments.conftest import KAIFLOW, PREFECT, deployment, run_deployment, tiny_workspace, wait_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_server_registers_three_deployments_with_the_workspace_form(stack):
    assert f"Prefect UI:  {stack['api'][:-4]}" in stack["out"]
    for d in deployments.DEPLOYMENTS:
        dep = deployment(stack["api"], d.full_name)
        assert dep["work_pool_name"] == "kaiflow-process" and dep["entrypoint"] == d.entrypoint
        assert dep["pull_steps"] == deployments.pull_steps() and dep["enforce_parameter_schema"] is True
    schema = deployment(stack["api"], "workspace/workspace")["parameter_openapi_schema"]
    ws_schema = schema["definitions"]["Workspace"]
    assert "metadata" in ws_schema["required"] and ws_schema["properties"]["inference"]["description"].startswith("The inference")
    workers = httpx.post(f"{stack['api']}/work_pools/kaiflow-process/workers/filter", json={}).json()
    assert any(w["name"] == "kaiflow-kaiflow-process" for w in workers)


def test_prefect_cli_deployment_run_completes_a_workspace_then_teardown(stack, tmp_path):
    import yaml

    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(tiny_workspace("tiny-cli")))
    # as the README shows: the YAML turned into the run's parameters by `kaiflow params`
    made = subprocess.run([KAIFLOW, "params", "-f", str(f)], env=stack["env"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    params = made.stdout.strip()
    assert json.loads(params) == {"workspace": tiny_workspace("tiny-cli"), "config_maps": {}}
    out = subprocess.run([PREFECT, "deployment", "run", "workspace/workspace", "--params", params],
                         env=stack["env"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    run = wait_run(stack["api"], run_id)
    assert run["state_type"] == "COMPLETED", run["state"]
    endpoint = records.load("tiny-cli").endpoint
    assert httpx.get(f"{endpoint}/health", timeout=10).status_code == 200

    r = run_deployment(stack["api"], "teardown/teardown", {"name": "tiny-cli"})
    assert r.status_code == 201, r.text
    assert wait_run(stack["api"], r.json()["id"])["state_type"] == "COMPLETED"
    assert records.load("tiny-cli") is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{endpoint}/health", timeout=3)


def test_server_refuses_malformed_parameters_with_the_field(stack):
    bad = tiny_workspace("tiny-bad")
    bad["resource"]["count"] = 0
    r = run_deployment(stack["api"], "workspace/workspace", {"workspace": bad})
    assert r.status_code == 409, r.text
    assert "field 'workspace.resource.count'" in r.text and "0 is less than the minimum of 1" in r.text


def test_apply_via_server_prints_the_run_url_and_final_state_and_registers_the_annotation(stack, tmp_path):
    import yaml

    ws = tiny_workspace("tiny-via", **{deployments.SCHEDULE_ANNOTATION: "30 4 * * 1", deployments.TIMEZONE_ANNOTATION: "Asia/Tokyo"})
    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(ws))
    # as a user runs it: no PREFECT_API_URL, the server found through KAIFLOW_HOME's state file (Prefect
    # reads its settings at import, so a client made before the lookup would start a temporary server)
    env = {k: v for k, v in stack["env"].items() if k != "PREFECT_API_URL"}
    out = subprocess.run([KAIFLOW, "apply", "--via-server", "-f", str(f)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "database is locked" not in out.stderr
    assert re.search(rf"{re.escape(stack['api'][:-4])}/runs/flow-run/[0-9a-f-]{{36}}", out.stdout), out.stdout
    assert "workspace tiny-via: Completed" in out.stdout
    assert "schedule retrain-tiny-via on retrain/retrain: 30 4 * * 1 (Asia/Tokyo)" in out.stdout
    assert records.load("tiny-via").endpoint
    sched = {s["slug"]: s for s in deployment(stack["api"], "retrain/retrain")["schedules"]}["retrain-tiny-via"]
    assert sched["schedule"]["cron"] == "30 4 * * 1" and sched["schedule"]["timezone"] == "Asia/Tokyo"
    assert subprocess.run([KAIFLOW, "delete", "workspace", "tiny-via"], env=stack["env"], timeout=60).returncode == 0


def test_schedule_registers_retrain_with_the_workspace_and_a_fired_run_runs_retrain(stack, tmp_path):
    import yaml

    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(tiny_workspace("tiny-sched")))
    out = subprocess.run([KAIFLOW, "schedule", "tiny-sched", "--cron", "0 3 * * 0", "--timezone", "Europe/Berlin", "-f", str(f)],
                         env=stack["env"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    dep = deployment(stack["api"], "retrain/retrain")
    sched = {s["slug"]: s for s in dep["schedules"]}["retrain-tiny-sched"]
    assert sched["schedule"]["cron"] == "0 3 * * 0" and sched["schedule"]["timezone"] == "Europe/Berlin" and sched["active"]
    assert sched["parameters"]["workspace"] == tiny_workspace("tiny-sched")

    # re-registering the deployments keeps the schedules (an upsert would drop them)
    assert subprocess.run([KAIFLOW, "deploy"], env=stack["env"], capture_output=True, timeout=60).returncode == 0
    assert "retrain-tiny-sched" in {s["slug"] for s in deployment(stack["api"], "retrain/retrain")["schedules"]}

    # fire it: a run of the retrain deployment with the schedule's parameters, as the scheduler makes
    r = run_deployment(stack["api"], "retrain/retrain", sched["parameters"])
    run = wait_run(stack["api"], r.json()["id"])
    flow = httpx.get(f"{stack['api']}/flows/{run['flow_id']}").json()
    assert flow["name"] == "retrain"
    # retraining an inference-only workspace is refused by retrain_flow itself, naming the workspace:
    # the schedule's parameters reached the flow (the promotion decisions are tests/retrain's)
    assert run["state_type"] == "FAILED" and "retrain tiny-sched: the workspace has no tuning section" in run["state"]["message"]


def test_schedule_refuses_a_bad_cron_naming_the_flag(stack, tmp_path):
    import yaml

    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(tiny_workspace("tiny-badcron")))
    out = subprocess.run([KAIFLOW, "schedule", "tiny-badcron", "--cron", "0 3 * *", "-f", str(f)],
                         env=stack["env"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.startswith("error: --cron: '0 3 * *'") and "Traceback" not in out.stderr


def test_prefect_yaml_deploys_the_same_deployments(stack):
    out = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                         env=stack["env"], capture_output=True, text=True, timeout=120, cwd=str(deployments.REPO_DIR))
    assert out.returncode == 0, out.stdout + out.stderr
    for d in deployments.DEPLOYMENTS:
        dep = deployment(stack["api"], d.full_name)
        assert dep["entrypoint"] == d.entrypoint and dep["work_pool_name"] == "kaiflow-process"
        assert dep["pull_steps"] == deployments.pull_steps(), dep["pull_steps"]
        assert dep["enforce_parameter_schema"] is True
    assert "Workspace" in deployment(stack["api"], "workspace/workspace")["parameter_openapi_schema"]["definitions"]
    # kaiflow deploy registers them back (same shape)
    assert subprocess.run([KAIFLOW, "deploy"], env=stack["env"], capture_output=True, timeout=60).returncode == 0


def test_apply_via_server_passes_the_callers_run_settings_with_the_run(stack, tmp_path):
    """Issue 24 item 5: `KAIFLOW_ALLOW_PRIVATE_URLS=true kaiflow apply --via-server` failed with "set
    KAIFLOW_ALLOW_PRIVATE_URLS=true": the worker (started earlier, without it) never saw the caller's
    environment. The run-shaping settings now travel as the run's ``run_settings`` parameter. The data
    URL is a 404 on loopback (the Prefect API itself), so the run fails fast either way: with the setting
    passed it gets as far as the download (404), without it the URL policy refuses the address."""
    import yaml

    ws = tiny_workspace("tiny-env")
    ws["tuning"] = {"preset": {"name": "tiny-phi-3"}, "method": "qlora",
                    "input": {"urls": [f"{stack['api']}/no-such-file.parquet"]}, "output": {"image": "adapters/tiny-env:1"}}
    del ws["inference"]
    f = tmp_path / "ws.yaml"
    f.write_text(yaml.safe_dump(ws))
    env = {**stack["env"], "KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_DATASET_ATTEMPTS": "1"}
    out = subprocess.run([KAIFLOW, "apply", "--via-server", "-f", str(f)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stdout + out.stderr
    passed = re.search(r"passing with the run: (.*)", out.stderr).group(1)
    assert "KAIFLOW_ALLOW_PRIVATE_URLS=true" in passed and "KAIFLOW_DATASET_ATTEMPTS=1" in passed
    assert "workspace tiny-env: Failed" in out.stdout and "404" in out.stdout, out.stdout
    assert "KAIFLOW_ALLOW_PRIVATE_URLS" not in out.stdout  # the policy let the address through
    run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", out.stdout).group(1)
    run = httpx.get(f"{stack['api']}/flow_runs/{run_id}", timeout=10).json()
    sent = run["parameters"]["run_settings"]
    assert sent["KAIFLOW_ALLOW_PRIVATE_URLS"] == "true" and sent["KAIFLOW_DATASET_ATTEMPTS"] == "1"
    subprocess.run([KAIFLOW, "delete", "workspace", "tiny-env"], env=stack["env"], capture_output=True, timeout=60)
