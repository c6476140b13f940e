"""What every task shares: retries for transient faults only, artifact keys, and the platform a
step runs on (with its log shown as the task run's)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from workspace import errors, settings

if TYPE_CHECKING:
    from infra.platforms.base import Platform


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


class _ToRunLogger(logging.Handler):
    """Forwards the ``infra`` loggers' records of one thread to a Prefect run logger."""

    def __init__(self, run_logger: Any, thread: int) -> None:
        super().__init__(logging.INFO)
        self.run_logger, self.thread = run_logger, thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.run_logger.log(record.levelno, record.getMessage())
            record.kaiflow_forwarded = True  # printed as the task's: flows.console drops the original


def on_platform(platform: str | None) -> contextlib.AbstractContextManager[Platform]:
    """The platform a task runs its step on, with what the platform logs (``infra.*`` loggers)
    shown as the task run's log: in the terminal, and in the Prefect UI."""
    return _on_platform(platform)


@contextlib.contextmanager
def _on_platform(platform: str | None) -> Iterator[Platform]:
    from prefect import get_run_logger

    from infra import platforms

    handler = _ToRunLogger(get_run_logger(), threading.get_ident())
    infra_log = logging.getLogger("infra")
    previous = infra_log.level
    infra_log.addHandler(handler)
    if infra_log.getEffectiveLevel() > logging.INFO:
        infra_log.setLevel(logging.INFO)
    try:
        yield platforms.get(platform)
    finally:
        infra_log.removeHandler(handler)
        infra_log.setLevel(previous)
