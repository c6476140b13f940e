"""`kaiflow controller`: `kubectl apply -f workspace.yaml` starts the `workspace` flow, as with Kaito.

The controller watches Workspace resources (``infra.kube.watch``: list, then watch from the list's
resourceVersion, a re-list on 410 and every ``resync_s``) and reconciles each one it is told about,
keyed by namespace/name, one at a time, in one thread:

    seen, no finalizer ───────► add ``kaiflow.io/teardown`` and the accepted spec (annotation)
    generation > observed ────► a change Kaito forbids (preset, instanceType, labelSelector, count,
                                inference/tuning toggled, tuning method)? refuse: condition
                                SpecAccepted=False, observedGeneration = generation, no run
                           └──► create a run of the ``workspace/workspace`` deployment, idempotency
                                key ``<uid>-<generation>``; when it is final: observedGeneration =
                                generation (a Crashed run is started again, twice at most, under
                                key ``<uid>-<generation>-r<n>``; WorkspaceReady=False if it stays dead)
    deletionTimestamp set ────► an apply run of the workspace still going? set it Cancelling (its
                                worker stops it) and wait until it ended (``cancel_wait_s`` at most)
                           └──► a run of ``teardown/teardown`` (key ``<uid>-teardown-<n>``); when it
                                completed and no NodeClaim of the workspace is left: drop the finalizer

Why this is restart-safe: everything the controller knows is on the resource (finalizer,
observedGeneration, the accepted spec) or in Prefect (the run behind an idempotency key: creating it
again returns the same run). A controller killed between creating a run and writing
observedGeneration creates the "same" run again on restart and gets the first one back.

Where the work runs: in the flow runs, on whatever worker serves the deployment's work pool (a
process worker from ``kaiflow server``, or a Kubernetes pool). The flow writes the conditions to the
resource as it goes (``infra.kube.crstatus``); ``kaiflow apply`` runs the very same flow.

InferenceSets (``kaito.sh`` InferenceSet, Kaito's N replicas of one inference Workspace) are watched
too: each change, and each change of one of its child Workspaces, runs
``infra.kube.inferenceset.reconcile`` (it creates/deletes the child Workspace resources and writes
the set's status); the children are then Workspaces like any other, each with its own flow run.

Leader election (``infra.kube.lease``): with two replicas only the Lease holder watches and acts;
one that loses its Lease exits (its Deployment restarts it as a follower).

Why not kopf: kopf's peering is its own CRD (KopfPeering), not a ``coordination.k8s.io`` Lease; it
keeps its progress in annotations of its own and retries handlers by its own rules, where the state
here is the generation and Prefect's idempotency key; it talks to the API with aiohttp, past the
``kubernetes`` client that kaiflow configures, retries and classifies in one place
(``infra.kube.client``). The watch loop, finalizer and Lease here are ~400 lines over that client.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from workspace.errors import KaiflowError, SpecError

log = logging.getLogger("kaiflow.controller")

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SPEC_ACCEPTED = "SpecAccepted"
Key = tuple[str, ...]  # (namespace, name) of a Workspace, ("InferenceSet", namespace, name) of a set


# --- what Kaito forbids changing (kaito-project/kaito api/v1alpha1/workspace_validation.go, validateUpdate) ---


def immutable_view(obj: dict) -> dict[str, Any]:
    """The fields Kaito's admission webhook refuses to change on update, as they are in ``obj``."""
    r = obj.get("resource") or {}
    inf = obj.get("inference")
    tun = obj.get("tuning")
    sel = r.get("labelSelector") or {}
    labels = dict(sel.get("matchLabels") or {})
    for e in sel.get("matchExpressions") or []:  # Kaito compares LabelSelectorAsMap: `In` with one value
        if e.get("operator") == "In" and len(e.get("values") or []) == 1:
            labels[e["key"]] = e["values"][0]
        else:
            labels[f"{e.get('key')} {e.get('operator')}"] = ",".join(e.get("values") or [])
    view: dict[str, Any] = {"resource.instanceType": r.get("instanceType"), "resource.count": r.get("count", 1),
                            "resource.labelSelector": labels, "inference": inf is not None, "tuning": tun is not None}
    if inf is not None:
        view["inference.preset"] = inf.get("preset")
        view["inference.template"] = inf.get("template") is not None
    if tun is not None:
        view["tuning.preset"] = tun.get("preset")
        view["tuning.method"] = str(tun.get("method") or "").lower()
        view["tuning.input.name"] = (tun.get("input") or {}).get("name")
    return view


