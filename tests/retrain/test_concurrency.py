"""GPU quota and per-workspace serialisation against a real Prefect server's global concurrency limits."""

from __future__ import annotations

import threading
import time

import pytest

from flows import concurrency
from tests.retrain.conftest import thread
from workspace.errors import QuotaExceeded, TransientError


def hold_in_threads(enter, n: int, seconds: float) -> list[tuple[float, float, dict | None]]:
    """Run ``n`` threads that each hold ``enter()`` for ``seconds``; their (start, end, state inside)."""
    spans: list = []
    errors: list = []

    def work():
        try:
            with enter() as state_fn:
                t0 = time.monotonic()
                inside = state_fn() if state_fn else None
                time.sleep(seconds)
                spans.append((t0, time.monotonic(), inside))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [thread(work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return sorted(spans)


def gpu(sku: str, occupy: int = 1):
    import contextlib

    @contextlib.contextmanager
    def enter():
        with concurrency.gpu_slots(sku, occupy):
            yield lambda: concurrency.slot_state(concurrency.limit_name(sku))
    return enter


def test_ensure_limits_creates_and_updates_gpu_limits(prefect_api):
    assert concurrency.ensure_limits({"Standard_NC6s_v3": 2, "local": 1}) == {"gpu-Standard_NC6s_v3": 2, "gpu-local": 1}
    assert concurrency.slot_state("gpu-Standard_NC6s_v3") == {"limit": 2, "active_slots": 0}
    concurrency.ensure_limits({"Standard_NC6s_v3": 3})
    assert concurrency.slot_state("gpu-Standard_NC6s_v3")["limit"] == 3


def test_gpu_limit_of_one_admits_one_job_at_a_time(prefect_api):
    concurrency.ensure_limits({"test-one": 1})
    spans = hold_in_threads(gpu("test-one"), 2, 1.0)
    assert len(spans) == 2 and spans[0][1] <= spans[1][0]  # the second started after the first ended
    assert all(inside == {"limit": 1, "active_slots": 1} for _, _, inside in spans)
    assert concurrency.slot_state("gpu-test-one")["active_slots"] == 0  # released


def test_gpu_limit_of_two_admits_two(prefect_api):
    """Both threads are inside their slots at once: each waits inside for the other (a barrier),
    which a limit that admitted one at a time would never let happen (the barrier breaks)."""
    concurrency.ensure_limits({"test-two": 2})
    both_inside = threading.Barrier(2, timeout=60)  # the timeout only catches a limit that admits one
    inside_states: list = []

    def enter():
        import contextlib

        @contextlib.contextmanager
        def hold():
            with concurrency.gpu_slots("test-two"):
                both_inside.wait()
                inside_states.append(concurrency.slot_state("gpu-test-two"))
                both_inside.wait()  # nobody leaves before both have read the state
                yield None
        return hold()

    hold_in_threads(enter, 2, 0)
    assert inside_states == [{"limit": 2, "active_slots": 2}] * 2


def test_missing_limit_is_created_on_first_use_not_skipped(prefect_api, monkeypatch):
    monkeypatch.setenv("KAIFLOW_GPU_QUOTA", "test-fresh=1")
    assert concurrency.slot_state("gpu-test-fresh") is None
    with concurrency.gpu_slots("test-fresh"):
        assert concurrency.slot_state("gpu-test-fresh") == {"limit": 1, "active_slots": 1}


def test_unconfigured_sku_gets_the_default_but_room_for_one_job(prefect_api, monkeypatch):
    monkeypatch.setenv("KAIFLOW_GPU_DEFAULT_LIMIT", "1")
    with concurrency.gpu_slots("test-unnamed", occupy=2):
        assert concurrency.slot_state("gpu-test-unnamed") == {"limit": 2, "active_slots": 2}


def test_asking_more_than_the_quota_fails_at_once_naming_the_setting(prefect_api):
    concurrency.ensure_limits({"test-small": 1})
    t0 = time.monotonic()
    with pytest.raises(QuotaExceeded, match="needs 2 slot.*'gpu-test-small', which allows 1: raise it .KAIFLOW_GPU_QUOTA"):
        with concurrency.gpu_slots("test-small", occupy=2):
            pass
    assert time.monotonic() - t0 < 10


def test_waiting_for_a_slot_is_bounded(prefect_api, monkeypatch):
    concurrency.ensure_limits({"test-busy": 1})
    monkeypatch.setenv("KAIFLOW_GPU_WAIT_S", "1.5")
    holding, release = threading.Event(), threading.Event()

    def holder():
        with concurrency.gpu_slots("test-busy"):
            holding.set()
            release.wait(30)

    t = thread(holder)
    t.start()
    try:
        assert holding.wait(30)
        t0 = time.monotonic()
        with pytest.raises(TransientError, match="no free slot on 'gpu-test-busy' within 1.5 s .KAIFLOW_GPU_WAIT_S"):
            with concurrency.gpu_slots("test-busy"):
                pass
        assert time.monotonic() - t0 < 15
    finally:
        release.set()
        t.join(30)


def test_workspace_slot_serialises_runs_and_is_reentrant_within_one(prefect_api):
    import contextlib

    @contextlib.contextmanager
    def enter():
        with concurrency.workspace_slot("ws-serial-unit"):
            with concurrency.workspace_slot("ws-serial-unit"):  # a subflow of the same run: no self-wait
                yield lambda: concurrency.slot_state("workspace-ws-serial-unit")

    spans = hold_in_threads(enter, 2, 0.8)
    assert spans[0][1] <= spans[1][0]
    assert all(inside == {"limit": 1, "active_slots": 1} for _, _, inside in spans)
