"""Dataset pull speed: kaiflow's URL pull (hash, fingerprint, format check) against ``curl -o``.

Both fetch the same parquet file (1 GiB by default, incompressible) from the same loopback HTTP
server, in turn, in one run. The server is a threaded ``http.server`` that sends bodies with
``socket.sendfile`` (the kernel copies page cache to the socket; no Python loop), so it is not the
bottleneck: the run also times ``curl`` against ``tests/support/fileserver.py`` (a Python
read/write loop of 64 KiB) and prints both, which says how much headroom the fast one has.

kaiflow's pull runs in a child process (``infra.datasets.pull``, the flow's own call), which
reports the seconds spent in ``pull()`` and its own peak RSS (``VmHWM``); curl's time is its
process's wall time. Files land in /dev/shm when it has room (the disk's writeback would time the
disk, not the pull). Runs alternate ABBA; the ratio printed is the median of each run's
curl_time/kaiflow_time. Targets: ratio >= 0.8 and peak RSS < 300 MB.

Then the Range-resume path: the server cuts the connection once at 50 % of the body, kaiflow's
pull retries with ``Range``/``If-Range`` and must finish with the whole file having crossed the
wire about once (printed: bytes sent / file size), its time against an uncut pull's.

Measured 2026-12-01 on the 2-core box while five other sessions built and tested on it (load 4-20):

    size, runs         ratio (runs)            peak RSS   resume: sent, speed vs uncut
    1 GiB, 2 (before)  0.39 (0.34 0.44)        -          1.00x, 1.39
    512 MiB, 3         0.68 (0.36 0.68 1.11)   69 MB      1.00x, 0.98
    1 GiB, 3           1.17 (1.17 1.35 1.11)   68 MB      1.00x, 1.10   (175 s; curl only 79 MB/s)

"before": the pull hashed and wrote each socket read in the receiving thread; it now hands ~1 MiB
blocks to a second thread. Under heavy load its two threads get more of the cores than curl's one,
which flatters the last row.

    .venv/bin/python bench/datasets.py                  # 1 GiB, 3 runs each
    .venv/bin/python bench/datasets.py --mb 64 --runs 1 # a quick look
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import json, sys, time
from infra import datasets
url, dest = sys.argv[1], sys.argv[2]
def peak_rss_mb():  # VmHWM: this process's own peak (ru_maxrss would keep the parent's across fork+exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
start = time.perf_counter()
fp = datasets.pull(url, dest, allow_private=True)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb(),
                  "digest": fp.digest, "sha256": fp.files[0].sha256, "format": fp.files[0].format,
                  "size": fp.files[0].size, "downloaded": fp.downloaded_bytes}))
"""


