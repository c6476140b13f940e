"""The Kubernetes work pool's base job template: Prefect's default plus GPU count, node selector,
tolerations and image — each referenced in job_configuration (Prefect silently drops variables
that are not), rendered by prefect-kubernetes' own job configuration into a Job that
kubernetes-validate accepts in strict mode on Kubernetes 1.30–1.34.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import kubernetes_validate
import pytest

from flows import deployments

NEW_VARIABLES = ("gpu_count", "node_selector", "tolerations", "image")
GPU_VALUES = {"gpu_count": 2, "image": "myacr.azurecr.io/kaiflow:0.2.0",
              "node_selector": {"kubernetes.azure.com/accelerator": "nvidia", "apps": "phi-3"},
              "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}


def render(values: dict) -> dict:
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = deployments.kubernetes_base_job_template()
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="tiny-run", flow_id=uuid.uuid4()))
    return config.job_manifest


def test_every_variable_is_referenced_in_the_job_configuration():
    template = deployments.kubernetes_base_job_template()
    rendered = json.dumps(template["job_configuration"])
    for name in template["variables"]["properties"]:
        assert "{{ " + name + " }}" in rendered, f"variable {name} is not referenced: Prefect would drop it"
    for name in NEW_VARIABLES:
        assert template["variables"]["properties"][name]["description"]


@pytest.mark.parametrize("version", ["1.30", "1.31", "1.32", "1.33", "1.34"])
def test_rendered_gpu_job_validates_strictly_and_carries_the_gpu_fields(prefect_api, version):
    job = render(GPU_VALUES)
    kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["containers"][0]["image"] == GPU_VALUES["image"]
    assert pod["nodeSelector"] == GPU_VALUES["node_selector"] and pod["tolerations"] == GPU_VALUES["tolerations"]
    assert job["spec"]["completions"] == 1 and "completions" not in pod  # Prefect's default has them in the pod spec
    # the flow in the pod starts its tuning/serving pods in its own image, on the kubernetes platform
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["KAIFLOW_IMAGE"], env["KAIFLOW_PLATFORM"]) == (GPU_VALUES["image"], "kubernetes")
    assert "PREFECT__FLOW_RUN_ID" in env


def test_pool_env_overrides_the_templates_kaiflow_settings(prefect_api):
    pod = render({"env": {"KAIFLOW_PLATFORM": "aks", "KAIFLOW_NAMESPACE": "ml"}})["spec"]["template"]["spec"]
    env = [(e["name"], e.get("value")) for e in pod["containers"][0]["env"]]
    assert [v for k, v in env if k == "KAIFLOW_PLATFORM"] == ["aks"] and ("KAIFLOW_NAMESPACE", "ml") in env


def test_kubernetes_pool_runs_start_in_the_images_copy_of_the_repository():
    """A flow run's pod has the image's /app, not the path of the machine that registered the deployment."""
    assert deployments.pull_steps("kubernetes") == [
        {"prefect.deployments.steps.set_working_directory": {"directory": deployments.IMAGE_APP_DIR}}]
    assert deployments.pull_steps("process")[0]["prefect.deployments.steps.set_working_directory"]["directory"] == \
        str(deployments.REPO_DIR)
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        text = (deployments.REPO_DIR / "deployments" / "images" / dockerfile).read_text()
        assert f"WORKDIR {deployments.IMAGE_APP_DIR}\n" in text and f"COPY app/ {deployments.IMAGE_APP_DIR}/" in text


def test_defaults_render_a_valid_job_without_gpus(prefect_api):
    job = render({})
    kubernetes_validate.validate(job, "1.34", strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and container["image"].startswith("ghcr.io/kaiflow/")


def test_kubernetes_pool_is_created_with_the_template(prefect_api):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pool = deployments.ensure_pool(client, "kaiflow-kubernetes-test", "kubernetes")
        assert pool.type == "kubernetes" and pool.base_job_template == deployments.kubernetes_base_job_template()
        client.delete_work_pool("kaiflow-kubernetes-test")