def refused_changes(accepted: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per forbidden change from ``accepted`` to ``now``, saying what to do."""
    out = []
    for key in ("inference", "tuning"):
        if accepted.get(key) != now.get(key):
            out.append(f"{key}: cannot be added or removed once the workspace exists (Kaito refuses it too)")
    for key, value in now.items():
        if key in ("inference", "tuning") or key not in accepted or accepted[key] == value:
            continue
        out.append(f"{key}: field is immutable (was {json.dumps(accepted[key])}, now {json.dumps(value)})")
    return out


def workspace_parameters(obj: dict) -> dict[str, Any]:
    """The flow's ``workspace`` parameter from a Workspace resource: the user's fields only
    (``workspace.loader.resource_document``); SpecError naming the field when the resource does not
    make a valid workspace."""
    from workspace import loader

    return loader.from_resource(obj).to_parameters()


# --- the controller ------------------------------------------------------------------------


@dataclass
class Tracked:
    """A flow run the controller started (or found again) for one workspace."""

    idempotency_key: str
    run_id: str
    purpose: str  # "apply" | "teardown"
    generation: int
    state: str = "SCHEDULED"
    message: str = ""


@dataclass
class Options:
    deployment: str = "workspace/workspace"
    teardown_deployment: str = "teardown/teardown"
    api_version: str = "kaito.sh/v1alpha1"
    inferenceset_api_version: str | None = "kaito.sh/v1beta1"  # None: InferenceSets are not watched
    namespaces: tuple[str, ...] = ()
    platform: str | None = "kubernetes"
    resync_s: float = 300.0
    poll_s: float = 2.0
    requeue_s: float = 2.0
    max_backoff_s: float = 30.0
    crash_retries: int = 2  # a Crashed run (not a Failed one) is started again, under key <uid>-<generation>-r<n>
    cancel_wait_s: float = 120.0  # a deleted workspace's apply run, set Cancelling, is waited for this long at most
    lease_name: str | None = "kaiflow-controller"
    lease_namespace: str | None = None
    lease_s: int = 15
    identity: str = field(default_factory=lambda: os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}")


class Controller:
    def __init__(self, kube: Any, prefect: Any, options: Options, stop: threading.Event | None = None) -> None:
        from infra.kube import watch

        self.kube = kube
        self.prefect = prefect  # a SyncPrefectClient, used from the reconciling thread only
        self.o = options
        self.stop = stop or threading.Event()
        self.objects: dict[Key, dict] = {}
        self.tracked: dict[Key, Tracked] = {}
        self.failures: dict[Key, int] = {}
        self.teardown_attempts: dict[str, int] = {}
        self.crash_retries: dict[tuple[str, int], int] = {}
        self.cancelling: dict[str, float] = {}  # uid of a deleted workspace -> when its apply runs were set Cancelling
        self.apply_runs_ended: set[str] = set()  # uids whose apply runs are all final: teardown may run
        self.cancels_sent: set[str] = set()  # flow run ids set Cancelling
        self._queue: list[tuple[float, Key]] = []
        self._due: dict[Key, float] = {}
        self._cv = threading.Condition()
        self._deployment_ids: dict[str, Any] = {}
        self.runs_created: set[str] = set()
        self.watcher = watch.Watcher(kube, options.api_version, "Workspace", self.on_event, namespaces=options.namespaces,
                                     resync_s=options.resync_s, stop=self.stop)
        self.inferencesets: dict[Key, dict] = {}
        self.set_watcher = watch.Watcher(kube, options.inferenceset_api_version, "InferenceSet", self.on_inferenceset,
                                         namespaces=options.namespaces, resync_s=options.resync_s, stop=self.stop,
                                         max_backoff_s=60.0) if options.inferenceset_api_version else None

    # -- events in -------------------------------------------------------------------------
    def on_event(self, kind: str, obj: dict) -> None:
        from infra.kube import watch

        key = watch.object_key(obj)
        with self._cv:
            if kind == "DELETED":
                gone = self.objects.pop(key, None)
                uid = (obj.get("metadata") or {}).get("uid")
                if gone is not None and uid and self._needs_teardown_after_delete(obj):
                    self.objects[key] = {**obj, "_deleted": True}
                else:
                    return
            else:
                self.objects[key] = obj
        self.enqueue(key)
        self._parent_set(obj)

    def on_inferenceset(self, kind: str, obj: dict) -> None:
        from infra.kube import watch

        ns, name = watch.object_key(obj)
        with self._cv:
            if kind == "DELETED":
                self.inferencesets.pop((ns, name), None)  # its children go with it (owner references)
                return
            self.inferencesets[(ns, name)] = obj
        self.enqueue(("InferenceSet", ns, name))

    def _parent_set(self, obj: dict) -> None:
        """A child Workspace changed: its InferenceSet's status (ready replicas) may have too."""
        from infra.kube import inferenceset

        parent = ((obj.get("metadata") or {}).get("labels") or {}).get(inferenceset.CREATED_BY)
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        if parent and (ns, parent) in self.inferencesets:
            self.enqueue(("InferenceSet", ns, parent))

    def _needs_teardown_after_delete(self, obj: dict) -> bool:
        """Gone without our finalizer having run (a server or a user that removed it): tear down anyway."""
        from infra.kube import crcontrol

        return crcontrol.has_finalizer(obj)

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cv:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._queue, (due, key))
            self._cv.notify()

    def _next_due(self, wait_s: float) -> Key | None:
        with self._cv:
            deadline = time.monotonic() + wait_s
            while not self.stop.is_set():
                while self._queue and self._due.get(self._queue[0][1]) != self._queue[0][0]:
                    heapq.heappop(self._queue)  # superseded by an earlier due time
                now = time.monotonic()
                if self._queue and self._queue[0][0] <= now:
                    _, key = heapq.heappop(self._queue)
                    self._due.pop(key, None)
                    return key
                until = min(deadline, self._queue[0][0]) if self._queue else deadline
                if now >= deadline:
                    return None
                self._cv.wait(max(0.0, until - now))
        return None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Watch and reconcile until ``stop``."""
        threads = [threading.Thread(target=self.watcher.run, name="watch-workspaces", daemon=True)]
        if self.set_watcher is not None:
            threads.append(threading.Thread(target=self.set_watcher.run, name="watch-inferencesets", daemon=True))
        for thread in threads:
            thread.start()
        next_poll = time.monotonic()
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    open_runs = self.poll_runs()
                    # one read of every open run per round: with many open, rounds are spaced out so
                    # reading them never crowds out creating them (a read of 100 runs is heavy on SQLite)
                    next_poll = time.monotonic() + self.o.poll_s * max(1.0, open_runs / 25)
                key = self._next_due(max(0.0, next_poll - time.monotonic()))
                if key is not None:
                    self.reconcile_safely(key)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=5)

    def reconcile_safely(self, key: Key) -> None:
        try:
            again = self.reconcile(key)
            self.failures.pop(key, None)
        except Exception as exc:  # noqa: BLE001 - one workspace's fault never stops the others
            n = self.failures[key] = self.failures.get(key, 0) + 1
            again = min(self.o.requeue_s * 2 ** (n - 1), self.o.max_backoff_s)
            conflict = isinstance(exc, KaiflowError) and exc.reason == "Conflict"
            (log.info if conflict else log.warning)("%s: %s: %s; again in %.1f s", "/".join(key), type(exc).__name__,
                                                    exc, again)
        if again is not None:
            self.enqueue(key, again)

    def reconcile(self, key: Key) -> float | None:
        """Act on one workspace (or InferenceSet); returns when to look again (None: when it changes)."""
        from infra.kube import crcontrol

        if len(key) == 3:
            return self._reconcile_set(key)

        with self._cv:
            obj = self.objects.get(key)
        if obj is None:
            return None
        m = obj["metadata"]
        uid, gen = m.get("uid", ""), int(m.get("generation") or 1)
        if obj.get("_deleted") or m.get("deletionTimestamp"):
            return self._finalize(key, obj)
        if not crcontrol.has_finalizer(obj):
            accepted = None if crcontrol.accepted_spec(obj) else immutable_view(obj)
            obj = self._store(key, crcontrol.add_finalizer(self.kube, obj, accepted))
        observed = int((obj.get("status") or {}).get("observedGeneration") or 0)
        if gen <= observed:
            return None
        accepted_view = crcontrol.accepted_spec(obj)
        refused = refused_changes(accepted_view, immutable_view(obj)) if accepted_view else []
        if refused:
            log.warning("workspace %s/%s generation %d refused: %s", *key, gen, "; ".join(refused))
            crcontrol.set_condition(self.kube, obj, SPEC_ACCEPTED, False, "ImmutableFieldChanged",
                                    "; ".join(refused) + ". Put the old values back, or delete the workspace and apply "
                                    "it again to change them.", gen)
            crcontrol.set_observed_generation(self.kube, obj, gen)
            return None
        try:
            params = workspace_parameters(obj)
        except SpecError as exc:
            crcontrol.set_condition(self.kube, obj, "WorkspaceReady", False, "InvalidSpec", str(exc), gen)
            crcontrol.set_observed_generation(self.kube, obj, gen)
            return None
        from workspace import settings

        parameters: dict[str, Any] = {"workspace": params, "config_maps": {}}
        if self.o.platform:
            parameters["platform"] = self.o.platform
        passed = settings.for_run()
        if passed:
            parameters["run_settings"] = passed
        retry = self.crash_retries.get((uid, gen), 0)
        idem = f"{uid}-{gen}" if retry == 0 else f"{uid}-{gen}-r{retry}"
        run = self._ensure_run(key, "apply", idem, gen, self.o.deployment, parameters, m["name"])
        if accepted_view != immutable_view(obj):
            self._store(key, crcontrol.set_accepted(self.kube, obj, immutable_view(obj)))
        if run.state not in FINAL:
            return None  # poll_runs enqueues it when the run is final
        if run.state == "CRASHED" and retry < self.o.crash_retries:
            # the flow never said anything: its process or the worker's submission died (a Failed run
            # is the flow's verdict and is not retried); a new key, so the retry is a run of its own
            log.warning("workspace %s/%s generation %d: run %s crashed (%s); starting it again", *key, gen, run.run_id, run.message)
            self.crash_retries[(uid, gen)] = retry + 1
            with self._cv:
                self.tracked.pop(key, None)
            return self.o.requeue_s
        if run.state != "COMPLETED":
            conds = {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []}
            if conds.get("WorkspaceReady") != "False":
                crcontrol.set_condition(self.kube, obj, "WorkspaceReady", False, "FlowRun" + run.state.capitalize(),
                                        f"flow run {run.run_id} ended {run.state}: {run.message}".strip(), gen)
        crcontrol.set_observed_generation(self.kube, obj, gen)
        log.info("workspace %s/%s generation %d: flow run %s %s", *key, gen, run.run_id, run.state)
        with self._cv:
            self.tracked.pop(key, None)
        return None

    def _reconcile_set(self, key: Key) -> float | None:
        from infra.kube import inferenceset

        with self._cv:
            obj = self.inferencesets.get(key[1:])
        if obj is None:
            return None
        try:
            result = inferenceset.reconcile(self.kube, obj)
        except KaiflowError as exc:
            if exc.reason == "NotFound":
                return None
            raise
        if result.created or result.deleted:
            log.info("InferenceSet %s/%s: %d/%d ready; created %s; deleted %s", key[1], key[2], result.ready, result.desired,
                     ", ".join(result.created) or "-", ", ".join(result.deleted) or "-")
        return None

    def _finalize(self, key: Key, obj: dict) -> float | None:
        from infra.kube import crcontrol

        m = obj["metadata"]
        uid = m.get("uid", "")
        if not crcontrol.has_finalizer(obj):
            return None
        if uid not in self.apply_runs_ended and self._cancel_apply_runs(key, obj):
            return self.o.requeue_s
        attempt = self.teardown_attempts.get(uid, 0)
        run = self._ensure_run(key, "teardown", f"{uid}-teardown-{attempt}", int(m.get("generation") or 1),
                               self.o.teardown_deployment, {"name": m["name"]}, m["name"])
        if run.state not in FINAL:
            return None
        if run.state != "COMPLETED":
            log.warning("workspace %s/%s: teardown run %s ended %s; trying again", *key, run.run_id, run.state)
            self.teardown_attempts[uid] = attempt + 1
            with self._cv:
                self.tracked.pop(key, None)
            return self.o.requeue_s
        left = crcontrol.nodeclaims_left(self.kube, obj)
        if left:
            log.info("workspace %s/%s: waiting for NodeClaims %s to go", *key, ", ".join(left))
            return self.o.requeue_s
        if not obj.get("_deleted"):
            crcontrol.remove_finalizer(self.kube, obj)
        log.info("workspace %s/%s: torn down (run %s); finalizer removed", *key, run.run_id)
        with self._cv:
            self.tracked.pop(key, None)
            if self.objects.get(key, {}).get("metadata", {}).get("uid") == uid:
                self.objects.pop(key, None)
        return None

    def _cancel_apply_runs(self, key: Key, obj: dict) -> bool:
        """Set the deleted workspace's apply runs that are still going Cancelling (their worker stops
        them; a run not started yet goes straight to Cancelled), so the teardown does not race a deploy.
        True while one has not ended yet (for ``cancel_wait_s`` at most). The runs are found in Prefect
        (by the workspace's tag and its uid in the idempotency key), so a restarted controller finds
        those a previous one started."""
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
                                                    FlowRunFilterStateType, FlowRunFilterTags)
        from prefect.client.schemas.objects import StateType
        from prefect.states import Cancelling

        m = obj["metadata"]
        uid = m.get("uid", "")
        runs = [r for r in self.prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[self._deployment_id(self.o.deployment)]),
            tags=FlowRunFilterTags(all_=[f"workspace:{m['name']}", "controller"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType(s) for s in FINAL]))))
                if (r.idempotency_key or "").startswith(f"{uid}-")]
        if not runs:
            self.apply_runs_ended.add(uid)
            self.cancelling.pop(uid, None)
            return False
        since = self.cancelling.setdefault(uid, time.monotonic())
        for run in runs:
            if str(run.id) not in self.cancels_sent and (run.state is None or run.state.type != StateType.CANCELLING):
                self.prefect.set_flow_run_state(run.id, Cancelling(message=f"workspace {key[0]}/{key[1]} deleted; "
                                                                           "its teardown runs next"))
                self.cancels_sent.add(str(run.id))
                log.info("workspace %s/%s deleted: cancelling its flow run %s (%s)", *key, run.id,
                         run.state.type.value if run.state else "SCHEDULED")
        if time.monotonic() - since < self.o.cancel_wait_s:
            return True
        log.warning("workspace %s/%s: flow run(s) %s still not ended %.0f s after the cancel; tearing down anyway", *key,
                    ", ".join(str(r.id) for r in runs), self.o.cancel_wait_s)
        self.apply_runs_ended.add(uid)
        return False

    def _store(self, key: Key, obj: dict) -> dict:
        with self._cv:
            current = self.objects.get(key)
            newer = current is None or int(current["metadata"].get("resourceVersion") or 0) <= int(
                obj["metadata"].get("resourceVersion") or 0)
            if newer:
                self.objects[key] = obj
        return obj

    # -- Prefect ---------------------------------------------------------------------------
    def _deployment_id(self, name: str) -> Any:
        if name not in self._deployment_ids:
            self._deployment_ids[name] = self.prefect.read_deployment_by_name(name).id
        return self._deployment_ids[name]

    def _ensure_run(self, key: Key, purpose: str, idem: str, gen: int, deployment: str,
                    parameters: dict, name: str) -> Tracked:
        with self._cv:
            known = self.tracked.get(key)
        if known and known.idempotency_key == idem:
            return known
        run = self.prefect.create_flow_run_from_deployment(
            self._deployment_id(deployment), parameters=parameters, idempotency_key=idem,
            tags=["kaiflow", f"workspace:{name}", "controller"])
        state = run.state.type.value if run.state else "SCHEDULED"
        tracked = Tracked(idem, str(run.id), purpose, gen, state, (run.state.message or "") if run.state else "")
        with self._cv:
            self.tracked[key] = tracked
        if str(run.id) not in self.runs_created:
            self.runs_created.add(str(run.id))
            log.info("workspace %s/%s generation %d: %s run %s %s (%s) %s", *key, gen, purpose, run.name, run.id, deployment, state)
        return tracked

    def poll_runs(self) -> int:
        """One read of every tracked run that is not final; the workspaces whose run ended are looked at
        again. Returns how many were open."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self._cv:
            open_runs = {t.run_id: k for k, t in self.tracked.items() if t.state not in FINAL}
        if not open_runs:
            return 0
        try:
            runs = self.prefect.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(open_runs))))
        except Exception as exc:  # noqa: BLE001 - the Prefect server down for a while: ask again next round
            log.warning("could not read %d flow run(s) from Prefect: %s", len(open_runs), exc)
            return len(open_runs)
        for run in runs:
            key = open_runs.get(str(run.id))
            state = run.state.type.value if run.state else "SCHEDULED"
            with self._cv:
                t = self.tracked.get(key) if key else None
                if t is None or t.run_id != str(run.id):
                    continue
                t.state, t.message = state, (run.state.message or "") if run.state else ""
            if state in FINAL and key:
                self.enqueue(key)
        return len(open_runs)


