"""The README's workspace walk-through shows the very file `make demo` applies (issue 24 item 12):
its YAML block, comments and all, loads to the same workspace as examples/local/tune-and-serve.yaml,
and the commands it names exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_workspace_is_the_demo_file():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your own workspace"):readme.index("## Using it")]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert yaml.safe_load(block) == yaml.safe_load((ROOT / "examples/local/tune-and-serve.yaml").read_text())


def test_every_kaiflow_command_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"kaiflow (validate|plan|presets|skus|apply|get|describe|chat|logs|params|delete|demo|deploy|server|schedule)\b",
                           readme))
    out = subprocess.run([str(Path(sys.executable).parent / "kaiflow"), "--help"], capture_output=True, text=True, timeout=60)
    listed = set(re.findall(r"^    (\w+)\s", out.stdout, re.M))
    assert named and named <= listed, named - listed
