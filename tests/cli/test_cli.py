"""The kaiflow command line, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAIFLOW = Path(sys.executable).parent / "kaiflow"
KAITO = sorted((REPO / "examples" / "kaito").rglob("*.yaml"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KAIFLOW), *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("validate", "plan", "presets", "skus", "apply", "get", "describe", "delete", "chat"):
        assert cmd in r.stdout


def test_validate_seed_files():
    files = sorted((REPO / "examples" / "seed").glob("*.yaml"))
    r = run("validate", *sum((["-f", str(f)] for f in files), []))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": valid:") == 4


def test_validate_bad_file_exits_nonzero_without_traceback():
    r = run("validate", "-f", str(REPO / "tests" / "workspace" / "broken" / "method_typo.yaml"))
    assert r.returncode == 1
    assert "tuning.method: 'qlora4' is not one of lora, qlora" in r.stderr
    assert "Traceback" not in r.stderr


def test_plan_seed_tuning_on_nc6s_v3():
    r = run("plan", "-f", str(REPO / "examples" / "seed" / "kaito_workspace_phi_3.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "qlora on 1 x V100 16 GiB" in r.stdout and "compute float16" in r.stdout


@pytest.mark.parametrize("path", KAITO, ids=lambda p: p.name)
def test_every_kaito_example_validates_and_plans(path):
    assert run("validate", "-f", str(path)).returncode == 0
    if "Workspace" in path.read_text():
        r = run("plan", "-f", str(path), "-o", "json")
        assert r.returncode == 0, r.stdout + r.stderr


def test_plan_on_this_cpu_machine_says_a_gpu_is_needed():
    r = run("plan", "--on-host", "-f", str(REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"))
    assert r.returncode == 1
    assert "needs a GPU" in r.stdout and "tiny-phi-3" in r.stdout


def test_presets_and_skus_tables():
    r = run("presets")
    assert r.returncode == 0 and "phi-3-mini-4k-instruct" in r.stdout and "microsoft/Phi-3-mini-4k-instruct" in r.stdout
    r = run("skus", "--cloud", "azure")
    assert r.returncode == 0 and "Standard_NC6s_v3" in r.stdout and "g5.xlarge" not in r.stdout