# --- the command ---------------------------------------------------------------------------


def _lease_namespace(kube: Any) -> str:
    from infra.kube import client as kclient

    return kclient.SA_NAMESPACE.read_text().strip() if kclient.SA_NAMESPACE.is_file() else kube.default_namespace


def serve(options: Options, *, install_signals: bool = True) -> int:
    """Lead (or wait to), then watch and reconcile until SIGTERM/SIGINT; exits 1 when leadership is lost."""
    from prefect.client.orchestration import get_client

    from infra.kube import client as kclient
    from infra.kube import lease
    from workspace import settings

    kube = kclient.connect(settings.load())
    stop = threading.Event()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    elector = None
    if options.lease_name:
        ns = options.lease_namespace or _lease_namespace(kube)
        elector = lease.LeaderElector(kube, ns, options.lease_name, options.identity, lease_s=options.lease_s,
                                      renew_s=max(1.0, options.lease_s / 3), retry_s=max(0.5, options.lease_s / 6), stop=stop)
        threading.Thread(target=elector.run, name="lease", daemon=True).start()
        log.info("controller %s: waiting to lead (Lease %s/%s)", options.identity, ns, options.lease_name)
        while not stop.is_set() and not elector.leading.wait(0.5):
            pass
        if stop.is_set():
            return 0
    with get_client(sync_client=True) as prefect:
        ctl = Controller(kube, prefect, options, stop)
        if elector is not None:
            threading.Thread(target=lambda: (elector.lost.wait(), stop.set()), name="lease-lost", daemon=True).start()
        log.info("controller %s: leading; watching %s Workspaces in %s", options.identity, options.api_version,
                 ", ".join(options.namespaces) or "all namespaces")
        ctl.run()
    if elector is not None:
        if elector.lost.is_set():
            log.error("controller %s: lost the Lease; exiting so a follower leads", options.identity)
            return 1
        elector.release()
    return 0


