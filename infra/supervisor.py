"""The supervisor of a local inference server: ``python -m infra.supervisor --spec FILE``.

What a pod's kubelet does for a container, for the local platform: the deploy starts one
supervisor per server (detached, its own session, so it outlives the apply), and the supervisor
starts ``python -m serving`` as its child and watches it:

* a server that **crashes** (killed by a signal other than SIGTERM/SIGINT — ``kill -9``, the OOM
  killer — or exits non-zero) is started again on the same port, with the adapters and config
  the workspace's record names *now* (adapters rolled in since are kept), after a backoff of 1, 2,
  4 ... 30 s (reset once it has run healthy for a minute), counted in ``server.restarts``;
* a server **stopped on purpose** (SIGTERM/SIGINT, or a clean exit) stays stopped, and the
  supervisor exits: Kubernetes' ``restartPolicy: OnFailure``;
* a server that **never became healthy** is not restarted: the supervisor exits with its status,
  so the deploy fails at once with the log's tail instead of waiting for a crash loop.

The record is the truth ``kaiflow get``/``describe`` show: the supervisor writes the server's
PID, restarts, last exit and the time it was seen down there (only while the record names this
supervisor's server), sets InferenceReady/WorkspaceReady False when the server goes down and True
when it answers again, and adds events.

Nothing outlives it: SIGTERM to the supervisor's process group (``kaiflow delete``, a replacing
deploy) stops both; the server has ``PR_SET_PDEATHSIG`` set, so a ``kill -9`` of the supervisor
takes the server (and, through ``serving.engines.lifeline``, vLLM's engine processes) with it; and
a supervisor whose workspace record is gone stops its server and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from infra import local_process, records
from workspace import status

log = logging.getLogger("infra.supervisor")
MARKER = "-m infra.supervisor"
SERVING_MARKER = "-m serving"
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STEADY_S = 60.0  # a server healthy this long starts the next backoff from the beginning
POLL_S = 0.5
RECORD_CHECK_S = 2.0
ADOPT_S = 120.0  # a healthy server the record never names is an orphan of a deploy that died: stopped after this
DOWN_REASON = "InferenceNotReady"  # what WorkspaceReady says while the server is down


def serve_command(spec: dict[str, Any], adapters: list[records.ServedAdapter]) -> list[str]:
    """The ``python -m serving`` command line of ``spec`` (see ``write_spec``) serving ``adapters``."""
    cmd = [sys.executable, "-m", "serving", "--model", spec["model"], "--host", spec["host"], "--port", str(spec["port"]),
           "--engine", spec["engine"], "--served-model-name", spec["model"]]
    for a in adapters:
        cmd += ["--adapter", f"{a.name}={a.dir}:{a.strength}"]
    if spec.get("config_path"):
        cmd += ["--config", spec["config_path"]]
    return cmd


def write_spec(path: Path, *, workspace: str, model: str, host: str, port: int, engine: str,
               adapters: list[records.ServedAdapter], config_path: str | None, log_path: Path) -> None:
    """What a supervisor serves: written by the deploy, read once by the supervisor it starts."""
    path.write_text(json.dumps({
        "workspace": workspace, "model": model, "host": host, "port": port, "engine": engine,
        "adapters": [a.model_dump(mode="json") for a in adapters], "config_path": config_path,
        "log_path": str(log_path), "state": str(path.with_suffix(".state.json")),
    }, indent=1))


def state_path(spec_path: Path) -> Path:
    return spec_path.with_suffix(".state.json")


def read_state(spec_path: Path) -> dict[str, Any]:
    """The supervisor's own view (``{"pid", "restarts", ...}``), or {} before it wrote one."""
    try:
        return json.loads(state_path(spec_path).read_text())
    except (OSError, ValueError):
        return {}


