"""What a person at a terminal sees (issue 21): `kaiflow apply` run in a pseudo-terminal shows one live
line per step (the tuning line with a progress bar, its loss and ETA) and ends with links that open;
piped, the same command prints today's plain log lines; `describe` prints the same links;
`logs --tuning --plot` draws the loss curve.

Real parts: the installed entry point in a pty (``os.openpty``), the session's Prefect server, data
over HTTP, real QLoRA on tiny-phi-3 (a few steps, with an eval split), the adapter pushed to the
on-disk OCI layout.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import fileserver
from tests.support.workspaces import QA_PAIRS, SHORT_TUNING_WITH_EVAL

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
NAME = "tty-tune"
PAIRS = QA_PAIRS
BUNDLE = SHORT_TUNING_WITH_EVAL  # the same run the UI-artifact test looks at in the browser
FAILING = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {name: tty-fails}
resource: {instanceType: local}
tuning:
  preset: {name: tiny-phi-3}
  method: qlora
  input: {urls: ["http://127.0.0.1:9/none.jsonl"]}
  output: {image: "adapters/tty-fails:1"}
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_pty(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` with stdin, stdout and stderr on a pseudo-terminal; its exit status and all it wrote."""
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s; so far:\n{out.decode(errors='replace')[-3000:]}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        rc = proc.wait(timeout=60)
    return rc, out.decode(errors="replace")


@pytest.fixture(scope="module")
def applied(prefect_api, tiny_model, tmp_path_factory):
    """One `kaiflow apply` of a tuning workspace in a pty; yields the environment and what it printed."""
    base = tmp_path_factory.mktemp("tty")
    srv = fileserver.FileServer(base / "www")
    srv.__enter__()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "KAIFLOW_HOME": str(base / "home"), "KAIFLOW_ALLOW_PRIVATE_URLS": "true",
           "KAIFLOW_RETRY_BACKOFF_S": "0.2", "OMP_NUM_THREADS": "1", "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    try:
        fileserver.write_qa_jsonl(srv.root / "qa.jsonl", PAIRS)
        ws = base / "ws.yaml"
        ws.write_text(BUNDLE.format(name=NAME, url=srv.url_for("qa.jsonl")))
        rc, out = in_pty([KAIFLOW, "apply", "-f", str(ws)], env, timeout=600)
        assert rc == 0, out[-4000:]
        yield {"env": env, "file": ws, "out": out, "api": prefect_api}
    finally:
        srv.__exit__(None, None, None)


