"""Every fake server a test starts registers here, so a test fails when a fake broke inside.

Why: an exception inside the fake API server's controllers or request handlers, or inside the fake
ARM's hooks, used to show up only as the client's timeout (the Pod never became Ready, the request
hung), far from its cause. Each fake keeps what went wrong inside it (``internal_errors()``), and the
autouse fixture in ``tests/conftest.py`` fails the test that saw any, listing them.

A fake that is meant to break (a test of the fakes' own error reporting) is cleared with
``fake.clear_internal_errors()`` before the test ends.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol


class Fake(Protocol):
    def internal_errors(self) -> list[str]: ...


# by id, weakly (FakeArm is a dataclass, so not hashable): a fake nobody holds any more is dropped
_live: dict[int, "weakref.ref[Fake]"] = {}
_lock = threading.RLock()  # the weakref callback may run (GC) while it is held


def register(fake: Fake) -> None:
    key = id(fake)
    with _lock:
        _live[key] = weakref.ref(fake, lambda _: _forget(key))


def _forget(key: int) -> None:
    with _lock:
        _live.pop(key, None)


def _fakes() -> list[Fake]:
    with _lock:
        refs = list(_live.values())
    return [f for f in (r() for r in refs) if f is not None]


def snapshot() -> dict[int, int]:
    """How many internal errors each live fake has recorded so far (by id)."""
    return {id(f): len(f.internal_errors()) for f in _fakes()}


def new_since(before: dict[int, int]) -> list[str]:
    """Internal errors recorded since ``before`` (fakes created since then: all of theirs)."""
    fakes = _fakes()
    found = []
    for fake in fakes:
        errors = fake.internal_errors()[before.get(id(fake), 0):]
        found += [f"{type(fake).__name__}: {e}" for e in errors]
    return found