def describe_exit(returncode: int) -> str:
    """``exit status 1`` / ``killed by SIGKILL``, as a person reads it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def deliberate(returncode: int) -> bool:
    """A stop someone asked for (SIGTERM/SIGINT or a clean exit), not a crash."""
    return returncode in (0, -signal.SIGTERM, -signal.SIGINT)


class Supervisor:
    def __init__(self, spec_path: Path) -> None:
        self.spec_path = spec_path
        self.spec = json.loads(spec_path.read_text())
        self.name: str = self.spec["workspace"]
        self.url = f"http://{self.spec['host']}:{self.spec['port']}"
        self.adapters = [records.ServedAdapter.model_validate(a) for a in self.spec["adapters"]]
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.restarts = 0
        self.ever_healthy = False
        self.adopted = False  # the record has named this supervisor's server
        self.healthy_since: float | None = None  # when the first server became healthy

    # -------------------------------------------------------------- lifecycle
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        backoff = BACKOFF_FIRST_S
        while True:
            self._start_child()
            healthy_at = self._watch()
            assert self.child is not None
            rc = self.child.returncode
            if self.stopping or rc is None:  # asked to stop, or the workspace is gone
                self._stop_child()
                self._save_state(pid=None)
                return 0
            if not self.ever_healthy and self._recorded():
                self.ever_healthy = True  # the deploy saw it healthy (and recorded it) between two of our polls
            if not self.ever_healthy:
                log.error("server never became healthy (%s): not restarting it", describe_exit(rc))
                self._save_state(pid=None, last_exit=describe_exit(rc))
                return rc if rc > 0 else 1
            if deliberate(rc):
                log.info("server stopped (%s): stopped for good", describe_exit(rc))
                self._went_down(describe_exit(rc), None)
                return 0
            if healthy_at is not None and time.monotonic() - healthy_at >= STEADY_S:
                backoff = BACKOFF_FIRST_S
            self.restarts += 1
            log.warning("server %s (%s); restart %d in %.0f s", self.child.pid, describe_exit(rc), self.restarts, backoff)
            self._went_down(describe_exit(rc), backoff)
            if self._sleep(backoff):
                self._save_state(pid=None)
                return 0
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            self.adapters = self._current_adapters()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _start_child(self) -> None:
        cmd = serve_command(self.spec, self.adapters)
        with open(self.spec["log_path"], "ab") as logf:
            self.child = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=local_process.die_with_parent())
        log.info("server pid %d: %s", self.child.pid, " ".join(cmd))
        self._save_state(pid=self.child.pid)
        if self.restarts:
            self._update_record(lambda s: setattr(s, "pid", self.child.pid if self.child else None))

    def _watch(self) -> float | None:
        """Until the child exits, the record is gone or no longer names this server (a replacement
        took over, or the deploy that started it died before recording it), or a stop is asked;
        returns when it was first healthy."""
        assert self.child is not None
        healthy_at: float | None = None
        checked = 0.0
        while self.child.poll() is None and not self.stopping:
            if time.monotonic() - checked >= RECORD_CHECK_S:
                checked = time.monotonic()
                why = self._unwanted()
                if why:
                    log.info("stopping the server: %s", why)
                    return healthy_at
            if healthy_at is None and _healthy(self.url):
                healthy_at = time.monotonic()
                self.ever_healthy = True
                self.healthy_since = self.healthy_since or healthy_at
                if self.restarts:
                    self._came_back()
            time.sleep(POLL_S)
        return healthy_at

    def _unwanted(self) -> str:
        """Why this supervisor should stop ("" while it is wanted)."""
        record = records.load(self.name)
        if not self.spec_path.exists() or (record is None and self.adopted):
            return f"workspace {self.name} is gone"
        if record is None:
            return ""
        if self._mine(record):
            self.adopted = True
            return ""
        if self.adopted:
            return "the workspace's record names another server now"
        if self.healthy_since is not None and time.monotonic() - self.healthy_since > ADOPT_S:
            return f"the deploy that started it did not record it within {ADOPT_S:.0f} s of its being healthy (it died?)"
        return ""

    def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop is asked (True) or the workspace is deleted."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stopping or not self.spec_path.exists():
                return True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return self.stopping

    def _stop_child(self) -> None:
        if self.child is None or self.child.poll() is not None:
            return
        self.child.send_signal(signal.SIGTERM)
        try:
            self.child.wait(15)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait(5)

    # -------------------------------------------------------------- state and record
    def _save_state(self, **fields: Any) -> None:
        path = state_path(self.spec_path)
        state = {**read_state(self.spec_path), "supervisor_pid": os.getpid(), "restarts": self.restarts, **fields}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def _recorded(self) -> bool:
        record = records.load(self.name)
        return record is not None and self._mine(record)

    def _mine(self, record: records.WorkspaceRecord) -> bool:
        return record.server is not None and record.server.supervisor_pid == os.getpid()

    def _update_record(self, fn: Any, conditions: Any = None) -> None:
        if not records.workspace_dir(self.name).joinpath("record.json").exists():
            return

        def apply(record: records.WorkspaceRecord) -> None:
            if not self._mine(record):
                return
            server = record.server.model_copy() if record.server else records.Server()
            fn(server)
            record.server = server
            if conditions:
                conditions(record)

        records.change(self.name, apply)

    def _current_adapters(self) -> list[records.ServedAdapter]:
        """What the record says this server serves (adapters rolled in since its start), else what it started with."""
        record = records.load(self.name)
        if record is not None and self._mine(record) and record.server is not None:
            return list(record.server.adapters)
        return self.adapters

    def _went_down(self, how: str, restart_in: float | None) -> None:
        seen = status.now()
        assert self.child is not None
        pid = self.child.pid
        self._save_state(pid=None, last_exit=how, down_since=seen)
        then = (f"restart {self.restarts} in {restart_in:.0f} s" if restart_in is not None
                else "stopped on purpose: not restarted; re-apply the workspace to serve again")
        message = f"server pid {pid} {how} at {seen}; {then}"

        def server_fields(s: records.Server) -> None:
            s.restarts, s.last_exit, s.down_since = self.restarts, how, seen

        def conditions(record: records.WorkspaceRecord) -> None:
            reason = "ServerCrashed" if restart_in is not None else "ServerStopped"
            record.conditions = status.set_condition(record.conditions, status.INFERENCE_READY, False, reason, message)
            ready = record.condition(status.WORKSPACE_READY)
            if ready and ready.get("status") == "True":
                record.conditions = status.set_condition(record.conditions, status.WORKSPACE_READY, False, DOWN_REASON,
                                                         f"inference is not ready: {message}")
            record.events = (record.events + [records.Event(time=seen, type="Warning", reason=reason, message=message)]
                             )[-records.MAX_EVENTS:]

        self._update_record(server_fields, conditions)

    def _came_back(self) -> None:
        assert self.child is not None
        pid, seen = self.child.pid, status.now()
        self._save_state(pid=pid, down_since=None)
        message = f"serving at {self.url} (pid {pid}, restarts {self.restarts})"

        def server_fields(s: records.Server) -> None:
            s.pid, s.restarts, s.down_since = pid, self.restarts, None

        def conditions(record: records.WorkspaceRecord) -> None:
            record.conditions = status.set_condition(record.conditions, status.INFERENCE_READY, True, "ServerRestarted", message)
            ready = record.condition(status.WORKSPACE_READY)
            if ready and ready.get("reason") == DOWN_REASON:
                record.conditions = status.set_condition(record.conditions, status.WORKSPACE_READY, True, "WorkspaceReady",
                                                         "everything the workspace asked for is up")
            record.events = (record.events + [records.Event(time=seen, reason="ServerRestarted", message=message)]
                             )[-records.MAX_EVENTS:]

        self._update_record(server_fields, conditions)
        log.info("server pid %d healthy again (restart %d)", pid, self.restarts)


_client: httpx.Client | None = None


def _healthy(url: str) -> bool:
    global _client
    if _client is None:  # one client for every poll: httpx.get would build a TLS context each time
        _client = httpx.Client(timeout=2)
    try:
        return _client.get(f"{url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.supervisor", description="Run and restart one local inference server.")
    p.add_argument("--spec", type=Path, required=True, help="the JSON file the deploy wrote (infra.supervisor.write_spec)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per health check
    return Supervisor(args.spec).run()


if __name__ == "__main__":
    raise SystemExit(main())
