"""`kaiflow apply --dry-run -o yaml` of every example workspace, byte for byte as recorded.

Guards refactors of the manifest builders and what feeds them (loader, plan, settings): any change
to a rendered object fails here. A change made on purpose is recorded again with
``UPDATE_GOLDEN=1 pytest tests/kube/test_dry_run_golden.py`` and reviewed in the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if "data" not in p.parts)


def render_all(root: Path) -> dict[str, str]:
    """Each example's dry-run output (or its error), rendered by the kaiflow CLI under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIFLOW_")}
    env["KAIFLOW_HOME"] = str(root / ".golden-home")
    env["KAIFLOW_ALLOW_PRIVATE_URLS"] = "true"  # examples/local pull their data from make demo's 127.0.0.1 server
    code = (
        "import sys\n"
        "from flows import cli\n"
        "for path in sys.argv[1:]:\n"
        "    print('=== ' + path, flush=True)\n"
        "    try:\n"
        "        rc = cli.main(['apply', '--dry-run', '-o', 'yaml', '-f', path])\n"
        "        print(f'exit {rc}', flush=True)\n"
        "    except SystemExit as exc:\n"
        "        print(f'exit {exc.code}', flush=True)\n"
        "    except Exception as exc:\n"
        "        print(f'error {type(exc).__name__}: {exc}', flush=True)\n"
    )
    rel = [str(p.relative_to(ROOT)) for p in EXAMPLES]
    out = subprocess.run([sys.executable, "-c", code, *rel], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    docs: dict[str, str] = {}
    for chunk in out.split("=== ")[1:]:
        path, _, body = chunk.partition("\n")
        docs[path] = body
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render_all(ROOT)


@pytest.mark.parametrize("example", [str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_dry_run_output_is_unchanged(rendered: dict[str, str], example: str) -> None:
    golden = GOLDEN / (example.replace("/", "__") + ".out")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered[example])
    assert golden.exists(), f"no golden output for {example}: run with UPDATE_GOLDEN=1 and review it"
    assert rendered[example] == golden.read_text()
