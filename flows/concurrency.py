"""GPU quota and per-workspace serialisation, as Prefect global concurrency limits.

Why Prefect's limits rather than a lock of our own: scheduled retrains run wherever a worker picks
them up (another process, another pod), and the Prefect server is the one thing they all share.
The limits are visible and editable in the UI (Concurrency page).

    gpu-<sku>          one slot per node of that instance type the quota allows
                       (KAIFLOW_GPU_QUOTA "Standard_NC6s_v3=2,local=1"; other SKUs get
                       KAIFLOW_GPU_DEFAULT_LIMIT, or the nodes one job needs if more); held
                       around tuning, evaluation and deploys
    workspace-<name>   limit 1: overlapping runs of one workspace (apply, retrain) take turns

What Prefect does on its own, and why we wrap it (prefect 3.7.7, ``prefect.concurrency.sync``):
a limit that does not exist is *skipped with a warning* (``strict=False``) — the quota would
silently do nothing — so every slot helper creates its limit on first use. Asking for more slots
than the limit holds is refused by the server (422) — we say which setting to raise instead. And
waiting has no end by default, so every wait is bounded by KAIFLOW_GPU_WAIT_S.

Slots are re-entrant within one flow run (a retrain that falls back to the workspace flow does not
wait for itself): held names live in a context variable, which Prefect copies into subflows.

A run that dies holding a slot (SIGKILL, the OOM killer, a closed laptop) must not block the next
one. Prefect's ``concurrency()`` leases a slot for 300 s and renews it while the holder lives, so a
dead holder's slot came free only when its lease expired and the server's repossessor (every 15 s)
noticed: the next apply of the workspace waited ~5 minutes before it started, saying nothing (the
6 minutes of issue 19). So we acquire and renew leases ourselves:

* the lease is ``LEASE_S`` (60 s, the shortest Prefect accepts), renewed every ``LEASE_S / 4``
  while the holder lives, so a holder that died anywhere frees its slot within ~75 s;
* every lease taken is written down in ``KAIFLOW_HOME/slots/<lease id>.json`` with the holder's PID
  and process start time; before (and while) waiting, a run releases at once the leases of holders
  on this machine that are gone, and marks their flow runs Crashed;
* a run that must wait says so, naming the limit, who holds it (workspace, flow run, PID, since
  when) and how long it will wait, and repeats that every ``SAY_EVERY_S`` while it waits.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from workspace import settings, spec, status
from workspace.plan import WorkspacePlan
from workspace.errors import QuotaExceeded, SpecError, TransientError

GPU_PREFIX = "gpu-"
WORKSPACE_PREFIX = "workspace-"
LEASE_S = 60.0  # the shortest lease Prefect's server accepts
SAY_EVERY_S = 30.0
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("kaiflow_held_slots", default=frozenset())
log = logging.getLogger(__name__)


def parse_quota(text: str) -> dict[str, int]:
    """``"Standard_NC6s_v3=2, local=1"`` → ``{"Standard_NC6s_v3": 2, "local": 1}``."""
    quotas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        sku, sep, value = item.partition("=")
        if not sep or not sku.strip() or not value.strip().isdigit():
            raise SpecError(f"KAIFLOW_GPU_QUOTA: '{item}' is not SKU=NODES (e.g. 'Standard_NC6s_v3=2,local=1')")
        quotas[sku.strip()] = int(value)
    return quotas


def limit_name(sku: str) -> str:
    """``gpu-<sku>``; Prefect limit names may not hold '/', '%', '&', '>', '<'."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in sku)
    return f"{GPU_PREFIX}{safe}"


def workspace_limit_name(name: str) -> str:
    return f"{WORKSPACE_PREFIX}{name}"


def quota_for(sku: str) -> int:
    s = settings.load()
    return parse_quota(s.gpu_quota).get(sku, s.gpu_default_limit)


def ensure_limits(quotas: dict[str, int] | None = None) -> dict[str, int]:
    """Create or update the ``gpu-<sku>`` limits (default: KAIFLOW_GPU_QUOTA); returns name → limit."""
    from prefect.client.orchestration import get_client

    quotas = parse_quota(settings.load().gpu_quota) if quotas is None else quotas
    wanted = {limit_name(sku): int(n) for sku, n in quotas.items()}
    with get_client(sync_client=True) as client:
        for name, limit in wanted.items():
            client.upsert_global_concurrency_limit_by_name(name, limit)
    return wanted


