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
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from workspace import settings, spec
from workspace.plan import WorkspacePlan
from workspace.errors import QuotaExceeded, SpecError, TransientError

GPU_PREFIX = "gpu-"
WORKSPACE_PREFIX = "workspace-"
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("kaiflow_held_slots", default=frozenset())


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
    from prefect.concurrency.sync import concurrency

    limit = _ensure_exists(name, default_limit)
    if occupy > limit:
        raise QuotaExceeded(
            f"{what} needs {occupy} slot(s) of the concurrency limit '{name}', which allows {limit}: raise it "
            "(KAIFLOW_GPU_QUOTA, or the limit in the Prefect UI) or plan fewer nodes"
        )
    wait = settings.load().gpu_wait_s
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(concurrency(name, occupy=occupy, timeout_seconds=wait, strict=True))
        except TimeoutError:
            raise TransientError(
                f"{what}: no free slot on '{name}' within {wait:g} s (KAIFLOW_GPU_WAIT_S); other runs hold it",
                reason="ConcurrencyWaitTimeout",
            ) from None
        token = _held.set(_held.get() | {name})
        try:
            yield
        finally:
            _held.reset(token)


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
