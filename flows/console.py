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

On a terminal (stderr a TTY; not with ``--quiet`` or ``--debug``) ``kaiflow apply`` shows, instead of
those lines, one live line per step (:class:`LiveSteps`): provision, data, tuning with a progress
bar, its loss and the time left, push, deploy; each says what it last did and how long it took.
Warnings and errors (after the filter above) are printed above the live lines. Anywhere else (CI,
pipes, files) the plain log lines are printed, as before.

``kaiflow logs NAME --tuning --plot`` draws the loss curve in the terminal: :func:`plot`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
        keep = self._keep(record)
        live = LiveSteps.current
        if keep and live is not None:
            live.take(record)  # shown in the live lines (or above them) instead
            return False
        return keep

    def _keep(self, record: logging.LogRecord) -> bool:
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


# ---------------------------------------------------------------- live lines on a terminal

STEPS = (("provision", "provision"), ("pull-dataset", "data"), ("tune", "tuning"), ("push-adapter", "push"),
         ("deploy-inference", "deploy"))
"""(task name, what the line is called), in the order the workspace flow runs them."""

_TUNING = re.compile(r"^tuning \[[#.]*\] step (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>\S+)")


@dataclass
class _Step:
    label: str
    state: str = "pending"  # pending | running | done | failed
    detail: str = ""
    started: float | None = None
    ended: float | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None
    first_step: tuple[float, int] | None = None  # (when, step) of the first progress line seen


def steps_for(workspace: Any) -> list[str]:
    """The steps the workspace flow runs for ``workspace`` (task names, in order)."""
    names = ["provision"]
    if workspace.tuning:
        names += ["pull-dataset", "tune", "push-adapter"]
    if workspace.inference:
        names.append("deploy-inference")
    return names


class LiveSteps:
    """One line per step, redrawn in place (rich ``Live`` on stderr), fed by the log records the
    console filter would have printed. :attr:`current` is the display in use, if any."""

    current: LiveSteps | None = None
    ICONS = {"pending": ("·", "dim"), "running": ("▶", "bold cyan"), "done": ("✓", "green"), "failed": ("✗", "bold red")}

    def __init__(self, task_names: Sequence[str], console: Any = None) -> None:
        from rich.console import Console

        labels = dict(STEPS)
        self.steps = {name: _Step(labels.get(name, name)) for name in task_names}
        self.console = console or Console(file=sys.stderr)
        self._lock = threading.Lock()
        self._live: Any = None
        first = next(iter(self.steps.values()), None)
        if first:
            first.state, first.started = "running", time.monotonic()

    def _step_of(self, record: logging.LogRecord) -> _Step | None:
        run = str(getattr(record, "task_run_name", "") or "")
        for name, step in self.steps.items():
            if run == name or run.startswith(name + "-"):
                return step
        return None

    def take(self, record: logging.LogRecord) -> None:
        """Update the lines from one record; print warnings and errors above them."""
        if getattr(record, "kaiflow_live_seen", False):  # one record reaches every console handler
            return
        record.kaiflow_live_seen = True
        message = record.getMessage().splitlines()[0] if record.getMessage() else ""
        step = self._step_of(record)
        with self._lock:
            if step is not None:
                self._update(step, message)
        if step is not None and self._live is not None:
            self._live.refresh()  # every change drawn, not only the 4-a-second refresh
        # a step's retries and final state are on its line; the CLI's error line says the error at the end
        if record.levelno >= logging.WARNING and not (step and message.startswith(("Finished in state", "Task run failed"))):
            where = f"{step.label}: " if step else ""
            self.console.print(f"{record.levelname.lower()}: {where}{record.getMessage()}", markup=False, highlight=False,
                               style="yellow" if record.levelno == logging.WARNING else "red")

    def _update(self, step: _Step, message: str) -> None:
        now = time.monotonic()
        if step.state == "pending":
            step.state, step.started = "running", now
        if message.startswith("Finished in state"):
            step.state, step.ended = ("done" if "Completed" in message else "failed"), now
            if step.state == "failed":
                step.detail = message.removeprefix("Finished in state ").strip()
            else:
                self._start_next(step, now)
            return
        tuning = _TUNING.match(message)
        if tuning:
            step.step, step.total, step.loss = int(tuning["step"]), int(tuning["total"]), _number(tuning["loss"])
            if step.first_step is None:
                step.first_step = (now, step.step)
            return
        if message:
            step.detail = message

    def _start_next(self, finished: _Step, now: float) -> None:
        names = list(self.steps.values())
        i = names.index(finished)
        if i + 1 < len(names) and names[i + 1].state == "pending":
            names[i + 1].state, names[i + 1].started = "running", now

    def lines(self, width: int = 100) -> list[str]:
        """The lines as plain text (what :meth:`render` colours)."""
        with self._lock:
            return [self._line(step, width) for step in self.steps.values()]

    def _line(self, step: _Step, width: int) -> str:
        icon = self.ICONS[step.state][0]
        text = f"{icon} {step.label:<10}"
        took = _elapsed(step)
        if step.label == "tuning" and step.total and step.state != "failed":
            done = 20 if step.state == "done" else int(20 * min(step.step, step.total) / step.total)
            text += f"[{'#' * done}{'.' * (20 - done)}] {step.step}/{step.total}"
            if step.loss is not None:
                text += f"  loss {step.loss:.4f}"
            eta = _eta(step)
            if step.state == "running" and eta is not None:
                text += f"  ETA {_clock(eta)}"
        elif step.detail:
            text += step.detail
        if took is not None:
            text += f"  ({_clock(took)})"
        return text if len(text) <= width else text[: max(width - 1, 0)] + "…"

    def render(self) -> Any:
        from rich.text import Text

        width = max(self.console.width - 1, 20)
        out = Text()
        for (state, line) in zip((s.state for s in self.steps.values()), self.lines(width)):
            out.append(line[:1], style=self.ICONS[state][1])
            out.append(line[1:] + "\n", style="dim" if state == "pending" else "")
        out.rstrip()
        return out

    def __enter__(self) -> LiveSteps:
        from rich.live import Live

        self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.__enter__()
        LiveSteps.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        LiveSteps.current = None
        with self._lock:
            if exc[0] is not None:  # the step that was running when the run failed
                for step in self.steps.values():
                    if step.state == "running":
                        step.state, step.ended = "failed", time.monotonic()
        self._live.__exit__(*exc)


