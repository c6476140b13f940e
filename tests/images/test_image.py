"""kaiflow's CPU image as deployments/images/build.sh builds it (`make images`): one image for every
role, run as uid 1000, the CPU torch, nothing of the build left in it, rebuilt only when its
inputs change; and the GPU Dockerfile kept in step with the CPU one."""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path

import pytest

from tests.containers import images
from tests.support.fakekube.podman import podman_env

DOCKERFILES = Path(__file__).resolve().parents[2] / "deployments" / "images"
# every role's entry point: the steps, the inference server, the CLI, the Prefect Kubernetes worker
ROLES = "import os, torch, tuning, tuning.evaluate, serving, infra.pod, flows.cli, flows.workspace_flow, prefect_kubernetes.worker"
SIZE_LIMIT = 2_300_000_000   # measured 2.09 GB (torch CPU 0.75 GB); a guard against a CUDA torch or vLLM slipping in


def test_gpu_dockerfile_differs_from_the_cpu_one_only_in_torch_and_vllm_lines():
    cpu = (DOCKERFILES / "Dockerfile.cpu").read_text().splitlines()
    gpu = (DOCKERFILES / "Dockerfile.gpu").read_text().splitlines()
    changed = [line[1:] for line in difflib.unified_diff(cpu, gpu, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed, "the GPU Dockerfile must differ in its torch/vLLM lines"
    code = [line for line in changed if not line.lstrip().startswith("#")]
    assert code and all("torch" in line.lower() or "vllm" in line.lower() for line in code), code


def _run(image: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "run", "--rm", "--network", "host", image, *argv], capture_output=True, text=True,
                          env=podman_env(), timeout=600)


@pytest.mark.slow
def test_one_image_holds_every_role_runs_as_uid_1000_with_cpu_torch(kaiflow_image):
    out = _run(kaiflow_image, "python", "-c", f"{ROLES}; print(os.getuid(), torch.version.cuda, torch.__version__)")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["1000", "None", "2.13.0+cpu"]
    cli = _run(kaiflow_image, "kaiflow", "--help")
    assert cli.returncode == 0 and "usage: kaiflow" in cli.stdout, cli.stderr[-2000:]


@pytest.mark.slow
def test_image_keeps_no_compiler_pip_or_cache_and_says_its_size(kaiflow_image):
    # /wheels stays as the empty mount point buildah made for the wheelhouse: nothing under it
    out = _run(kaiflow_image, "sh", "-c", "for t in gcc cc g++ pip pip3; do command -v $t; done; "
               "ls -d /root/.cache /home/kaiflow/.cache /tmp/requirements-image.txt 2>/dev/null; "
               "find /wheels -mindepth 1 2>/dev/null | head -3; python -m pip --version 2>/dev/null; true")
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout
    size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", kaiflow_image], capture_output=True,
                              text=True, env=podman_env(), check=True).stdout)
    assert size < SIZE_LIMIT, f"the CPU image grew to {size / 1e9:.2f} GB"


@pytest.mark.slow
def test_unchanged_tree_builds_nothing(kaiflow_image):
    again, report = images.build()
    assert again == kaiflow_image
    assert "is up to date" in report and "built " not in report, report
