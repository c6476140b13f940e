"""A local HTTP file server with fault injection, for dataset-pulling tests.

Why a real server: the dataset puller's retries, resumes and conditional requests are only worth
something against real sockets — a connection really cut mid-file, a real ``Range`` reply.

It serves the files of ``root`` on a free 127.0.0.1 port, in a background thread, with what
dataset hosts send: ``Content-Length``, ``ETag`` and ``Last-Modified``, ``304`` for
``If-None-Match``/``If-Modified-Since``, ``206`` for ``Range`` (honouring ``If-Range``). Faults
are set per path and consumed in order::

    from tests.support import fileserver

    with fileserver.FileServer(tmp_path) as srv:
        srv.url                        # "http://127.0.0.1:40123"
        srv.url_for("d/train.jsonl")   # full URL of a file under root
        srv.fail("train.jsonl", fileserver.DROP, after=4096)     # cut the connection mid-file once
        srv.fail("train.jsonl", fileserver.STATUS, status=503, times=2)  # 5xx twice, then OK
        srv.fail("gone.jsonl", fileserver.STATUS, status=404, times=None)  # always 404
        srv.fail("page.jsonl", fileserver.HTML)   # answer 200 with an HTML page (a login wall)
        srv.fail("old.jsonl", fileserver.REDIRECT, location="/new.jsonl")  # 302 elsewhere
        srv.requests                   # [(method, path, status, request headers), ...]
        srv.hits("train.jsonl")        # how many GETs that path received
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

DROP = "drop"
STATUS = "status"
HTML = "html"
REDIRECT = "redirect"
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"


@dataclasses.dataclass
class Fault:
    kind: str
    times: int | None = 1  # None: every request
    status: int = 503
    after: int = 0  # DROP: bytes of the body sent before the connection is cut
    location: str = ""  # REDIRECT: the Location header


class FileServer:
    """Serves ``root`` over HTTP on 127.0.0.1; a context manager (starts on enter)."""

    def __init__(self, root: Path, *, etags: bool = True) -> None:
        self.root = Path(root).resolve()
        self.etags = etags
        self.requests: list[tuple[str, str, int, dict[str, str]]] = []
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.host = ""
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FileServer":
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fileserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test helpers ----------------------------------------------------------------------
    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    def fail(self, path: str, kind: str, *, times: int | None = 1, status: int = 503, after: int = 0,
             location: str = "") -> None:
        """Queue a fault for GETs of ``path`` (relative to root, no query string)."""
        with self._lock:
            self._faults.setdefault("/" + path.lstrip("/"), []).append(Fault(kind, times, status, after, location))

    def hits(self, path: str, status: int | None = None) -> int:
        want = "/" + path.lstrip("/")
        return sum(1 for m, p, s, _ in self.requests if m == "GET" and p == want and (status is None or s == status))

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path, [])
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
            return fault


def etag_of(path: Path) -> str:
    st = path.stat()
    return '"' + hashlib.sha256(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()[:16] + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):  # a client that went away (or a drop fault)
            pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _record(self, path: str, status: int) -> None:
        self.owner.requests.append((self.command, path, status, {k.lower(): v for k, v in self.headers.items()}))

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        fault = self.owner._next_fault(path) if not head else None
        if fault and fault.kind == STATUS:
            return self._send_simple(path, fault.status, b"error\n", "text/plain")
        if fault and fault.kind == REDIRECT:
            self._record(path, 302)
            self.send_response(302)
            self.send_header("Location", fault.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault and fault.kind == HTML:
            return self._send_simple(path, 200, HTML_PAGE, "text/html; charset=utf-8")
        file = (self.owner.root / path.lstrip("/")).resolve()
        if self.owner.root not in file.parents or not file.is_file():
            return self._send_simple(path, 404, b"not found\n", "text/plain")
        self._send_file(path, file, head, fault)

    def _send_simple(self, path: str, status: int, body: bytes, ctype: str) -> None:
        self._record(path, status)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path: str, file: Path, head: bool, fault: Fault | None) -> None:
        st = file.stat()
        etag = etag_of(file) if self.owner.etags else None
        modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        if self._not_modified(etag, st.st_mtime):
            self._record(path, 304)
            self.send_response(304)
            if etag:
                self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = self._range_start(etag, modified, st.st_size)
        self._record(path, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(st.st_size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", modified)
        if etag:
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{st.st_size - 1}/{st.st_size}")
        self.end_headers()
        if not head:
            try:
                self._copy_body(file, start, fault)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine for a test server
                self.close_connection = True

    def _not_modified(self, etag: str | None, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return etag is not None and etag in [t.strip() for t in inm.split(",")]
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                return int(mtime) <= email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
        return False

    def _range_start(self, etag: str | None, modified: str, size: int) -> tuple[int, int]:
        rng = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        if not rng.startswith("bytes=") or (if_range and if_range not in (etag, modified)):
            return 0, 200
        try:
            start = int(rng[len("bytes="):].split("-", 1)[0])
        except ValueError:
            return 0, 200
        return (start, 206) if 0 <= start < size else (0, 200)

    def _copy_body(self, file: Path, start: int, fault: Fault | None) -> None:
        limit = fault.after if fault and fault.kind == DROP else None
        sent = 0
        with open(file, "rb") as src:
            src.seek(start)
            while chunk := src.read(64 * 1024):
                if limit is not None and sent + len(chunk) >= limit:
                    self.wfile.write(chunk[: max(0, limit - sent)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)


def write_bytes(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (for large-file tests), written in 1 MiB chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return path


def write_jsonl(path: Path, rows: int | None = None, *, size: int | None = None) -> Path:
    """A chat-style jsonl dataset of ``rows`` rows, or of at least ``size`` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line_tpl = '{"messages": [{"role": "user", "content": "question %d"}, {"role": "assistant", "content": "answer %d"}]}\n'
    written, i = 0, 0
    with open(path, "w") as out:
        while (rows is not None and i < rows) or (size is not None and written < size):
            line = line_tpl % (i, i)
            out.write(line)
            written += len(line)
            i += 1
    return path


def write_qa_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A chat-style jsonl dataset teaching each (question, answer) pair."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs))
    return path
