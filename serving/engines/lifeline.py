"""vLLM's engine processes die with the server that started them, however the server dies.

vLLM runs its engine core in a child process (``VLLM::EngineCore``) and the model in grandchildren
(``VLLM::Worker``). vLLM gives the workers a "death pipe" to notice that the engine core exited,
but nothing makes the engine core notice that the *server* exited: after a ``kill -9`` of the
server (what the OOM killer sends) the engine core and its worker lived on under PID 1, holding
gigabytes (on a GPU: the GPU memory the restarted server needs), spinning a core and ignoring
SIGTERM.

The fix is Linux's parent-death signal: each engine process calls
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` first thing, so the kernel kills it the moment its parent
goes — the engine core when the server dies, each worker when the engine core dies — and no
cooperation from a dying process is needed. `install` does this by wrapping vLLM's two process
entry points (`EngineCoreProc.run_engine_core`, `WorkerProc.worker_main`) with module-level
functions of this module: the spawned child unpickles its target by name, imports this small
module (stdlib only) and runs the wrapper, which then calls vLLM's original.

Two details the kernel imposes:

* The signal follows the parent *thread* that started the child, not the parent process. The
  server therefore starts the engine on a thread of its own that lives until the engine is shut
  down (`VllmEngine`), never on a pool thread that might end earlier.
* A parent can die between the child's start and its ``prctl`` call; the wrapper then finds
  itself re-parented (``getppid`` differs from the parent multiprocessing recorded) and exits.

Outside Linux (no ``prctl``) the wrappers change nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any, Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2

# (module, class, attribute) of the vLLM process entry points that get wrapped
ENTRY_POINTS = {
    "engine_core": ("vllm.v1.engine.core", "EngineCoreProc", "run_engine_core"),
    "worker": ("vllm.v1.executor.multiproc_executor", "WorkerProc", "worker_main"),
}
_originals: dict[str, Callable[..., Any]] = {}


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) exits.

    Returns False where that is not possible (not Linux). If the parent is already gone — it died
    before this call — the process exits at once with status 1.
    """
    if not sys.platform.startswith("linux"):
        return False
    if _libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent died before the signal was armed: nobody would ever stop this process
    return True


def parent_death_signal() -> int:
    """The parent-death signal set for this process (0: none); for tests and diagnostics."""
    value = ctypes.c_int(0)
    _libc().prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    return value.value


def _original(kind: str) -> Callable[..., Any]:
    # in the server process: what install() replaced; in a spawned child nothing was replaced
    # (a fresh interpreter), so vLLM's class attribute is still its own function
    if kind not in _originals:
        import importlib

        module, cls, attr = ENTRY_POINTS[kind]
        return getattr(getattr(importlib.import_module(module), cls), attr)
    return _originals[kind]


def run_engine_core(*args: Any, **kwargs: Any) -> Any:
    die_with_parent()
    install()  # in this (spawned) engine core too, so the workers it starts get the same guarantee
    return _original("engine_core")(*args, **kwargs)


def worker_main(*args: Any, **kwargs: Any) -> Any:
    die_with_parent()
    return _original("worker")(*args, **kwargs)


_WRAPPERS = {"engine_core": run_engine_core, "worker": worker_main}


def install() -> list[str]:
    """Wrap vLLM's engine-process entry points (idempotent); returns what could not be wrapped.

    A name missing there means vLLM moved an entry point: the engine still runs, without the
    guarantee, and the caller logs it (and the test of this module fails).
    """
    import importlib

    missing = []
    for kind, (module_name, cls_name, attr) in ENTRY_POINTS.items():
        if kind in _originals:
            continue
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
            original = getattr(cls, attr)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{cls_name}.{attr}")
            continue
        _originals[kind] = original
        setattr(cls, attr, staticmethod(_WRAPPERS[kind]))
    return missing
