"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

    follower ── every retry_s: GET the Lease ──► free, or its renewTime + leaseDurationSeconds has
       ▲                                           passed ──► PUT ourselves as holder with the
       │                                           resourceVersion we read (409: someone was faster)
       │                                                         │ won
       └──── renewal failed for longer than the lease ◄── leader: PUT a new renewTime every renew_s

Only the holder works; a replica that cannot renew before its lease runs out stops leading (the
controller then exits, and its Deployment restarts it as a follower), so two leaders never act at
once for longer than the clock skew between them. Times are RFC 3339 with microseconds (MicroTime).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from infra.kube import client as kclient
from workspace import errors

log = logging.getLogger(__name__)


def micro_time(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    value = value.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


@dataclass
class LeaderElector:
    """Hold the Lease ``namespace/name`` as ``identity``; ``is_leader`` says whether we do now."""

    kube: kclient.Kube
    namespace: str
    name: str
    identity: str
    lease_s: int = 15
    renew_s: float = 5.0
    retry_s: float = 2.0
    stop: threading.Event = field(default_factory=threading.Event)
    leading: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    transitions: int = 0

    @property
    def url(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return self.leading.is_set() and not self.lost.is_set()

    def run(self) -> None:
        """Try to acquire until we lead, then renew until ``stop`` or until renewal fails past the lease."""
        while not self.stop.is_set() and not self.leading.is_set():
            try:
                if self.try_acquire_or_renew():
                    self.leading.set()
                    log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
                    break
            except errors.KaiflowError as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            self.stop.wait(self.retry_s)
        last_renewed = time.monotonic()
        while not self.stop.is_set() and self.leading.is_set():
            self.stop.wait(self.renew_s)
            if self.stop.is_set():
                break
            try:
                if self.try_acquire_or_renew():
                    last_renewed = time.monotonic()
                    continue
                log.error("lease %s/%s: another replica holds it now", self.namespace, self.name)
            except errors.KaiflowError as exc:
                log.warning("lease %s/%s: renewal failed: %s", self.namespace, self.name, exc)
                if time.monotonic() - last_renewed < self.lease_s - self.renew_s:
                    continue
            self.lost.set()
            self.leading.clear()
            return

    def release(self) -> None:
        """Give the Lease up on a clean stop, so a follower takes over at once instead of after lease_s."""
        try:
            lease = self._get()
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["renewTime"] = None
                self.kube.request("PUT", self.url, body=lease, what=f"release lease {self.name}", group="coordination.k8s.io")
        except errors.KaiflowError as exc:
            log.warning("lease %s/%s: could not release: %s", self.namespace, self.name, exc)

    def _get(self) -> dict | None:
        try:
            return self.kube.request("GET", self.url, what=f"get lease {self.name}", group="coordination.k8s.io")
        except errors.KaiflowError as exc:
            if exc.reason == "NotFound":
                return None
            raise

    def try_acquire_or_renew(self) -> bool:
        """One round: True when we hold the Lease afterwards."""
        now = time.time()
        lease = self._get()
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s,
                             "acquireTime": micro_time(now), "renewTime": micro_time(now), "leaseTransitions": 0}}
            return self._write("POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body)
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or self.lease_s
        if holder and holder != self.identity and renewed is not None and renewed + duration > now:
            return False  # held by someone alive
        if holder != self.identity:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
            self.transitions += 1
        spec.update({"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s, "renewTime": micro_time(now)})
        return self._write("PUT", self.url, lease)

    def _write(self, method: str, url: str, body: dict) -> bool:
        try:
            self.kube.request(method, url, body=body, what=f"{'take' if method == 'POST' else 'renew'} lease {self.name}",
                              group="coordination.k8s.io")
            return True
        except errors.TransientError as exc:
            if exc.reason == "Conflict":  # someone else wrote it between our read and write
                return False
            raise
