"""Concurrency slots of a run that died: released at once, and a run that must wait says for what.

Against the session's real Prefect server; the holders are real processes that are SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flows import concurrency
from workspace.errors import TransientError

HOLD = textwrap.dedent("""
    import sys, time
    from flows import concurrency
    with concurrency.workspace_slot(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def start_holder(name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, name], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_slot_held_by_a_killed_process_is_released_at_once(prefect_api, monkeypatch):
    name = "rel-slot-killed"
    holder = start_holder(name)
    assert concurrency.slot_state(concurrency.workspace_limit_name(name))["active_slots"] == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    # Prefect's own lease (300 s) would still hold it; a wait shorter than any lease expiry proves
    # the slot was released because its holder is gone, not because a lease lapsed
    monkeypatch.setenv("KAIFLOW_GPU_WAIT_S", "20")
    with concurrency.workspace_slot(name):
        assert concurrency.slot_state(concurrency.workspace_limit_name(name)) == {"limit": 1, "active_slots": 1}
    assert concurrency.slot_state(concurrency.workspace_limit_name(name))["active_slots"] == 0


def test_a_run_that_must_wait_says_for_what_and_how_long(prefect_api, monkeypatch, caplog):
    name = "rel-slot-busy"
    holder = start_holder(name)
    try:
        monkeypatch.setenv("KAIFLOW_GPU_WAIT_S", "2")
        caplog.set_level(logging.WARNING, logger="flows.concurrency")
        with pytest.raises(TransientError) as err:
            with concurrency.workspace_slot(name):
                pass
        said = caplog.text
        assert f"workspace {name} waits for the concurrency limit 'workspace-{name}'" in said
        assert f"pid {holder.pid}" in said and "at most 2 s (KAIFLOW_GPU_WAIT_S)" in said
        assert f"within 2 s (KAIFLOW_GPU_WAIT_S); held by workspace {name}" in str(err.value)
        assert f"pid {holder.pid}) since " in str(err.value)
    finally:
        holder.kill()
        holder.wait(30)
    t0 = time.monotonic()
    monkeypatch.setenv("KAIFLOW_GPU_WAIT_S", "20")
    with concurrency.workspace_slot(name):
        pass
    assert time.monotonic() - t0 < 20  # hang guard only: the dead holder's slot came free