def cmd_controller(args) -> int:
    """kaiflow controller [--namespace NS ...] [--lease-name NAME] ..."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    platform = args.platform
    if platform is None:
        from workspace import settings

        configured = settings.load().platform
        platform = configured if configured != "local" else "kubernetes"
    options = Options(deployment=args.deployment, teardown_deployment=args.teardown_deployment, api_version=args.api_version,
                      namespaces=tuple(args.namespace or ()), platform=platform, resync_s=args.resync, poll_s=args.poll,
                      lease_name=None if args.no_leader_election else args.lease_name, lease_namespace=args.lease_namespace,
                      lease_s=args.lease_duration,
                      inferenceset_api_version=None if args.no_inferencesets else "kaito.sh/v1beta1")
    if args.identity:
        options.identity = args.identity
    # a Prefect server that is down must not hold the loop for the client's minute of retries: the
    # controller tries again itself (reconcile_safely), and every other workspace goes on meanwhile
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "1")
    if not os.environ.get("PREFECT_API_URL"):
        raise KaiflowError("kaiflow controller needs PREFECT_API_URL: the Prefect server whose `workspace` deployment it "
                           "runs (kaiflow server prints it)")
    return serve(options)


def add_parser(sub: Any) -> None:
    c = sub.add_parser("controller", help="watch Workspace resources and run the workspace flow for each change (Kaito drop-in)")
    c.add_argument("--namespace", action="append", help="watch only this namespace (repeatable; default: all)")
    c.add_argument("--api-version", default="kaito.sh/v1alpha1", choices=["kaito.sh/v1alpha1", "kaito.sh/v1beta1"],
                   help="the version to watch (both are one resource on the server: either sees every workspace)")
    c.add_argument("--deployment", default="workspace/workspace", help="the Prefect deployment a change runs")
    c.add_argument("--teardown-deployment", default="teardown/teardown", help="the Prefect deployment a deletion runs")
    c.add_argument("--platform", choices=["kubernetes", "aks"], help="default: $KAIFLOW_PLATFORM, else kubernetes")
    c.add_argument("--resync", type=float, default=300.0, metavar="S", help="list everything again every S seconds")
    c.add_argument("--poll", type=float, default=2.0, metavar="S", help="read the state of running flow runs every S seconds")
    c.add_argument("--lease-name", default="kaiflow-controller", help="the coordination.k8s.io Lease of the leader")
    c.add_argument("--lease-namespace", help="default: the service account's namespace, else the context's")
    c.add_argument("--lease-duration", type=int, default=15, metavar="S", help="a dead leader is replaced after S seconds")
    c.add_argument("--no-leader-election", action="store_true", help="run without a Lease (one replica only)")
    c.add_argument("--no-inferencesets", action="store_true", help="do not watch InferenceSets (their CRD is not installed)")
    c.add_argument("--identity", help="the Lease holder's name (default: $POD_NAME, else host-pid)")
