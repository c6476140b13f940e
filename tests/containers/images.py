"""kaiflow's CPU image for the container tests, built (or reused: the tag is a content hash) by
deployments/images/build.sh, the script `make images` runs; and the podman environment of
deployments/images/env.sh. Import the fixtures into a conftest.py:

    from tests.containers.images import kaiflow_image, pushed_image, image_registry  # noqa: F401
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.fakekube.podman import podman_env
from tests.support.registry import LocalRegistry

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deployments" / "images" / "build.sh"
TOOLS = ("podman", "buildah", "skopeo", "debootstrap", "runc")
BUILD_SECONDS: dict[str, float] = {}   # what the session's build took (printed in the test's report)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"container tools missing: {' '.join(missing)} (make system-deps installs them)")


_early: subprocess.Popen | None = None   # the session's background build, when one was started


def start_background_build(folder: Path) -> bool:
    """Start build.sh now, in the background (the test session's start, when image tests are selected),
    so a fresh machine's image build overlaps the tests that run before them; ``build()`` then waits
    for it. False when a container tool is missing (the fixture says so then)."""
    global _early
    if _early is not None or missing_tools():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "image-build.out").open("wb") as out, (folder / "image-build.err").open("wb") as err:
        _early = subprocess.Popen([str(BUILD)], stdout=out, stderr=err, cwd=REPO, start_new_session=True)
    return True


def stop_background_build() -> None:
    if _early is not None and _early.poll() is None:
        _early.terminate()
        _early.wait(timeout=60)


def build() -> tuple[str, str]:
    """(image reference, the script's report on stderr)."""
    require_tools()
    t0 = time.monotonic()
    if _early is not None:
        _early.wait(timeout=3600)   # a failed early build is simply run again below, in the foreground
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, cwd=REPO, timeout=3600)
    BUILD_SECONDS.setdefault("first", time.monotonic() - t0)
    assert proc.returncode == 0, f"deployments/images/build.sh failed:\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1], proc.stderr


@pytest.fixture(scope="session")
def kaiflow_image() -> str:
    """localhost/kaiflow:cpu-<hash>, in the image store of deployments/images/env.sh."""
    return build()[0]


@pytest.fixture(scope="session")
def image_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("image-registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def pushed_image(kaiflow_image: str, image_registry: LocalRegistry) -> str:
    """The image copied into the test's docker-registry with skopeo, as a cluster would pull it."""
    ref = f"{image_registry.host}/kaiflow:{kaiflow_image.rsplit(':', 1)[1]}"
    # gzip level 1: 48 s instead of 67 s for the 2 GB here, and the bytes never leave the machine
    proc = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-compress-format", "gzip",
                           "--dest-compress-level", "1", f"containers-storage:{kaiflow_image}",
                           f"docker://{ref}"], capture_output=True, text=True, env=podman_env(), timeout=1800)
    assert proc.returncode == 0, f"skopeo copy to {ref} failed: {proc.stderr[-2000:]}"
    return ref
