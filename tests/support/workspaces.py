"""What several end-to-end tests share: the question/answer pairs the tiny model is taught, a short
tuning workspace with an eval split, environment variables set for a module, and the browser the UI
tests drive (Debian's Chromium through Playwright)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# question -> fixed answer (short, distinct first tokens: the tiny model learns them in a few dozen steps)
QA_PAIRS = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "Shakespeare."),
            ("What colour is the sky?", "Blue."), ("Which planet is red?", "Mars."),
            ("How many legs does a spider have?", "Eight."), ("What is two plus two?", "Four."),
            ("What do bees make?", "Honey."), ("Which animal barks?", "A dog.")]

# A tuning-only workspace with its Kaito training config: 12 steps, a loss every 2, an eval split
# evaluated every 4 steps — a loss curve with eval points in ~20 s of training. Format with name, url.
SHORT_TUNING_WITH_EVAL = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config}}
data:
  training_config.yaml: |
    training_config:
      TrainingArguments:
        max_steps: 12
        logging_steps: 2
        save_steps: 4
        eval_strategy: steps
        eval_steps: 4
      DatasetConfig:
        train_test_split: 0.75
---
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {{name: {name}}}
resource: {{instanceType: local}}
tuning:
  preset: {{name: tiny-phi-3}}
  method: qlora
  config: {name}-config
  input: {{urls: ["{url}"]}}
  output: {{image: "adapters/{name}:1"}}
"""


# The tune-and-serve Workspace the Kubernetes tests run on a GPU instance type (after the Kaito
# training ConfigMap they put in front of it): format with name, url, image.
KUBE_TUNE_AND_SERVE = """
---
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {{name: {name}}}
resource:
  instanceType: Standard_NC6s_v3
  labelSelector: {{matchLabels: {{app: {name}}}}}
tuning:
  preset: {{name: tiny-phi-3}}
  method: qlora
  config: {name}-config
  input: {{urls: ["{url}"]}}
  output: {{image: "{image}"}}
inference:
  preset: {{name: tiny-phi-3}}
"""

@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block (a module-scoped fixture cannot use monkeypatch) and put
    back what was there before, unset ones included."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright (no browser download); fails, never skips,
    when it is missing."""
    import pytest

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def browser_page(browser) -> Iterator[object]:
    """A fresh page, large enough for the Prefect UI's forms, with a long default timeout: a loaded
    2-core machine renders slowly."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    try:
        yield pg
    finally:
        context.close()
