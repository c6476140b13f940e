"""What ``kaiflow apply`` shows in the terminal while a flow runs in-process: each thing once.

Prefect's console handler prints every record of a run: a failed step showed its error in the task's
exception line, again in each retry line, again in the task's and the flow's final states, in the
flow engine's "Encountered exception" line (with a traceback), and once more as the CLI's own
``error:`` line — five or more times. The Prefect UI keeps all of those (the API log handler is not
touched here); the terminal gets a filter on the console handler only:

- kaiflow's own errors lose their traceback (``--debug`` keeps everything);
- the flow engine's "Encountered exception during execution" and a flow run's "Finished in state
  Failed(...)" are dropped: the CLI's ``error:`` line says the same, once;
- a task's retry lines keep the error's text the first time and say "the same error" after; its final
  "Finished in state Failed(...)" keeps the step's name and the error's type only;
- the workspace flow's own summary of a failure (``extra={"kaiflow_final": True}``) is for the UI only;
- records of ``infra.*`` loggers that a task already forwarded to its run logger
  (``tasks.common.on_platform``, marked ``kaiflow_forwarded``) are printed once, as the task's.
"""

from __future__ import annotations

import logging
import re

from workspace.errors import KaiflowError

_FAILED_STATE = re.compile(r"^Finished in state Failed\('(?:Task|Flow) run encountered an exception (\w+)[:(]")
_RETRY = re.compile(r"^Task run failed with exception: (?P<error>.*) - (?P<what>Retry \d+/\d+ will start.*|Retries are exhausted)$",
                    re.S)


class Once(logging.Filter):
    """The console filter described in the module docstring (one per handler: it remembers retries)."""

    def __init__(self) -> None:
        super().__init__()
        self._last_retry_error: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "kaiflow_forwarded", False) or getattr(record, "kaiflow_final", False):
            return False
        message = record.getMessage()
        kaiflow_error = bool(record.exc_info and isinstance(record.exc_info[1], KaiflowError))
        if kaiflow_error:
            record.exc_info, record.exc_text = None, None
        if message.startswith("Encountered exception during execution") and (kaiflow_error or not record.exc_info):
            return False
        run = str(getattr(record, "task_run_name", "") or "")
        if message.startswith("Finished in state Failed("):
            if not run:  # the flow run's: the CLI's error line follows
                return False
            kind = _FAILED_STATE.match(message)
            self._set(record, f"Finished in state Failed ({kind.group(1)})" if kind else "Finished in state Failed")
            return True
        retry = _RETRY.match(message)
        if retry:
            error, what = retry.group("error"), retry.group("what")
            if self._last_retry_error.get(run) == error:
                self._set(record, f"Task run failed again with the same error - {what}")
            self._last_retry_error[run] = error
        return True

    @staticmethod
    def _set(record: logging.LogRecord, message: str) -> None:
        record.msg, record.args = message, ()


def install(debug: bool = False) -> None:
    """Put the filter on every console handler Prefect configured (the root logger's and any on
    ``prefect.*`` loggers). With ``debug`` nothing is filtered."""
    if debug:
        return
    names = ["", *[n for n in logging.Logger.manager.loggerDict if n.startswith("prefect")]]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ == "PrefectConsoleHandler" and not any(isinstance(f, Once) for f in handler.filters):
                handler.addFilter(Once())
