"""Progress the flow (and a person reading pod logs) can follow: no silent minutes.

Every logging step prints one machine line, ``KAIFLOW_PROGRESS {json}`` (:mod:`tuning.protocol`),
that the flow parses for its progress bar and loss-curve artifact, and one human line. The reporter
also keeps the loss history and token counts that end up in ``metrics.json``.

Tokens are trl's ``num_tokens``: the non-padding tokens the model was trained on (with packing
every token is real). After a resume they count only what this process trained.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuning import protocol


def say(message: str) -> None:
    """A human log line on stdout, flushed at once (pod logs and the flow read it live)."""
    print(f"[tuning] {message}", flush=True)


def quiet_libraries() -> None:
    """Turn off datasets' and transformers' progress bars: stderr is kept for the one ``error:`` line."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


class Reporter(TrainerCallback):
    """Prints progress lines and collects loss, tokens and training time."""

    def __init__(self) -> None:
        self.loss: list[list[float]] = []
        self.eval_loss: list[list[float]] = []
        self.learning_rate: list[list[float]] = []
        self.tokens = 0
        self.train_seconds = 0.0
        self._train_started: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._train_started = time.monotonic()
        say(f"training: {state.max_steps} steps" + (f", resuming at step {state.global_step}" if state.global_step else ""))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step always reports, so metrics cover the whole run
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "num_tokens" in logs:
            self.tokens = int(logs["num_tokens"])
        if "eval_loss" in logs:
            self.eval_loss.append([state.global_step, float(logs["eval_loss"])])
            emit({"step": state.global_step, "max_steps": state.max_steps, "eval_loss": float(logs["eval_loss"])})
            say(f"eval at step {state.global_step}/{state.max_steps}: eval loss {float(logs['eval_loss']):.4f}")
            return
        if "loss" not in logs:
            return
        if self.loss and self.loss[-1][0] == state.global_step:
            return  # the forced last-step log can repeat a regular one
        loss = float(logs["loss"])
        self.loss.append([state.global_step, loss])
        event = {"step": state.global_step, "max_steps": state.max_steps, "loss": loss, "epoch": _round(state.epoch)}
        lr = logs.get("learning_rate")
        if isinstance(lr, (int, float)):  # the rate this step trained with (the scheduler's, after warm-up)
            self.learning_rate.append([state.global_step, float(lr)])
            event["learning_rate"] = float(lr)
        emit({**event, "tokens": self.tokens})
        rate = self.tokens / max(time.monotonic() - (self._train_started or time.monotonic()), 1e-9)
        say(f"step {state.global_step}/{state.max_steps} loss {loss:.4f} epoch {event['epoch']} "
            f"tokens {self.tokens} ({rate:.0f} tok/s)" + (f" lr {lr:.3g}" if "learning_rate" in event else ""))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._train_started is not None:
            self.train_seconds = time.monotonic() - self._train_started

    def summary(self, *, eval_loss: float | None, wall_seconds: float, resolved: dict[str, Any], steps: int) -> dict[str, Any]:
        """The ``metrics.json`` document."""
        return {
            "loss": self.loss,
            "eval_loss": None if eval_loss is None else float(eval_loss),
            "eval_loss_history": self.eval_loss,
            "learning_rate": self.learning_rate,
            "train_tokens": self.tokens,
            "tokens_per_second": self.tokens / self.train_seconds if self.train_seconds else 0.0,
            "train_seconds": self.train_seconds,
            "wall_seconds": wall_seconds,
            "steps": steps,
            "resolved_config": resolved,
        }


def emit(event: dict[str, Any]) -> None:
    print(protocol.progress_line(event), flush=True)


def final_line(metrics: dict[str, Any], output: Path) -> str:
    last = metrics["loss"][-1][1] if metrics["loss"] else float("nan")
    eval_part = f", eval loss {metrics['eval_loss']:.4f}" if metrics["eval_loss"] is not None else ""
    return (
        f"done: {metrics['steps']} steps, final loss {last:.4f}{eval_part}, {metrics['train_tokens']} tokens "
        f"at {metrics['tokens_per_second']:.0f} tok/s, {metrics['wall_seconds']:.1f} s in all; adapter in {output}"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def parse_line(line: str) -> dict[str, Any] | None:
    """The event in one stdout line, or None (``tuning.protocol.parse_progress``)."""
    return protocol.parse_progress(line)


if __name__ == "__main__":  # pragma: no cover - convenience: filter a log on stdin
    for raw in sys.stdin:
        event = parse_line(raw.rstrip("\n"))
        if event:
            print(event)