def _ensure_exists(name: str, limit: int) -> int:
    """The limit's current size, creating it with ``limit`` when it does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:  # another run created it in between
            return client.read_global_concurrency_limit_by_name(name).limit
        return limit


def slot_state(name: str) -> dict | None:
    """``{"limit", "active_slots"}`` of a limit, or None when it does not exist (for status and tests)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None
    return {"limit": found.limit, "active_slots": found.active_slots}


@contextlib.contextmanager
def _slots(name: str, occupy: int, default_limit: int, what: str) -> Iterator[None]:
    if name in _held.get() or occupy <= 0:
        yield
        return
    limit = _ensure_exists(name, default_limit)
    if occupy > limit:
        raise QuotaExceeded(
            f"{what} needs {occupy} slot(s) of the concurrency limit '{name}', which allows {limit}: raise it "
            "(KAIFLOW_GPU_QUOTA, or the limit in the Prefect UI) or plan fewer nodes"
        )
    lease_id = _acquire(name, occupy, what)
    stop = threading.Event()
    # in a copy of this context: Prefect's settings (which server) are context variables, and a thread
    # without them would start a temporary Prefect server of its own to renew the lease
    renewer = threading.Thread(target=contextvars.copy_context().run, args=(_renew, lease_id, stop),
                               name=f"lease-{name}", daemon=True)
    renewer.start()
    token = _held.set(_held.get() | {name})
    try:
        yield
    finally:
        _held.reset(token)
        stop.set()
        renewer.join(10)
        try:
            _release(lease_id)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own outcome behind this
            log.warning("could not release the concurrency limit '%s' (%s): the next run on this machine "
                        "releases it once this process is gone, else its lease lapses within %.0f s", name, exc, LEASE_S)


# ---------------------------------------------------------------------- leases and their holders
def _holders_dir() -> Path:
    return settings.load().home_dir / "slots"


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.get_id() or "") or None


def _acquire(name: str, occupy: int, what: str) -> str:
    """Take ``occupy`` slots of ``name`` under a lease; wait (saying for what) while others hold it."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    run_id = _flow_run_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    wait = settings.load().gpu_wait_s
    started = time.monotonic()
    said = 0.0
    with get_client(sync_client=True) as client:
        while True:
            release_dead_holders(client)
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=occupy, mode="concurrency", lease_duration=LEASE_S, holder=holder)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                waited = time.monotonic() - started
                if waited >= wait:
                    raise TransientError(
                        f"{what}: no free slot on '{name}' within {wait:g} s (KAIFLOW_GPU_WAIT_S); "
                        f"{describe_holders(name) or 'other runs hold it'}",
                        reason="ConcurrencyWaitTimeout",
                    ) from None
                if not said or time.monotonic() - said >= SAY_EVERY_S:
                    said = time.monotonic()
                    _say(f"{what} waits for the concurrency limit '{name}': "
                         f"{describe_holders(name) or 'held by a run this machine has no record of (one on another machine; its lease lapses within ~75 s of its death)'}"
                         f"; waited {waited:.0f} s of at most {wait:g} s (KAIFLOW_GPU_WAIT_S)")
                time.sleep(min(1.0, max(0.05, wait - waited)))
                continue
            lease_id = str(response.json()["lease_id"])
            _write_holder(lease_id, name, occupy, what, run_id)
            if said:
                _say(f"{what}: got the concurrency limit '{name}' after {time.monotonic() - started:.0f} s")
            return lease_id


def _say(message: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001 - outside a run: the module's logger
        log.warning(message)


def _renew(lease_id: str, stop: threading.Event) -> None:
    """Renew the lease every LEASE_S / 4 until ``stop``; a failed renewal is retried at the next tick
    (the lease has three more ticks before it lapses)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(LEASE_S / 4):
            try:
                client.renew_concurrency_lease(lease_id=lease_id, lease_duration=LEASE_S)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - keep trying while the holder lives
                log.warning("renewing the concurrency lease %s failed: %s", lease_id, exc)