def write_parquet(path: Path, mb: int) -> Path:
    """A parquet file of about ``mb`` MiB: one binary column of random 64 KiB values, uncompressed
    (so every byte must cross the wire), written a row group at a time (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = 64 << 10
    rows, per_group = max(1, (mb << 20) // value), 256
    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for first in range(0, rows, per_group):
            n = min(per_group, rows - first)
            writer.write_table(pa.table({"id": list(range(first, first + n)),
                                         "blob": [os.urandom(value) for _ in range(n)]}, schema=schema))
    return path


class FastServer:
    """Serves one folder on 127.0.0.1 with ``socket.sendfile``; ETag, Range/If-Range, and a one-off
    cut of the connection after ``cut_at`` body bytes. Counts the body bytes it sent."""

    def __init__(self, root: Path) -> None:
        self.root, self.sent = root, 0
        self.cut_at: int | None = None
        self.requests: list[tuple[str | None, int]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_SendfileHandler,), {"owner": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FastServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _SendfileHandler(http.server.BaseHTTPRequestHandler):
    owner: FastServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = (self.owner.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if self.owner.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        st = path.stat()
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        start, status = 0, 200
        rng, if_range = self.headers.get("Range", ""), self.headers.get("If-Range")
        if rng.startswith("bytes=") and (not if_range or if_range == etag):
            start, status = int(rng[6:].split("-", 1)[0]), 206
        with self.owner._lock:
            self.owner.requests.append((self.headers.get("Range"), status))
            cut, self.owner.cut_at = self.owner.cut_at, None
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(st.st_size - start))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{st.st_size - 1}/{st.st_size}")
        self.end_headers()
        count = st.st_size - start if cut is None else max(0, cut - start)
        with open(path, "rb") as f:
            try:
                sent = self.connection.sendfile(f, start, count)
            except (BrokenPipeError, ConnectionResetError):
                sent = 0
        with self.owner._lock:
            self.owner.sent += sent
        if cut is not None:
            self.close_connection = True
            self.connection.shutdown(2)


def curl(url: str, dest: Path) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)
    took = time.perf_counter() - start
    dest.unlink()
    return took


def kaiflow_pull(url: str, dest: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    os.sync()
    wall = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, url, str(dest)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"kaiflow's pull failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - wall
    shutil.rmtree(dest)
    return result


def run(work: Path, mb: int, runs: int) -> dict[str, Any]:
    from tests.support import fileserver

    data = work / "data"
    data.mkdir()
    made = time.perf_counter()
    parquet = write_parquet(data / "train.parquet", mb)
    size = parquet.stat().st_size
    with open(parquet, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    print(f"dataset: {parquet.name}, {size / 1e6:.0f} MB parquet, written in {time.perf_counter() - made:.1f} s", flush=True)
    times: dict[str, list[float]] = {"curl": [], "kaiflow": []}
    pulls: list[dict[str, Any]] = []
    with FastServer(data) as fast:
        url = f"{fast.url}/train.parquet"
        for i in range(runs):
            steps = ["curl", "kaiflow"] if i % 2 == 0 else ["kaiflow", "curl"]
            for step in steps:
                if step == "curl":
                    times["curl"].append(curl(url, work / "curl.out"))
                else:
                    res = kaiflow_pull(url, work / "pulled")
                    assert res["size"] == size and res["format"] == "parquet", res
                    assert res["sha256"] == sha, "kaiflow's sha256 differs from the file's"
                    pulls.append(res)
                    times["kaiflow"].append(res["seconds"])
            print(f"run {i}: curl {size / 1e6 / times['curl'][-1]:.0f} MB/s, kaiflow "
                  f"{size / 1e6 / times['kaiflow'][-1]:.0f} MB/s (RSS {pulls[-1]['rss_mb']:.0f} MB)", flush=True)
        # the Range-resume path: cut once at 50 %, kaiflow resumes; no backoff wait, so the time is the transfer's
        fast.sent, fast.requests = 0, []
        fast.cut_at = size // 2
        resumed = kaiflow_pull(url, work / "pulled", env={"KAIFLOW_DATASET_BACKOFF_S": "0"})
        resume = {"seconds": resumed["seconds"], "requests": list(fast.requests), "sent_ratio": fast.sent / size,
                  "rss_mb": resumed["rss_mb"]}
        assert resumed["size"] == size and resumed["sha256"] == sha, resumed
    with fileserver.FileServer(data) as slow:  # how fast the tests' Python file server is, for the record
        slow_curl = curl(slow.url_for("train.parquet"), work / "curl.out")
    ratios = [c / k for c, k in zip(times["curl"], times["kaiflow"])]
    return {"mb": size / 1e6, "curl_mbps": size / 1e6 / statistics.median(times["curl"]),
            "kaiflow_mbps": size / 1e6 / statistics.median(times["kaiflow"]), "ratio": statistics.median(ratios),
            "ratios": [round(r, 2) for r in ratios], "rss_mb": max(p["rss_mb"] for p in pulls),
            "kaiflow_wall_s": statistics.median(p["wall"] for p in pulls),
            "slow_server_curl_mbps": size / 1e6 / slow_curl, "resume": resume,
            "uncut_s": statistics.median(times["kaiflow"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="parquet size in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="default: /dev/shm when it has room, else the temp dir")
    args = parser.parse_args()
    if args.work is None and shutil.disk_usage("/dev/shm").free > 4 * (args.mb << 20):
        args.work = Path("/dev/shm")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kaiflow-bench-data-", dir=args.work) as tmp:
        r = run(Path(tmp), args.mb, args.runs)
    print(f"\nwork folder {args.work or tempfile.gettempdir()}; {args.runs} runs each, ABBA; MB/s are medians, the "
          f"ratio the median of each run's curl/kaiflow time ratio")
    print(f"pull: kaiflow {r['kaiflow_mbps']:.0f} MB/s vs curl -o {r['curl_mbps']:.0f} MB/s  ratio {r['ratio']:.2f}  "
          f"(runs: {' '.join(map(str, r['ratios']))})  target >= 0.8 {'met' if r['ratio'] >= 0.8 else 'NOT met'}")
    print(f"peak RSS of the pulling process: {r['rss_mb']:.0f} MB  target < 300 MB "
          f"{'met' if r['rss_mb'] < 300 else 'NOT met'}  (its wall time with interpreter start: "
          f"{r['kaiflow_wall_s']:.2f} s)")
    res = r["resume"]
    print(f"resume: cut at 50 %, requests {res['requests']}, {res['sent_ratio']:.2f}x the file sent, "
          f"{res['seconds']:.2f} s vs {r['uncut_s']:.2f} s uncut (ratio {r['uncut_s'] / res['seconds']:.2f})")
    print(f"server check: curl from the sendfile server {r['curl_mbps']:.0f} MB/s, from tests/support/fileserver.py "
          f"{r['slow_server_curl_mbps']:.0f} MB/s")
    print(f"RESULT datasets_ratio={r['ratio']:.2f}")
    print(f"RESULT datasets_rss_mb={r['rss_mb']:.0f}")
    print(f"RESULT datasets_resume_sent={res['sent_ratio']:.2f}")
    print(f"took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