def frames(out: str) -> str:
    return ANSI.sub("", out.replace("\r", "\n"))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_apply_on_a_terminal_shows_a_live_line_per_step_and_links(applied):
    out, text = applied["out"], frames(applied["out"])
    assert "\x1b[" in out  # redrawn in place
    assert "| INFO    |" not in text  # no plain log lines on a terminal
    # the tuning line while it ran: a bar, the step, the loss and the time left
    assert re.search(r"▶ tuning\s+\[#*\.+\] \d+/12  loss \d+\.\d{4}  ETA \d+:\d\d", text), text[-3000:]
    final = text[text.rindex("✓ provision"):]  # the last frame
    for label in ("provision", "data", "push"):
        assert re.search(rf"✓ {label}\b", final), final
    assert re.search(r"✓ tuning\s+\[#{20}\] 12/12  loss \d+\.\d{4}", final), final
    run = re.search(r"^  flow run (http://127\.0\.0\.1:\d+/runs/flow-run/([0-9a-f-]{36}))$", text, re.M)
    image = re.search(r"^  image    (\S+@sha256:[0-9a-f]{64})$", text, re.M)
    assert run and image, text[-2000:]
    # the link opens: the UI serves the run's page, and the run is the workspace's
    assert httpx.get(run.group(1), timeout=30).status_code == 200
    assert httpx.get(f"{applied['api']}/flow_runs/{run.group(2)}", timeout=10).json()["name"] == NAME


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_apply_piped_prints_plain_log_lines_and_the_same_links(applied):
    out = subprocess.run([KAIFLOW, "apply", "-f", str(applied["file"])], env=applied["env"], capture_output=True, text=True,
                         timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "\x1b[" not in out.stderr + out.stdout and "✓" not in out.stderr
    assert "| INFO    | Task run 'provision-" in out.stderr  # today's lines, for CI logs and pipes
    assert re.search(r"^  flow run http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}$", out.stdout, re.M)
    assert re.search(r"^  image    \S+@sha256:[0-9a-f]{64}$", out.stdout, re.M)

    described = subprocess.run([KAIFLOW, "describe", "workspace", NAME], env=applied["env"], capture_output=True, text=True,
                               timeout=60).stdout
    link = re.search(r"^  flow run (\S+)$", out.stdout, re.M).group(1)  # the last run's, as describe says
    assert f"Flow run:      {link}\n" in described
    assert re.search(r"^Image:         \S+@sha256:[0-9a-f]{64}$", described, re.M)


@pytest.mark.e2e
@pytest.mark.slow
def test_logs_plot_draws_the_tuning_runs_loss_curve(applied):
    out = subprocess.run([KAIFLOW, "logs", NAME, "--tuning", "--plot"], env=applied["env"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("loss (nats per token)\n")
    assert re.search(r"[\u2801-\u28ff]", out.stdout)  # the line, in braille dots
    assert "×" in out.stdout and "× eval loss" in out.stdout  # the eval split's losses
    assert re.search(r"^\s+0\s+12  step$", out.stdout, re.M)


@pytest.mark.timeout(300)
def test_a_failed_step_is_marked_on_its_line_and_the_error_said_at_the_end(prefect_api, tmp_path):
    ws = tmp_path / "ws.yaml"
    ws.write_text(FAILING)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "KAIFLOW_HOME": str(tmp_path / "home"), "KAIFLOW_ALLOW_PRIVATE_URLS": "true",
           "KAIFLOW_DATASET_ATTEMPTS": "1", "KAIFLOW_RETRY_BACKOFF_S": "0", "TERM": "xterm-256color", "COLUMNS": "120"}
    rc, out = in_pty([KAIFLOW, "apply", "-f", str(ws)], env, timeout=240)
    text = frames(out)
    assert rc == 1
    last = text[text.rindex("✓ provision"):]
    assert re.search(r"✗ data\s+Failed \(DatasetError\)", last) and re.search(r"· tuning\s*\n", last), last
    assert [x for x in last.splitlines() if x.strip()][-1].startswith("error: could not download http://127.0.0.1:9/none.jsonl")
    assert "Traceback" not in text and "| ERROR   |" not in text


def test_describe_without_a_running_prefect_server_says_how_to_start_it(tmp_path, monkeypatch):
    from infra import records

    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    env = dict(os.environ)
    run_id = "0b6c4ad8-3a4f-4b7e-9d43-5c4e1f0a9c11"
    records.update("offline", platform="local", instance="local", last_flow_run=run_id,
                   adapter_image="127.0.0.1:5000/adapters/offline@sha256:" + "cd" * 32)
    out = subprocess.run([KAIFLOW, "describe", "workspace", "offline"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"Flow run:      {run_id} (no Prefect server is running here: `kaiflow server` starts it, with the UI)" in out.stdout
    assert "Image:         127.0.0.1:5000/adapters/offline@sha256:" + "cd" * 32 in out.stdout


def test_the_loss_curve_is_read_from_a_tuning_log_and_drawn_with_axes():
    from flows import console

    log = "\n".join(["[tuning] training: 6 steps", "[tuning] step 2/6 loss 2.5000 epoch 0.5 tokens 10 (5 tok/s) lr 0.0002",
                     "[tuning] step 4/6 loss nan epoch 1.0 tokens 20 (5 tok/s)", "[tuning] eval at step 4/6: eval loss 1.7500",
                     "[tuning] step 6/6 loss 1.2500 epoch 1.5 tokens 30 (5 tok/s)", "[tuning] done: 6 steps"])
    train, evals = console.losses_from_log(log)
    assert train == [(2.0, 2.5), (6.0, 1.25)] and evals == [(4.0, 1.75)]  # nan left out
    drawn = console.plot(train, evals, width=30, height=8).splitlines()
    assert drawn[0] == "loss (nats per token)" and drawn[1].strip().startswith("2.5 ┤") and drawn[8].strip().startswith("1.25 ┤")
    assert "×" in "".join(drawn[1:9]) and drawn[-2].split() == ["0", "6", "step"]
    assert console.plot([], []) == "no loss values to plot (no training step was logged)"
