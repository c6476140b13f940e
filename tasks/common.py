"""What every task shares: retries for transient faults only, and where workspace state goes."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from workspace import errors, settings


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry HTTP 429/5xx, conflicts, timeouts and resets; never
    validation, sizing, quota or authentication errors (those fail at once with their message)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return errors.is_transient(exc)
    return False


def task_options(retries: int = 3) -> dict[str, Any]:
    backoff = settings.load().retry_backoff_s
    return dict(
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=backoff),
        retry_condition_fn=retry_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def artifact_key(name: str, suffix: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    safe = "".join(c if c.isalnum() else "-" for c in f"{name}-{suffix}".lower())
    return safe.strip("-")[:100]
