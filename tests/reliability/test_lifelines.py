"""The tuning program dies with the apply that runs it, however the apply dies (PR_SET_PDEATHSIG).

A killed apply used to leave its tuning process running until its next progress line met the
closed pipe; a quiet one (loading a big model, a long step) kept training, writing the very
checkpoints the next apply resumes from. Here the "tuning program" never prints, so only the
parent-death signal can stop it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil

PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from infra.platforms import local
    quiet = [sys.executable, "-c", "import time; time.sleep(600)"]
    local._run_reporting_progress(quiet, Path(sys.argv[1]))
""")


def test_a_killed_apply_takes_its_tuning_program_with_it(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "tuning.log")])
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline:
            children = [c for c in psutil.Process(parent.pid).children() if "time.sleep(600)" in " ".join(c.cmdline())]
            time.sleep(0.1)
        assert children, "the tuning program did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        gone, alive = psutil.wait_procs(children, timeout=30)  # a hang guard: the kernel kills it at once
        assert not alive, "the tuning program outlived its apply"
    finally:
        parent.kill()
        for c in children:  # only what this test started
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
