"""DESIGN.md's layering, checked by import-linter (.importlinter): flows -> tasks -> infra ->
workspace -> presets; tuning/ and serving/ import no Prefect, Kubernetes, Azure or orchestration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint), "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    contracts = (REPO / ".importlinter").read_text().count("[importlinter:contract:")
    assert contracts >= 5 and f"{contracts} kept, 0 broken" in r.stdout
