"""``make demo``'s data server: reused when it serves these files, replaced when it is an earlier
demo's server serving other files (another or a moved checkout), and a clear error when the port
belongs to some other program. Real http.server processes on a free loopback port."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from flows import demo
from infra import local_process


def _http_server(folder: Path, port: int, pidfile: Path) -> int:
    return local_process.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder),
                                str(port)], log_path=pidfile.with_suffix(".log"), pidfile=pidfile)


@pytest.fixture
def port(monkeypatch, tmp_path) -> int:
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    free = local_process.free_port()
    monkeypatch.setattr(demo, "PORT", free)
    return free


def test_an_earlier_demos_server_of_other_files_is_replaced_then_reused(port, tmp_path):
    pidfile = tmp_path / "home" / "demo" / "data-server.pid"
    pidfile.parent.mkdir(parents=True)
    (tmp_path / "gone").mkdir()
    old = _http_server(tmp_path / "gone", port, pidfile)
    local_process.wait_healthy(f"http://127.0.0.1:{port}/", pid=old, marker="http.server", timeout=20)
    try:
        demo.serve_data()
        assert not local_process.alive(old, "http.server")
        served = httpx.get(f"http://127.0.0.1:{port}/qa.jsonl", timeout=5).content
        assert served == (demo.DATA / "qa.jsonl").read_bytes()
        new = pidfile.read_text()
        demo.serve_data()  # serving these files already: left alone
        assert pidfile.read_text() == new
    finally:
        local_process.stop(old, "http.server")
        local_process.stop_recorded(pidfile, "http.server")


def test_a_port_held_by_another_program_is_a_clear_error(port, tmp_path):
    (tmp_path / "other").mkdir()
    other = _http_server(tmp_path / "other", port, tmp_path / "other.pid")  # not recorded as the demo's
    local_process.wait_healthy(f"http://127.0.0.1:{port}/", pid=other, marker="http.server", timeout=20)
    try:
        with pytest.raises(SystemExit, match=f"port {port} on 127.0.0.1 is in use by another program"):
            demo.serve_data()
        assert local_process.alive(other, "http.server")  # not ours to stop
    finally:
        local_process.stop(other, "http.server")


def test_the_demo_stops_its_data_server_and_says_what_it_leaves_running(port, tmp_path):
    """Issue 24 item 6: `make demo` left its data server on the port, and its closing text named
    neither it nor the background Prefect server."""
    demo.serve_data()
    pid = json.loads((tmp_path / "home" / "demo" / "data-server.pid").read_text())["pid"]
    assert local_process.alive(pid, "http.server")
    assert demo.stop_data_server() is True
    assert not local_process.alive(pid, "http.server")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/qa.jsonl", timeout=2)
    assert demo.stop_data_server() is False  # nothing left to stop
    text = demo.closing_text("http://127.0.0.1:9999")
    assert "kaiflow delete workspace tiny-tune-and-serve" in text and f"127.0.0.1:{port} is stopped" in text


def test_make_demo_installs_no_debian_packages():
    """`make demo` needs neither the registry, Chromium nor PostgreSQL: only `make test` installs them."""
    import subprocess

    out = subprocess.run(["make", "-n", "demo"], cwd=demo.REPO, capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(demo.REPO)})
    assert out.returncode == 0, out.stderr
    assert "apt-get" not in out.stdout and "flows.demo" in out.stdout
