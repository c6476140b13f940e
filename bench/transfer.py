"""Adapter image transfer speed: kaiflow's push/pull against plain HTTP PUT/GET of the same bytes.

Why this baseline: a registry cannot take bytes faster than one monolithic blob upload (POST,
then PUT with the body and a digest computed beforehand) nor give them faster than one blob GET
written straight to a file. kaiflow does more on top (builds the tar+gzip layer while it
uploads, hashes it, uploads a config and a manifest; on pull: fetches the manifest, hashes,
un-gzips and un-tars into a staging folder, moves files into place); the ratio says what that
costs. kaiflow and the baseline run in turn in the same process against the same registry.
Target: ratio >= 0.9.

Runs are ABBA-ordered (odd runs time the baseline first) and each run's own ratio is kept; the
printed ratio is their median. ``os.sync()`` before every timed step; the work folder is /dev/shm
by default (both sides write the same bytes; the disk's writeback only added noise: per-run pull
ratios of 0.46-1.4 on /tmp against 0.6-0.9 on /dev/shm); ``--only pull|push`` times one direction.
A third pull-side step, a GET that also checks the blob's SHA-256 in a second thread (what any OCI
client must do), is printed beside the target's ratio.

Measured 2026-11-26, 256 MiB (268 MB), ratio = median of the runs' ratios:

    machine, work folder              push/PUT   pull/GET   pull/(GET+sha256)
    2-core dev box, /tmp, 8 runs      0.95       0.71       -
    2-core dev box, /dev/shm, 8 runs  0.94       0.84       1.03
    16-core H100 VM, /tmp, 10 runs    0.91       0.76       -
    16-core H100 VM, /dev/shm, 10     0.95       0.73       0.92
    16-core H100 VM, --only pull, 8   -          0.78       0.95

Push meets the target. Pull does not, and no client that verifies the digest can by much: every
pulled byte goes through SHA-256, one sequential stream. On the H100 VM hashlib's SHA-256 (OpenSSL,
SHA-NI) runs 1.31 GB/s on one core against a plain GET's 1.24-1.45 GB/s, and the verifying GET
above reaches 1.05-1.08 GB/s (0.85 of the plain GET); kaiflow's pull runs at 0.92-0.95 of that
verifying GET there and at 1.03 of it on the 2-core box, where the hash thread has no spare core
(the client thread, the registry process and the hash need ~1.9 cores together).

    .venv/bin/python -m bench.transfer                 # 256 MB adapter, a local docker-registry
    .venv/bin/python -m bench.transfer --mb 64 --runs 3 --registry 127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from infra import registry

# the registry it starts is the tests' (tests.support.registry), which the installed package does not hold
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _adapter(root: Path, mb: int) -> Path:
    path = root / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    with open(path / "adapter_model.safetensors", "wb") as out:
        for _ in range(mb):
            out.write(os.urandom(1 << 20))
    return path


def _raw_put(client: httpx.Client, base: str, repo: str, path: Path, digest: str) -> None:
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    location = start.headers["Location"]
    location = location if location.startswith("http") else base + location
    with open(path, "rb") as body:
        done = client.put(f"{location}&digest={digest.replace(':', '%3A')}", content=body,
                          headers={"Content-Type": "application/octet-stream",
                                   "Content-Length": str(path.stat().st_size)})
    assert done.status_code == 201, done.text


def _verified_get(client: httpx.Client, base: str, repo: str, digest: str, dest: Path) -> None:
    """The plain GET plus what any OCI client must add: the blob's SHA-256, here in a second thread
    fed ~1 MiB blocks (the cheapest way found). Not the target's baseline: it shows what kaiflow's
    pull costs beyond the hash it cannot skip."""
    import queue
    import threading

    sha, blocks = hashlib.sha256(), queue.Queue(maxsize=32)

    def hash_blocks() -> None:
        while (block := blocks.get()) is not None:
            sha.update(block)

    thread = threading.Thread(target=hash_blocks)
    thread.start()
    batch: list[bytes] = []
    try:
        with client.stream("GET", f"{base}/v2/{repo}/blobs/{digest}") as resp, open(dest, "wb") as out:
            assert resp.status_code == 200
            for chunk in resp.iter_raw():
                batch.append(chunk)
                if len(batch) == 16:
                    block = b"".join(batch)
                    out.write(block)
                    blocks.put(block)
                    batch = []
            block = b"".join(batch)
            out.write(block)
            blocks.put(block)
    finally:
        blocks.put(None)
        thread.join()
    assert "sha256:" + sha.hexdigest() == digest


def _raw_get(client: httpx.Client, base: str, repo: str, digest: str, dest: Path) -> None:
    with client.stream("GET", f"{base}/v2/{repo}/blobs/{digest}") as resp, open(dest, "wb") as out:
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            out.write(chunk)


def _timed(fn: Callable[[], object]) -> float:
    # every run starts with no dirty pages waiting for the disk: otherwise whichever side runs
    # after a 256 MB write pays for its writeback (the kernel throttles the next writer)
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(host: str, mb: int, runs: int, work: Path, only: str = "both") -> dict[str, Any]:
    adapter = _adapter(work, mb)
    weights = adapter / "adapter_model.safetensors"
    digest = "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    size_mb = sum(p.stat().st_size for p in adapter.iterdir()) / 1e6
    settings = registry.RegistrySettings(layout_root=work / "layouts")
    base, ref = f"http://{host}", f"{host}/bench/adapter:v1"
    times: dict[str, list[float]] = {"push": [], "put": [], "pull": [], "get": [], "vget": []}

    def pair(ours: str, plain: str, fns: dict[str, Callable[[], object]], index: int) -> None:
        # ABBA: odd runs time the baseline first, so neither side always follows the other's writes
        keys = list(fns)
        for key in keys if index % 2 == 0 else keys[::-1]:
            times[key].append(_timed(fns[key]))

    with httpx.Client(timeout=120) as client:
        for i in range(runs):
            out = work / f"pull-{i}"
            if i == 0 or only != "pull":  # the pull needs the image pushed once
                pair("push", "put", {
                    "push": lambda: registry.push_adapter(adapter, ref, model_name="bench", settings=settings),
                    "put": lambda: _raw_put(client, base, "bench/raw", weights, digest)}, i)
            if only != "push":
                pair("pull", "get", {
                    "pull": lambda out=out: registry.pull(ref, out, settings=settings),
                    "get": lambda: _raw_get(client, base, "bench/raw", digest, work / "raw.bin"),
                    "vget": lambda: _verified_get(client, base, "bench/raw", digest, work / "raw.bin")}, i)
                shutil.rmtree(out)
                (work / "raw.bin").unlink()
    result: dict[str, Any] = {"mb": size_mb}
    for ours, plain in (("push", "put"), ("pull", "get")):
        if only in (ours, "both"):
            # the median of each run's own ratio: the two sides of a run saw the same machine state
            ratios = [p / k for p, k in zip(times[plain], times[ours])]
            result.update({f"{ours}_mbps": size_mb / statistics.median(times[ours]),
                           f"{plain}_mbps": size_mb / statistics.median(times[plain]),
                           f"{ours}_ratio": statistics.median(ratios), f"{ours}_ratios": [round(r, 2) for r in ratios]})
    if times["vget"]:
        result["vget_mbps"] = size_mb / statistics.median(times["vget"])
        result["pull_vs_verified"] = statistics.median(v / k for v, k in zip(times["vget"], times["pull"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="adapter size in MB (default 256)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--registry", help="host:port of a registry (default: start docker-registry on loopback)")
    parser.add_argument("--work", type=Path, help="where the adapter, the pulls and the registry's storage go "
                        "(default: /dev/shm when it has room, which takes the disk's writeback noise out of "
                        "both sides; else the system temp dir)")
    parser.add_argument("--only", choices=("push", "pull", "both"), default="both",
                        help="time one direction only (pull: the image is pushed once, untimed pairs aside)")
    args = parser.parse_args()
    if args.work is None and Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 8 * args.mb << 20:
        args.work = Path("/dev/shm")
    print(f"work folder: {args.work or tempfile.gettempdir()}")
    with tempfile.TemporaryDirectory(prefix="kaiflow-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.registry:
            result = run(args.registry, args.mb, args.runs, work, args.only)
        else:
            from tests.support import registry as registry_support

            with registry_support.LocalRegistry(work / "registry") as reg:
                result = run(reg.host, args.mb, args.runs, work, args.only)
    print(f"adapter {result['mb']:.0f} MB, {args.runs} runs each, alternating (ABBA); MB/s are medians, ratios the "
          f"median of each run's baseline/kaiflow time ratio")
    for ours, plain, what in (("push", "put", "PUT"), ("pull", "get", "GET")):
        if f"{ours}_ratio" in result:
            ratio = result[f"{ours}_ratio"]
            print(f"{ours}: kaiflow {result[f'{ours}_mbps']:.0f} MB/s  vs plain {what} {result[f'{plain}_mbps']:.0f} MB/s  "
                  f"ratio {ratio:.2f}  (runs: {' '.join(map(str, result[f'{ours}_ratios']))})  "
                  f"target >= 0.9 {'met' if ratio >= 0.9 else 'NOT met'}")
    if "vget_mbps" in result:
        print(f"      (a GET that also checks the SHA-256, as any OCI client must: {result['vget_mbps']:.0f} MB/s; "
              f"kaiflow's pull runs at {result['pull_vs_verified']:.2f} of it)")


if __name__ == "__main__":
    main()
