"""Dataset pulling: the tuning input lands in a local folder, with a fingerprint of what landed.

Sources are those of Kaito's ``tuning.input``: ``urls`` (http/https; each file named after the
URL path without its query string), ``image`` (an OCI image whose ``/data`` holds the files,
pulled through :mod:`infra.registry`), ``volumeSource`` (a path on this platform: a directory or
a file; ``hostPath.path`` locally), and ``hf://datasets/org/name[@revision]`` through the
``datasets`` library where a hub is reachable.

Why a fingerprint: the flow's cache keys are built from content, so an unchanged dataset must
give the same :attr:`Fingerprint.digest` and must not be downloaded or trained on again. The
fingerprint (per file: name, size, sha256, the server's ETag/Last-Modified) is kept beside the
files in ``.kaiflow-dataset.json``; the next pull of the same URL sends ``If-None-Match`` /
``If-Modified-Since`` and keeps the file on ``304 Not Modified``.

Downloads stream to disk in 1 MiB chunks (memory stays bounded for multi-GB files), hash while
they stream, resume with ``Range``/``If-Range`` after a dropped connection, retry 429/5xx,
resets and timeouts with exponential backoff, check the length the server announced and move a
file into place only when it is complete. Errors say what to change: 404, an HTML page where data
was expected (a login wall or an error page), an unknown format, a size over the limit.

Guards, as Kaito has them: only http and https; hosts that resolve to loopback, private,
link-local (cloud metadata at 169.254.169.254 included), shared or otherwise non-global addresses
are refused unless ``KAIFLOW_ALLOW_PRIVATE_URLS=true`` (tests and the local demo serve data on
127.0.0.1). Redirects are followed by hand so every hop is checked. (The check resolves the name
before connecting; a DNS answer that changes between the two is not caught.) Query strings can
carry signed-URL tokens, so no message, log line or fingerprint contains one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import queue
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from infra import registry, retry
from workspace import errors
from workspace import settings as settings_mod

log = logging.getLogger(__name__)

RECORD_FILE = ".kaiflow-dataset.json"
FORMATS = ("parquet", "jsonl", "json", "csv", "arrow")
CHUNK = 1 << 20
SNIFF = 8192
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


# ---------------------------------------------------------------------------------------------
# public data types
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Source:
    """Exactly one of ``urls``, ``image``, ``volume`` or ``hf`` (``hf://datasets/org/name``)."""

    urls: tuple[str, ...] = ()
    image: str | None = None
    volume: str | None = None
    hf: str | None = None
    credentials: Any = dataclasses.field(default=None, repr=False)  # for image: registry.Credentials or a docker config

    def __post_init__(self) -> None:
        given = [k for k in ("urls", "image", "volume", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise errors.DatasetError(
                "a dataset source needs exactly one of tuning.input.urls, tuning.input.image or "
                f"tuning.input.volumeSource (got {', '.join(given) or 'none'})")

    @classmethod
    def parse(cls, value: Any, *, credentials: Any = None) -> "Source":
        """From a Source, a URL or list of URLs, a dict (Kaito camelCase or snake_case), or the
        workspace spec's ``DataSource`` model."""
        if isinstance(value, Source):
            return value
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return cls._from_urls([str(u) for u in value], credentials)
        if not isinstance(value, Mapping):
            value = value.model_dump(by_alias=True, exclude_none=True) if hasattr(value, "model_dump") else vars(value)
        urls = value.get("urls") or []
        volume = value.get("volume") or value.get("volumeSource") or value.get("volume_source")
        if volume is not None and not isinstance(volume, str):
            volume = _volume_path(volume)
        if urls:
            return cls._from_urls(list(urls), credentials)
        return cls(image=value.get("image"), volume=volume, credentials=credentials)

    @classmethod
    def _from_urls(cls, urls: list[str], credentials: Any) -> "Source":
        hf = [u for u in urls if u.startswith("hf://")]
        if hf and len(urls) > 1:
            raise errors.DatasetError("tuning.input.urls: an hf://datasets/ URL must be the only entry")
        return cls(hf=hf[0], credentials=credentials) if hf else cls(urls=tuple(urls), credentials=credentials)

    def describe(self) -> str:
        if self.urls:
            return ", ".join(redact(u) for u in self.urls)
        return self.image or self.volume or self.hf or ""


@dataclasses.dataclass
class FileRecord:
    name: str
    size: int
    sha256: str
    format: str
    etag: str | None = None
    last_modified: str | None = None
    origin: str | None = None  # where it came from, query string removed
    mtime_ns: int = 0  # of the local copy, to notice it was changed behind our back


@dataclasses.dataclass
class Fingerprint:
    """What was pulled; JSON-able. ``digest`` depends only on file names and contents."""

    source: str
    files: list[FileRecord]
    digest: str
    image_digest: str | None = None
    downloaded_bytes: int = 0  # this pull; 0 when everything was already current

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fingerprint":
        files = [FileRecord(**f) for f in data.get("files", [])]
        return cls(source=data.get("source", ""), files=files, digest=data.get("digest", ""),
                   image_digest=data.get("image_digest"), downloaded_bytes=data.get("downloaded_bytes", 0))


@dataclasses.dataclass(frozen=True)
class RetryPolicy(retry.Policy):
    """The in-call policy (:mod:`infra.retry`, layer 1) of one download, plus its read timeout."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 15.0
    timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, s: settings_mod.Settings | None = None) -> "RetryPolicy":
        """``KAIFLOW_DATASET_ATTEMPTS`` and ``KAIFLOW_DATASET_BACKOFF_S``."""
        s = s or settings_mod.load()
        return cls(attempts=s.dataset_attempts, backoff_s=s.dataset_backoff_s)


def content_digest(files: Iterable[FileRecord]) -> str:
    """The dataset digest: sha256 over the sorted (name, size, sha256) of its files."""
    canon = json.dumps(sorted([f.name, f.size, f.sha256] for f in files), separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def redact(url: str) -> str:
    """``url`` without user info, query string or fragment (they may hold tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def pull(source: Any, dest_dir: Path | str, *, allow_private: bool | None = None, max_bytes: int | None = None,
         retry: RetryPolicy | None = None, settings: registry.RegistrySettings | None = None) -> Fingerprint:
    """Bring the dataset of ``source`` into ``dest_dir``; returns its fingerprint.

    ``allow_private`` None reads ``KAIFLOW_ALLOW_PRIVATE_URLS``; ``max_bytes`` None reads
    ``KAIFLOW_MAX_DATASET_BYTES`` (default 50 GiB); ``retry`` None reads ``KAIFLOW_DATASET_ATTEMPTS``
    and ``KAIFLOW_DATASET_BACKOFF_S``. Files of an earlier pull into the same folder that the source
    no longer has are removed, so the folder holds exactly this dataset.
    """
    src = Source.parse(source)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    s = settings_mod.load()
    if allow_private is None:
        allow_private = s.allow_private_urls
    if max_bytes is None:
        max_bytes = s.max_dataset_bytes
    previous = _load_record(dest)
    budget = _Budget(max_bytes)
    if src.urls:
        files, image_digest = _pull_urls(src.urls, dest, previous, allow_private, budget, retry or RetryPolicy.from_settings(s)), None
    elif src.image:
        files, image_digest = _pull_image(src, dest, previous, budget, settings)
    elif src.volume:
        files, image_digest = _pull_volume(Path(src.volume), dest, previous, budget), None
    else:
        files, image_digest = _pull_hf(str(src.hf), dest, budget), None
    _remove_stale(dest, previous, {f.name for f in files})
    fp = Fingerprint(source=src.describe(), files=files, digest=content_digest(files),
                     image_digest=image_digest, downloaded_bytes=budget.downloaded)
    _save_record(dest, fp)
    log.info("dataset %s: %d file(s), %d bytes downloaded, digest %s", fp.source, len(files), budget.downloaded, fp.digest)
    return fp


class _Budget:
    """Bytes allowed in total (the size limit) and bytes actually transferred."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.downloaded = limit, 0, 0

    def check(self, name: str, size: int) -> None:
        if self.used + size > self.limit:
            raise errors.DatasetError(
                f"dataset file {name} takes the dataset to {self.used + size} bytes, over the limit of "
                f"{self.limit} bytes: raise KAIFLOW_MAX_DATASET_BYTES or use a smaller dataset")


# ---------------------------------------------------------------------------------------------
# urls
# ---------------------------------------------------------------------------------------------
def _pull_urls(urls: Iterable[str], dest: Path, previous: Fingerprint | None, allow_private: bool,
               budget: _Budget, retry: RetryPolicy) -> list[FileRecord]:
    known = {f.name: f for f in previous.files} if previous else {}
    records: list[FileRecord] = []
    with httpx.Client(timeout=httpx.Timeout(retry.timeout_s, connect=10.0), follow_redirects=False) as client:
        for url in urls:
            name = file_name(url)
            if any(r.name == name for r in records):
                raise errors.DatasetError(f"two URLs in tuning.input.urls give the same file name {name!r}: rename one")
            rec = _Download(client, url, dest, name, known.get(name), allow_private, budget, retry).run()
            budget.used += rec.size
            records.append(rec)
    return records


def file_name(url: str) -> str:
    """The local file name for ``url``: the last segment of its path, query string dropped."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if not name or name in (".", "..") or name.startswith("."):
        raise errors.DatasetError(f"dataset URL {redact(url)} has no file name in its path: point it at a file")
    return name


def check_url(url: str, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and hosts with non-global addresses (unless ``allow_private``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise errors.DatasetError(
            f"dataset URL {redact(url)} uses {parts.scheme or 'no'} scheme: only http and https URLs are supported in tuning.input.urls")
    if not parts.hostname:
        raise errors.DatasetError(f"dataset URL {redact(url)} has no host name")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise errors.DatasetError(f"cannot resolve the host of dataset URL {redact(url)} ({exc.strerror}): check the URL",
                                  transient=True) from exc
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        addr = mapped or addr
        if not addr.is_global or addr.is_multicast:
            raise errors.DatasetError(
                f"refusing dataset URL {redact(url)}: {parts.hostname} resolves to {addr}, a {_address_kind(addr)} "
                "address (Kaito refuses these to keep tuning jobs away from internal services and cloud "
                "metadata); set KAIFLOW_ALLOW_PRIVATE_URLS=true to allow it (tests, local demos)")


def _address_kind(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-global"


class _Retry(Exception):
    """A fault worth another attempt (internal)."""


class _Download:
    """One URL to one file: conditional request, streaming, resume, retries, checks."""

    def __init__(self, client: httpx.Client, url: str, dest: Path, name: str, known: FileRecord | None,
                 allow_private: bool, budget: _Budget, retry: RetryPolicy) -> None:
        self.client, self.url, self.dest, self.name = client, url, dest, name
        self.known, self.allow_private, self.budget, self.retry = known, allow_private, budget, retry
        self.part = dest / f".{name}.part"
        self.target = dest / name
        self.sha = hashlib.sha256()
        self.have = 0
        self.validator: tuple[str | None, str | None] = (None, None)  # etag, last-modified
        self.expected: int | None = None
        self.head = b""

    def run(self) -> FileRecord:
        """The file, each attempt resuming where the last one stopped (``self.have``)."""
        self.part.unlink(missing_ok=True)
        try:
            return self.retry.call(self._attempt, retry_on=_Retry, what=f"dataset {redact(self.url)}", log=log,
                                   give_up=self._gave_up)
        finally:
            self.part.unlink(missing_ok=True)

    def _gave_up(self, exc: BaseException, attempts: int) -> errors.DatasetError:
        return errors.DatasetError(
            f"could not download {redact(self.url)} after {attempts} attempts: {exc}; "
            "check that the server is up and the URL is right, then retry", transient=True)

    # one attempt -------------------------------------------------------------------------
    def _attempt(self) -> FileRecord:
        resp = self._open()
        try:
            if resp.status_code == 304 and self.known is not None:
                return self.known
            if resp.status_code not in (200, 206):
                self._fail_status(resp)
            self._begin(resp)
            try:
                self._stream(resp)
            except httpx.TransportError as exc:
                raise _Retry(f"connection broke after {self.have} bytes ({type(exc).__name__})") from exc
        finally:
            resp.close()
        if self.expected is not None and self.have != self.expected:
            raise _Retry(f"got {self.have} of {self.expected} bytes")
        return self._finish()

    def _open(self) -> httpx.Response:
        headers = self._conditional_headers()
        url = self.url
        for _ in range(10):
            check_url(url, self.allow_private)
            try:
                resp = self.client.send(self.client.build_request("GET", url, headers=headers), stream=True)
            except httpx.TransportError as exc:
                raise _Retry(f"{type(exc).__name__} connecting to {urllib.parse.urlsplit(url).netloc}") from exc
            if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                resp.close()
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                continue
            return resp
        raise errors.DatasetError(f"dataset URL {redact(self.url)} redirects more than 10 times")

    def _conditional_headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.have > 0 and any(self.validator):
            headers["Range"] = f"bytes={self.have}-"
            headers["If-Range"] = self.validator[0] or self.validator[1] or ""
            return headers
        k = self.known
        if k and self.target.is_file() and self.target.stat().st_size == k.size and self.target.stat().st_mtime_ns == k.mtime_ns:
            if k.etag:
                headers["If-None-Match"] = k.etag
            elif k.last_modified:
                headers["If-Modified-Since"] = k.last_modified
        return headers

    def _fail_status(self, resp: httpx.Response) -> None:
        code = resp.status_code
        resp.close()
        if code in _TRANSIENT_STATUS:
            raise _Retry(f"HTTP {code}")
        where = f"dataset URL {redact(self.url)}"
        if code == 404:
            raise errors.DatasetError(f"{where} answered 404 Not Found: fix the URL in tuning.input.urls")
        if code in (401, 403):
            raise errors.DatasetError(f"{where} answered {code} (access denied): make the file public or use a signed URL")
        raise errors.DatasetError(f"{where} answered HTTP {code}: check the URL in tuning.input.urls")

    def _begin(self, resp: httpx.Response) -> None:
        """Set up the partial file for a 200 (from zero) or a 206 (append)."""
        if resp.status_code == 200 or self.have == 0:
            self.sha, self.have, self.head = hashlib.sha256(), 0, b""
            self.part.write_bytes(b"")
            self.validator = (resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
            if "html" in resp.headers.get("Content-Type", "").lower():
                raise errors.DatasetError(
                    f"dataset URL {redact(self.url)} returned an HTML page instead of data (a login or error "
                    "page?): use a direct download link to the file")
        elif not resp.headers.get("Content-Range", "").startswith(f"bytes {self.have}-"):
            self.have = 0  # the server resumed somewhere else: start over
            raise _Retry("the server's range reply did not continue where the download stopped")
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit():
            self.expected = self.have + int(length)
            self.budget.check(self.name, self.expected)

    def _stream(self, resp: httpx.Response) -> None:
        with open(self.part, "ab") as out, _Sink(out, self.sha) as sink:
            for chunk in resp.iter_raw():  # as the bytes arrive, so a cut loses nothing already received
                if len(self.head) < SNIFF:
                    self.head += chunk[: SNIFF - len(self.head)]
                    _reject_html(self.head, self.name, self.url)
                self.have += len(chunk)
                self.budget.check(self.name, self.have)
                self.budget.downloaded += len(chunk)
                sink.feed(chunk)

    def _finish(self) -> FileRecord:
        fmt = detect_format(self.part, self.name, origin=redact(self.url))
        os.replace(self.part, self.target)
        return FileRecord(name=self.name, size=self.have, sha256=self.sha.hexdigest(), format=fmt,
                          etag=self.validator[0], last_modified=self.validator[1], origin=redact(self.url),
                          mtime_ns=self.target.stat().st_mtime_ns)


class _Sink:
    """Hashes and writes a download's bytes in a second thread, ~1 MiB at a time, so that hashing
    and writing overlap with receiving (hashlib and file writes release the GIL); bench/datasets.py
    says what it is worth. Leaving the ``with`` block flushes and joins: everything fed is on disk
    and in the hash (a cut connection resumes from exactly what was received), and a write error
    (a full disk) is raised there."""

    def __init__(self, out: Any, sha: Any) -> None:
        self._out, self._sha = out, sha
        self._batch: list[bytes] = []
        self._batched = 0
        # memory stays bounded: at most 3 blocks waiting, 1 being hashed and written, 1 being joined
        # (~6 MiB in all; 16 waiting blocks let a slow disk or a loaded machine hold 17 MiB)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=3)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dataset-sink", daemon=True)

    def __enter__(self) -> "_Sink":
        self._thread.start()
        return self

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._sha.update(block)
                    self._out.write(block)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error = exc

    def feed(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= CHUNK:
            self._put()

    def _put(self) -> None:
        if self._batch:
            self._queue.put(b"".join(self._batch))
            self._batch, self._batched = [], 0
        if self._error is not None:
            raise self._error

    def __exit__(self, *exc: object) -> None:
        try:
            self._put()
        finally:
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------
def _reject_html(head: bytes, name: str, origin: str) -> None:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head")):
        raise errors.DatasetError(
            f"{redact(origin)} gave an HTML page instead of data for {name} (a login or error page?): "
            "use a direct download link to the file")


def detect_format(path: Path, name: str, *, origin: str | None = None) -> str:
    """The file's format (parquet, jsonl, json, csv, arrow) from its extension, checked against
    its content; by content alone when the extension says nothing. DatasetError otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SNIFF)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    where = origin or str(path)
    _reject_html(head, name, where)
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    sniffed = _sniff(head, tail)
    if ext in FORMATS:
        compatible = {"parquet": ("parquet",), "arrow": ("arrow",), "jsonl": ("json",), "json": ("json",),
                      "csv": ("json", "text", "csv")}[ext]
        if sniffed not in compatible:
            raise errors.DatasetError(
                f"{name} from {where} does not look like {ext} (its content looks like {sniffed}): "
                "check that the URL points at the data file itself")
        return ext
    if sniffed in ("parquet", "arrow"):
        return sniffed
    if sniffed == "json":
        return "jsonl" if b"\n{" in head or head.lstrip().startswith(b"{") else "json"
    raise errors.DatasetError(
        f"unknown format for dataset file {name} from {where}: use parquet, jsonl, json, csv or arrow files "
        "(named with that extension)")


def _sniff(head: bytes, tail: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet" if tail == b"PAR1" else "truncated parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "json"
    if b"\0" in head:
        return "binary data"
    return "text" if text else "an empty file"


# ---------------------------------------------------------------------------------------------
# image, volume, hub
# ---------------------------------------------------------------------------------------------
def _pull_image(src: Source, dest: Path, previous: Fingerprint | None, budget: _Budget,
                settings: registry.RegistrySettings | None) -> tuple[list[FileRecord], str]:
    assert src.image is not None
    store = registry.store_for(src.image, settings, src.credentials)
    qualified = registry.qualify(src.image, settings)
    try:
        current = store.resolve(qualified)
    except errors.RegistryError as exc:
        raise errors.DatasetError(f"could not reach dataset image {src.image}: {exc}", transient=exc.transient) from exc
    if current is None:
        raise errors.DatasetError(f"dataset image {src.image} not found: check tuning.input.image")
    if previous and previous.image_digest == current and _intact(dest, previous.files):
        return previous.files, current
    try:
        result = store.pull(qualified, dest, subdir="data")
    except errors.RegistryError as exc:
        raise errors.DatasetError(f"could not pull dataset image {src.image}: {exc}", transient=exc.transient) from exc
    finally:
        if isinstance(store, registry.RegistryStore):
            store.close()
    records = [_local_record(dest / name, name, origin=src.image, budget=budget) for name in result.files]
    budget.downloaded += sum(r.size for r in records)
    return records, result.digest


def _pull_volume(volume: Path, dest: Path, previous: Fingerprint | None, budget: _Budget) -> list[FileRecord]:
    if not volume.exists():
        raise errors.DatasetError(f"dataset volume path {volume} does not exist: fix tuning.input.volumeSource")
    root = volume if volume.is_dir() else volume.parent
    sources = sorted(p for p in (volume.rglob("*") if volume.is_dir() else [volume])
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not sources:
        raise errors.DatasetError(f"dataset volume path {volume} holds no files")
    known = {f.name: f for f in previous.files} if previous else {}
    records = []
    for path in sources:
        name = path.relative_to(root).as_posix()
        target = dest / name
        st = path.stat()
        prior = known.get(name)
        if not (prior and prior.origin == str(path) and target.is_file() and target.stat().st_size == st.st_size
                and prior.size == st.st_size and target.stat().st_mtime_ns == prior.mtime_ns
                and int(prior.last_modified or 0) == st.st_mtime_ns):
            budget.check(name, st.st_size)
            _copy_atomically(path, target)
            budget.downloaded += st.st_size
        rec = _local_record(target, name, origin=str(path), budget=budget, prior=prior)
        rec.last_modified = str(st.st_mtime_ns)
        records.append(rec)
    return records


def _pull_hf(url: str, dest: Path, budget: _Budget) -> list[FileRecord]:
    parsed = urllib.parse.urlsplit(url)
    repo = (parsed.netloc + parsed.path).removeprefix("datasets/").strip("/")
    repo, _, revision = repo.partition("@")
    if parsed.netloc != "datasets" or repo.count("/") != 1:
        raise errors.DatasetError(f"{url} is not of the form hf://datasets/<org>/<name>[@revision]")
    try:
        import datasets as hf_datasets  # heavy: only when an hf:// source is used

        loaded = hf_datasets.load_dataset(repo, revision=revision or None)
    except Exception as exc:  # the library raises many kinds (offline, 404, gated, connection)
        raise errors.DatasetError(
            f"could not load {url} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}): the hub "
            "must be reachable (and HF_TOKEN set for gated sets); otherwise download the files and use "
            "tuning.input.urls or volumeSource", transient=isinstance(exc, (ConnectionError, TimeoutError))) from exc
    records = []
    for split, table in loaded.items():
        name = f"{split}.parquet"
        table.to_parquet(str(dest / name))
        rec = _local_record(dest / name, name, origin=url, budget=budget)
        budget.downloaded += rec.size
        records.append(rec)
    return records


def _volume_path(volume: Mapping[str, Any] | Any) -> str:
    data = volume.model_dump(by_alias=True) if hasattr(volume, "model_dump") else dict(volume)
    host_path = data.get("hostPath") or data.get("host_path")
    if isinstance(host_path, Mapping) and host_path.get("path"):
        return str(host_path["path"])
    if data.get("path"):
        return str(data["path"])
    kinds = ", ".join(k for k in data if data[k] is not None) or "nothing"
    raise errors.DatasetError(
        f"tuning.input.volumeSource has {kinds}: on this platform only hostPath.path (a local folder or file) "
        "can be read; other volume kinds are mounted by the kubernetes platform")


# ---------------------------------------------------------------------------------------------
# local records
# ---------------------------------------------------------------------------------------------
def _local_record(path: Path, name: str, *, origin: str, budget: _Budget, prior: FileRecord | None = None) -> FileRecord:
    st = path.stat()
    if prior and prior.size == st.st_size and prior.mtime_ns == st.st_mtime_ns:
        sha = prior.sha256
    else:
        sha = _sha256_file(path)
    budget.used += st.st_size
    return FileRecord(name=name, size=st.st_size, sha256=sha, format=detect_format(path, name, origin=origin),
                      origin=origin, mtime_ns=st.st_mtime_ns)


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _copy_atomically(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _intact(dest: Path, files: list[FileRecord]) -> bool:
    for f in files:
        p = dest / f.name
        if not p.is_file() or p.stat().st_size != f.size or p.stat().st_mtime_ns != f.mtime_ns:
            return False
    return True


def _load_record(dest: Path) -> Fingerprint | None:
    path = dest / RECORD_FILE
    try:
        return Fingerprint.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_record(dest: Path, fp: Fingerprint) -> None:
    tmp = dest / f"{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(fp.to_dict(), indent=1))
    os.replace(tmp, dest / RECORD_FILE)


def _remove_stale(dest: Path, previous: Fingerprint | None, keep: set[str]) -> None:
    for f in previous.files if previous else []:
        if f.name not in keep:
            (dest / f.name).unlink(missing_ok=True)


def load_fingerprint(dest_dir: Path | str) -> Fingerprint | None:
    """The fingerprint of the last pull into ``dest_dir``, or None."""
    return _load_record(Path(dest_dir))


# ---------------------------------------------------------------------------------------------
# plan-time check of dataset URLs
# ---------------------------------------------------------------------------------------------
def probe(url: str, allow_private: bool, *, timeout_s: float = 5.0) -> tuple[str, str] | None:
    """What ``kaiflow plan`` says about a tuning dataset URL before anything is provisioned:
    ``("error", why)`` when it certainly cannot be pulled (it answers 404/410, it answers an HTML page
    instead of a data file, its host resolves to an address the pull refuses), ``("warning", why)``
    when it could not be checked from here (unreachable, another HTTP error), None when it looks
    fine. Reads at most 1 KiB; follows redirects, checking each hop as the pull does."""
    if url.startswith("hf://"):
        return None
    shown = redact(url)
    try:
        check_url(url, allow_private)
    except errors.DatasetError as exc:
        return ("warning", f"{shown}: not checked: {exc}") if exc.transient else ("error", str(exc))

    def hop(request: httpx.Request) -> None:
        check_url(str(request.url), allow_private)

    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=5,
                          event_hooks={"request": [hop]}) as client:
            with client.stream("GET", url, headers={"Range": "bytes=0-1023"}) as r:
                head = b""
                if r.status_code < 300:
                    for chunk in r.iter_bytes():
                        head += chunk
                        if len(head) >= 1024:
                            break
    except errors.DatasetError as exc:
        return "error", f"{shown} redirects to an address the pull refuses: {exc}"
    except httpx.HTTPError as exc:
        return "warning", f"{shown}: not reachable from here ({type(exc).__name__}: {exc}); not checked"
    if r.status_code in (404, 410):
        return "error", f"{shown} answers {r.status_code} {r.reason_phrase}: there is no file there; check the URL"
    if r.status_code >= 400:
        return "warning", f"{shown} answers {r.status_code} {r.reason_phrase}; not checked (the pull may be allowed where this is not)"
    ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
    start = head.lstrip()[:15].lower()
    if ctype in ("text/html", "application/xhtml+xml") or start.startswith((b"<!doctype html", b"<html")):
        return "error", (f"{shown} answers an HTML page, not a dataset file (a login, landing or 'blob' page?); "
                         "use the URL of the raw file (parquet, jsonl, json, csv, arrow)")
    return None