def _release(lease_id: str) -> None:
    """Give the slots back. When the server cannot be reached (it was killed, say) the holder file
    stays, so the next run on this machine releases the lease once this process is gone."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id=lease_id)  # type: ignore[arg-type]
    (_holders_dir() / f"{lease_id}.json").unlink(missing_ok=True)


def _write_holder(lease_id: str, name: str, occupy: int, what: str, run_id: str | None) -> None:
    d = _holders_dir()
    d.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    info = {"lease_id": lease_id, "limit": name, "slots": occupy, "what": what, "flow_run": run_id, "pid": me.pid,
            "create_time": me.create_time(), "since": status.now()}
    tmp = d / f".{lease_id}.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, d / f"{lease_id}.json")


def _holders() -> list[dict[str, Any]]:
    found = []
    for path in sorted(_holders_dir().glob("*.json")) if _holders_dir().exists() else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def _holder_alive(info: dict[str, Any]) -> bool:
    """The holder process still runs: same PID *and* the same start time (a reused PID is not it)."""
    try:
        return abs(psutil.Process(int(info["pid"])).create_time() - float(info["create_time"])) < 0.01
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def describe_holders(name: str) -> str:
    """Who holds ``name`` on this machine, in words ("" when nobody here does)."""
    held = [h for h in _holders() if h.get("limit") == name and _holder_alive(h)]
    return "; ".join(f"held by {h.get('what')} (flow run {h.get('flow_run') or '-'}, pid {h['pid']}) since {h.get('since')}"
                     for h in held)


def release_dead_holders(client: Any = None) -> list[dict[str, Any]]:
    """Release the leases of holders on this machine that are gone, and mark their flow runs Crashed.

    Returns what was released. Safe to call from any number of processes at once: releasing a
    lease twice is a no-op on the server.
    """
    dead = [h for h in _holders() if not _holder_alive(h)]
    if not dead:
        return []
    from prefect.client.orchestration import get_client

    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(get_client(sync_client=True))
        for h in dead:
            client.release_concurrency_slots_with_lease(lease_id=h["lease_id"])
            (_holders_dir() / f"{h['lease_id']}.json").unlink(missing_ok=True)
            _say(f"released the concurrency limit '{h.get('limit')}' held by {h.get('what')} "
                 f"(pid {h.get('pid')}, gone; flow run {h.get('flow_run') or '-'})")
            if h.get("flow_run"):
                _mark_crashed(client, h["flow_run"], f"the process running it (pid {h.get('pid')}) died while it held "
                                                     f"'{h.get('limit')}'; found by a later run")
    return dead


def _mark_crashed(client: Any, flow_run_id: str, message: str) -> None:
    from prefect.states import Crashed

    try:
        run = client.read_flow_run(flow_run_id)
        if run.state is None or not run.state.is_final():
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - a missing run (another Prefect database) is no reason to fail
        log.info("could not mark flow run %s crashed: %s", flow_run_id, exc)


@contextlib.contextmanager
def gpu_slots(sku: str, occupy: int = 1, what: str = "GPU work") -> Iterator[None]:
    """Hold ``occupy`` slots (nodes) of ``gpu-<sku>`` while the block runs; created on first use."""
    named = sku in parse_quota(settings.load().gpu_quota)
    # a SKU nobody set a quota for gets the default, but never one too small to run this work at all
    first_limit = quota_for(sku) if named else max(quota_for(sku), occupy)
    with _slots(limit_name(sku), occupy, first_limit, what):
        yield


@contextlib.contextmanager
def workspace_slot(name: str) -> Iterator[None]:
    """Serialise runs of one workspace (limit 1), re-entrant within a run."""
    with _slots(workspace_limit_name(name), 1, 1, f"workspace {name}"):
        yield


def nodes_for(plan: "WorkspacePlan", workspace: spec.Workspace) -> int:
    """Slots inference occupies: the plan's node count (else resource.count, else 1); tuning takes one."""
    for p in plan.parts:
        if p.part == "inference" and p.details.get("nodes"):
            return int(p.details["nodes"])
    return workspace.resource.count if workspace.resource and workspace.resource.count else 1
