"""The suite's own hooks (tests/conftest.py) do what the README says: under strict mode a skip
fails with its reason, ``gpu`` tests are deselected (not skipped) without CUDA, a fake server that
broke inside fails the test that used it, and the fakes' own tests are counted apart.

Each case runs pytest on a few throw-away test files in a child process with this suite's
conftest loaded as a plugin, and reads the outcome pytest reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

INI = """[pytest]
markers =
    gpu: needs CUDA
    fake: checks only a fake
"""

PROBES = {
    "test_probe_skips.py": """
        import pytest

        def test_skips_in_the_test():
            pytest.skip("no frobnicator installed")

        @pytest.fixture
        def needs_thing():
            pytest.skip("thing missing in set-up")

        def test_skips_in_a_fixture(needs_thing):
            pass

        @pytest.mark.xfail(reason="known")
        def test_expected_failure_stays_xfail():
            assert False

        def test_passes():
            pass
    """,
    "test_probe_import_skip.py": """
        import pytest

        pytest.importorskip("no_such_module_kaiflow_probe")

        def test_never_collected():
            pass
    """,
    "test_probe_gpu.py": """
        import pytest

        @pytest.mark.gpu
        def test_needs_cuda():
            import torch
            assert torch.cuda.is_available()
    """,
    "test_probe_fake.py": """
        import pytest
        from tests.support.fakekube import FakeKube

        @pytest.mark.fake
        def test_fake_breaks_inside():
            kube = FakeKube(versions=("1.34",)).start()
            try:
                def broken(pod):
                    raise ZeroDivisionError("the hook the test gave the fake is broken")
                kube.controllers.pod_failure_for = broken
                kube.add_node("n", labels={})
                kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                             "spec": {"containers": [{"name": "c", "image": "x"}]}})
                kube.controllers.settle()
            finally:
                kube.stop()
            assert kube.internal_errors()  # the test itself passes; the fixture must fail it

        def test_fake_that_broke_and_was_cleared_passes():
            kube = FakeKube(versions=("1.34",), controllers=False).start()
            kube.controllers.errors.append("on purpose")
            kube.clear_internal_errors()
            kube.stop()
    """,
}


def run_probes(tmp_path: Path, *, strict: bool) -> subprocess.CompletedProcess:
    for name, text in PROBES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "pytest.ini").write_text(INI)
    env = {**os.environ, "PYTHONPATH": str(REPO), "KAIFLOW_TESTS_STRICT": "1" if strict else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-rA", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    return run_probes(tmp_path_factory.mktemp("strict"), strict=True)


def outcome_lines(out: str) -> dict[str, str]:
    """``-rA`` short summary: test id (or file) -> PASSED/FAILED/SKIPPED/XFAIL/ERROR."""
    found: dict[str, str] = {}
    rank = ["PASSED", "XFAIL", "SKIPPED", "FAILED", "ERROR"]  # a test that passed and errored in tear-down: ERROR
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word in rank and rest:
            key = rest.split(" - ")[0].split("::")[-1]
            if rank.index(word) >= rank.index(found.get(key, "PASSED")):
                found[key] = word
    return found


def test_strict_mode_turns_every_skip_into_a_failure_with_its_reason(strict: subprocess.CompletedProcess):
    r = strict
    out = r.stdout + r.stderr
    got = outcome_lines(out)
    assert got["test_skips_in_the_test"] == "FAILED", out
    assert got["test_skips_in_a_fixture"] in ("FAILED", "ERROR"), out
    assert got["test_expected_failure_stays_xfail"] == "XFAIL" and got["test_passes"] == "PASSED", out
    assert "SKIPPED" not in got.values() and "SKIPPED [" not in out, out
    assert "which allows no skips: no frobnicator installed" in out
    assert "which allows no skips: thing missing in set-up" in out
    assert "no_such_module_kaiflow_probe" in out and "test_probe_import_skip.py" in got  # the module fails
    assert got["test_probe_import_skip.py"] == "ERROR", out


def test_without_strict_mode_skips_stay_skips(tmp_path: Path):
    r = run_probes(tmp_path, strict=False)
    assert "SKIPPED [1] test_probe_skips.py:5: no frobnicator installed" in r.stdout, r.stdout
    assert "thing missing in set-up" in r.stdout and "no_such_module_kaiflow_probe" in r.stdout
    assert r.stdout.count("SKIPPED [1]") == 3, r.stdout


def test_gpu_tests_are_deselected_not_skipped_without_cuda(strict: subprocess.CompletedProcess):
    r = strict
    assert "test_needs_cuda" not in outcome_lines(r.stdout), r.stdout  # neither run nor skipped
    assert "1 test(s) marked 'gpu' deselected: this machine has no CUDA" in r.stdout
    assert "1 deselected" in r.stdout


def test_a_fake_that_failed_inside_fails_the_test_and_the_fakes_tests_are_counted(strict: subprocess.CompletedProcess):
    r = strict
    got = outcome_lines(r.stdout)
    assert got["test_fake_breaks_inside"] == "ERROR", r.stdout  # failed in the autouse fixture's tear-down
    assert "a fake server failed inside itself during this test" in r.stdout
    assert "FakeKube: controller: ZeroDivisionError('the hook the test gave the fake is broken')" in r.stdout
    assert got["test_fake_that_broke_and_was_cleared_passes"] == "PASSED", r.stdout
    assert "1 of the tests collected check only the fakes (marker 'fake')" in r.stdout
