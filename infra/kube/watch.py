"""List-then-watch one kind, the way client-go's reflector does: no event missed, none made up.

    list (resourceVersion R) ──► watch from R ──► event: note its resourceVersion, hand it on
        ▲                           │  the server ended the watch (timeoutSeconds), the connection
        │                           │  dropped, 429/5xx ──► watch again from the last version seen
        └── 410 Gone / Expired ◄────┘  (after a backoff when it was a fault)
        └── every ``resync_s``: list again and hand on every object (a periodic resync)

Each object is handed on as ``(type, object)`` with type ``ADDED``/``MODIFIED``/``DELETED`` from
the watch, or ``SYNC`` from a list. A consumer that keys its work on the object (name, uid,
generation) is therefore correct whatever it missed while it was down: the next list shows it.
Bookmarks (``allowWatchBookmarks``) only move the resume point.

Faults never end the loop: transient ones (the API server answering 429/5xx, a dropped or refused
connection) wait ``backoff`` (doubling to ``max_backoff_s``) and go on; ``stop`` ends it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from infra.kube import client as kclient
from workspace import errors

log = logging.getLogger(__name__)


class Gone(Exception):
    """The resourceVersion we resume from is older than the server keeps: list again."""


@dataclass
class Stats:
    """What the watch did, for logs and tests: lists made, watches opened, 410s, faults survived."""

    lists: int = 0
    watches: int = 0
    gone: int = 0
    faults: int = 0
    events: int = 0
    last_error: str = ""
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass
class Watcher:
    """Watch ``api_version``/``kind`` in ``namespaces`` (empty: all namespaces) and call ``handle``."""

    kube: kclient.Kube
    api_version: str
    kind: str
    handle: Callable[[str, dict], None]
    namespaces: tuple[str, ...] = ()
    resync_s: float = 300.0
    watch_timeout_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    stop: threading.Event = field(default_factory=threading.Event)
    stats: Stats = field(default_factory=Stats)

    def run(self) -> None:
        """Until ``stop``: one loop per namespace (all namespaces: one loop), each in this thread's turn."""
        if len(self.namespaces) <= 1:
            self._loop(self.namespaces[0] if self.namespaces else None)
            return
        threads = [threading.Thread(target=self._loop, args=(ns,), name=f"watch-{ns}", daemon=True) for ns in self.namespaces]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _loop(self, namespace: str | None) -> None:
        url = kclient.path(self.api_version, self.kind, namespace)
        delay = self.backoff_s
        version: str | None = None
        next_resync = 0.0
        while not self.stop.is_set():
            try:
                if version is None or time.monotonic() >= next_resync:
                    version = self._list(url)
                    next_resync = time.monotonic() + self.resync_s
                seen = [version]
                try:
                    self._watch(url, seen, until=next_resync)
                finally:
                    version = seen[0]  # a watch that failed half-way resumes after what it handed on
                delay = self.backoff_s
            except Gone:
                self.stats.gone += 1
                log.info("watch %s: resourceVersion %s expired (410); listing again", url, version)
                version = None
            except errors.KaiflowError as exc:
                if not isinstance(exc, errors.TransientError):
                    log.error("watch %s: %s", url, exc)
                self._fault(url, exc)
                self.stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
            except Exception as exc:  # noqa: BLE001 - a watch loop outlives any one fault
                self._fault(url, exc)
                self.stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _fault(self, url: str, exc: BaseException) -> None:
        self.stats.faults += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("watch %s: %s; trying again", url, self.stats.last_error)

    def _list(self, url: str) -> str:
        data = self.kube.request("GET", url, what=f"list {self.kind}", group=kclient.group_of(self.api_version),
                                 type_missing=True)
        self.stats.lists += 1
        for obj in data.get("items") or []:
            obj.setdefault("apiVersion", self.api_version)
            obj.setdefault("kind", self.kind)
            self._emit("SYNC", obj)
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, url: str, seen: list[str], until: float) -> None:
        """One watch request from ``seen[0]``, which it moves to each event's resourceVersion."""
        timeout = max(1.0, min(self.watch_timeout_s, until - time.monotonic()))
        self.stats.watches += 1
        for event in self._events(url, seen[0], timeout):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                    raise Gone()
                raise errors.TransientError(f"watch {url}: the server sent an error event: {obj.get('message', obj)}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                seen[0] = str(rv)
            if kind == "BOOKMARK":
                continue
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._emit(kind, obj)
            if self.stop.is_set():
                break

    def _events(self, url: str, version: str, timeout: float) -> Iterator[dict]:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": max(1, int(timeout))}
        try:
            resp = self.kube._call("GET", url, query, None, None, timeout + 5, stream=True)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise kclient._classify(exc, f"watch {url}", kclient.group_of(self.api_version), True) or exc from None
        except Exception as exc:  # noqa: BLE001 - transport faults are classified (transient)
            raise kclient._classify(exc, f"watch {url}", "", False) or exc from None
        try:
            for line in iter_resp_lines(resp):
                if self.stop.is_set():
                    return
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
        except Exception as exc:  # noqa: BLE001 - a dropped watch is a transient fault: watch again
            raise kclient._classify(exc, f"watch {url}", "", False) or exc from None
        finally:
            resp.release_conn()

    def _emit(self, kind: str, obj: dict) -> None:
        self.stats.events += 1
        self.stats.by_type[kind] = self.stats.by_type.get(kind, 0) + 1
        self.handle(kind, obj)


def object_key(obj: dict) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


def describe(obj: dict) -> str:
    ns, name = object_key(obj)
    return f"{ns}/{name}" if ns else name
