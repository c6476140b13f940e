"""One retry policy for every outside system, and the rule for which layer retries what.

kaiflow retries in exactly two layers, never more:

1. **In-call** (this module, used by the clients in ``infra/``): one *exchange* with an outside
   system — a download resumed with ``Range``, a registry blob upload, a Kubernetes API request —
   is tried again on a transport fault or an HTTP 429/5xx, a few times, with capped exponential
   backoff. This layer keeps progress a whole-step retry would lose (the bytes already downloaded,
   a fresh bearer token) and hides blips of a second or two. It never retries a refusal (4xx other
   than 408/409/429), a validation error or an authentication failure.
2. **Prefect task retries** (``tasks.common.task_options``): a whole pipeline step is run again
   when it failed with a transient ``KaiflowError`` (``workspace.errors.is_transient``) after the
   in-call attempts were used up — an outage of minutes, a node that went away.

Bounds: an exchange is tried at most ``attempts`` times per step attempt, so a fault that never
clears costs ``attempts × (task retries + 1)`` tries (3 × 4 = 12 with the defaults), each wait
capped at ``max_backoff_s``. azure-core's own ``RetryPolicy`` plays layer 1 for Azure Resource
Manager (``infra.aks``); kopf-style loops of our own are not written anywhere else.

The policy is `tenacity <https://tenacity.readthedocs.io>`_ underneath; this module only fixes
the shape every client shares (what to log, what to raise after the last attempt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How often and how patiently one exchange is tried (layer 1 above)."""

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))

    def call(
        self,
        fn: Callable[[], T],
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        what: str,
        log: logging.Logger,
        give_up: Callable[[BaseException, int], BaseException],
    ) -> T:
        """``fn()``, tried again on ``retry_on`` up to ``attempts`` times in all. After the last
        attempt the exception ``give_up(last_exception, attempts)`` is raised instead (a
        ``KaiflowError`` saying what to check, usually marked transient so layer 2 may retry the
        step). Anything not in ``retry_on`` propagates at once."""
        attempts = max(1, int(self.attempts))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s: %s (attempt %d/%d), retrying in %.1fs", what, exc, state.attempt_number, attempts, delay)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=lambda state: self.delay(state.attempt_number),
            retry=tenacity.retry_if_exception_type(retry_on),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except retry_on as exc:  # type: ignore[misc]
            raise give_up(exc, attempts) from None
