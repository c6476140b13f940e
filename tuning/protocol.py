"""What the tuning programs promise the flow that runs them: one module both sides import.

The programs (``python -m tuning``, ``python -m tuning.evaluate``) run as local processes or in
pods, and the flow (``tasks/``, ``infra/``) reads what they leave behind. This module holds every
name in that exchange, so a change shows up on both sides. It imports only the standard library:
the flow imports it without torch or transformers.

What ``python -m tuning`` prints, on stdout, while it trains:

    KAIFLOW_PROGRESS {"step": 5, "max_steps": 40, "loss": 1.23, "epoch": 0.5, "tokens": 812}
    KAIFLOW_PROGRESS {"step": 10, "max_steps": 40, "eval_loss": 1.1}
    [tuning] step 5/40 loss 1.2300 ...                       (human lines: ignore them)

one machine line per logging step (:data:`PROGRESS_PREFIX` then one JSON object; build and read
them with :func:`progress_line` / :func:`parse_progress`), beside human lines the flow ignores.

How it ends (both programs, and ``python -m infra.pod``): exit status :data:`EXIT_OK` (0) done;
:data:`EXIT_BAD_INPUT` (2) bad config or dataset — the caller's input is at fault, retrying will
not help; :data:`EXIT_FAILED` (1) anything else. On a failure the last line on stderr that starts
with :data:`ERROR_PREFIX` (``error: ...``, on one line, naming the section/key or file/columns to
fix) says why: :func:`error_line` writes it, :func:`last_error` finds it.

What ``python -m tuning`` leaves, in ``--output`` (written to a hidden sibling and renamed into
place, so the folder is never half there): the PEFT adapter (:data:`ADAPTER_FILES`),
:data:`METRICS_FILE` (loss history, eval loss, tokens, timings, the resolved config) and, last,
the :data:`COMPLETE` file. A folder without the marker is not an adapter: the flow treats
it as missing and the program refuses to overwrite it unless it is empty.

``python -m tuning.evaluate`` writes its scores to ``--output`` and/or ``--summary`` (the scores
without samples, small enough for a pod's termination message) and prints a one-line digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

PROGRESS_PREFIX = "KAIFLOW_PROGRESS "
"""Starts every machine-readable progress line on stdout; one JSON object follows."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
"""Bad config or dataset: fix the input (the flow raises a SpecError, and does not retry)."""

ERROR_PREFIX = "error:"
"""Starts the one line on stderr that says why the program failed."""

COMPLETE = "COMPLETE"
"""Written last into a finished adapter folder."""

METRICS_FILE = "metrics.json"
"""The run's summary in the adapter folder (``tuning.progress.Reporter.summary``)."""

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What PEFT must have written for the folder to be an adapter."""


def progress_line(event: dict[str, Any]) -> str:
    """The stdout line for one progress event."""
    return PROGRESS_PREFIX + json.dumps(event)


def parse_progress(line: str) -> dict[str, Any] | None:
    """The event in one stdout line, or None for any other line (or a garbled one)."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(line[len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def error_line(message: str) -> str:
    """The stderr line for a failure: ``error: <message on one line>``."""
    return f"{ERROR_PREFIX} {' '.join(message.split())}"


def last_error(lines: Iterable[str]) -> str:
    """The last ``error:`` line among ``lines`` (stripped), or ``""``."""
    found = ""
    for line in lines:
        if line.startswith(ERROR_PREFIX):
            found = line.strip()
    return found