@contextlib.contextmanager
def live_steps(task_names: Sequence[str], enabled: bool) -> Iterator[LiveSteps | None]:
    """Live lines for one workspace's run when ``enabled`` and stderr is a terminal; else nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with LiveSteps(task_names) as live:
        yield live


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _elapsed(step: _Step) -> float | None:
    if step.started is None or step.state == "pending":
        return None
    return (step.ended or time.monotonic()) - step.started


def _eta(step: _Step) -> float | None:
    """Seconds left at the pace since the first progress line (None before a second one)."""
    if step.first_step is None or step.step <= step.first_step[1]:
        return None
    when, first = step.first_step
    per_step = (time.monotonic() - when) / (step.step - first)
    return per_step * (step.total - step.step)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


# ---------------------------------------------------------------- the loss curve in a terminal

_LOG_STEP = re.compile(r"^\[tuning\] step (?P<step>\d+)/\d+ loss (?P<loss>\S+)")
_LOG_EVAL = re.compile(r"^\[tuning\] eval at step (?P<step>\d+)/\d+: eval loss (?P<loss>\S+)")
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille dot bits by (row, column) in a cell


def losses_from_log(text: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(training, eval) losses by step from a tuning log's human lines (``tuning.progress.say``);
    non-finite values left out. A log that was restarted (a resumed run) keeps the last value of a step."""
    train: dict[float, float] = {}
    evals: dict[float, float] = {}
    for line in text.splitlines():
        for pattern, into in ((_LOG_STEP, train), (_LOG_EVAL, evals)):
            m = pattern.match(line.strip())
            if m and (value := _number(m["loss"])) is not None:
                into[float(m["step"])] = value
    return sorted(train.items()), sorted(evals.items())


def plot(train: Sequence[tuple[float, float]], evals: Sequence[tuple[float, float]] = (), width: int = 64, height: int = 14) -> str:
    """The training loss as a braille line (2x4 dots a character), eval losses as ``×``, with a
    labelled loss axis on the left and a step axis below."""
    points = [*train, *evals]
    if not points:
        return "no loss values to plot (no training step was logged)"
    x0, x1 = min(0.0, min(p[0] for p in points)), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    cols, rows = 2 * width, 4 * height
    cells = [[0] * width for _ in range(height)]
    marks: dict[tuple[int, int], str] = {}

    def dot(x: float, y: float) -> tuple[int, int]:
        return (round((x - x0) / ((x1 - x0) or 1) * (cols - 1)), round((y1 - y) / (y1 - y0) * (rows - 1)))

    def set_dot(c: int, r: int) -> None:
        cells[r // 4][c // 2] |= _DOTS[r % 4][c % 2]

    for (ax, ay), (bx, by) in zip(train, train[1:]):
        (c0, r0), (c1, r1) = dot(ax, ay), dot(bx, by)
        n = max(abs(c1 - c0), abs(r1 - r0), 1)
        for i in range(n + 1):
            set_dot(round(c0 + (c1 - c0) * i / n), round(r0 + (r1 - r0) * i / n))
    if len(train) == 1:
        set_dot(*dot(*train[0]))
    for ex, ey in evals:
        c, r = dot(ex, ey)
        marks[(r // 4, c // 2)] = "×"
    labels = {0: y1, height // 2: (y0 + y1) / 2, height - 1: y0}
    label_w = max(len(f"{v:.4g}") for v in labels.values())
    lines = ["loss (nats per token)"]
    for r in range(height):
        body = "".join(marks.get((r, c)) or (chr(0x2800 + cells[r][c]) if cells[r][c] else " ") for c in range(width))
        label = f"{labels[r]:.4g}" if r in labels else ""
        lines.append(f"{label:>{label_w}} {'┤' if r in labels else '│'}{body.rstrip()}")
    lines.append(" " * label_w + " └" + "─" * width)
    left, right = f"{x0:g}", f"{x1:g}"
    lines.append(" " * (label_w + 2) + left + right.rjust(width - len(left)) + "  step")
    legend = "⠉⠒ training loss" + ("   × eval loss" if evals else "")
    lines.append(" " * (label_w + 2) + legend)
    return "\n".join(lines)
