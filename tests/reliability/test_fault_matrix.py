"""The fault matrix of one workspace's life, as a user meets it: ``kaiflow apply`` SIGKILLed while it
pulls the data, tunes, deploys and pushes; the registry down during a push and during a pull; two
applies of one workspace at once, and another workspace applied beside them.

Real parts only: the ``kaiflow`` command line, the session's Prefect server, Debian's
docker-registry, the dataset file server with fault injection, QLoRA on tiny-phi-3, supervised
inference servers. Each step asserts the end state, that nothing was lost (the endpoint answers
what it served before), and that the next apply did not wait on a slot of the dead one — by what
it says, not by a clock.

The steps run in order on one workspace (each builds on what the one before left); the module
stops at the first failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from infra import records, supervisor
from tests.reliability.conftest import KAIFLOW, get_row
from tests.support import fileserver
from tests.support import registry as registry_support
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "rel-matrix"
OTHER = "rel-matrix-other"
PAIRS = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "Shakespeare."),
         ("What colour is the sky?", "Blue."), ("Which planet is red?", "Mars.")]

# long enough to be killed after its first checkpoint (every 10 steps), short on a loaded 2-core machine
WORKSPACE = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config}}
data:
  training_config.yaml: |
    training_config:
      TrainingArguments:
        max_steps: 100
        logging_steps: 10
        save_steps: 10
---
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}
resource:
  instanceType: local
tuning:
  preset: {{name: tiny-phi-3}}
  method: qlora
  config: {name}-config
  input:
    urls: ["{url}"]
  output:
    image: "{registry}/adapters/{name}:1"
inference:
  preset: {{name: tiny-phi-3}}
"""

# inference only, serving the first workspace's adapter image by tag: its deploy pulls from the registry
WITH_ADAPTER = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}
resource:
  instanceType: local
inference:
  preset: {{name: tiny-phi-3}}
  adapters:
    - source:
        name: tuned
        image: "{image}"
      strength: "1.0"
"""


class Apply:
    """One ``kaiflow apply`` running in the background, its output in a file."""

    def __init__(self, path: Path, out: Path, env: dict[str, str]) -> None:
        self.out = out
        self.file = open(out, "w")
        self.proc = subprocess.Popen([KAIFLOW, "apply", "-f", str(path)], env=env, stdout=self.file,
                                     stderr=subprocess.STDOUT, text=True)

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def kill_when(self, ready, what: str, timeout: float = 300) -> list[int]:
        """SIGKILL the apply (only it: as the OOM killer would) once ``ready()``; returns its children's PIDs."""
        wait_for(lambda: ready() or self.proc.poll() is not None, timeout, what)
        assert self.proc.poll() is None, f"the apply ended before {what}:\n{self.output}"
        children = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.file.close()
        return children

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        self.file.close()
        return rc, self.output



def ask(endpoint: str, question: str) -> str:
    r = httpx.post(f"{endpoint}/chat", json={"messages": [{"role": "user", "content": question}],
                                             "generate_kwargs": {"max_new_tokens": 16}}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["Result"].strip()


def events(name: str, reason: str) -> int:
    rec = records.load(name)
    return sum(e.reason == reason for e in rec.events) if rec else 0


def supervisors_of(name: str) -> list[int]:
    """PIDs of the supervisors running for ``name`` in this session's KAIFLOW_HOME."""
    wdir = str(records.workspace_dir(name)) + "/"  # not another workspace whose name starts with this one
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if supervisor.MARKER in line and wdir in line:
            found.append(p.info["pid"])
    return found


def all_gone(pids: list[int]) -> bool:
    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return all(gone(p) for p in pids)


def released_stale_slot(output: str) -> bool:
    """The apply freed the dead one's workspace slot itself, and never waited for it."""
    return (f"released the concurrency limit 'workspace-{NAME}' held by workspace {NAME}" in output
            and "waits for the concurrency limit" not in output)


def flow_run_state(run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type.value


@pytest.fixture(scope="module")
def matrix(prefect_api, tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("matrix")
    registry_support.require_binaries()
    reg = registry_support.LocalRegistry(base / "registry").start()
    files = fileserver.FileServer(base / "www").start()
    fileserver.write_qa_jsonl(files.root / "qa.jsonl", PAIRS)
    ws = base / "ws.yaml"
    ws.write_text(WORKSPACE.format(name=NAME, url=files.url_for("qa.jsonl"), registry=reg.host))
    env = {**os.environ, "KAIFLOW_ENGINE": "transformers", "KAIFLOW_ALLOW_PRIVATE_URLS": "true",
           "KAIFLOW_RETRY_BACKOFF_S": "0.2", "KAIFLOW_REGISTRY_ATTEMPTS": "2", "KAIFLOW_REGISTRY_BACKOFF_S": "0.2",
           "KAIFLOW_GPU_WAIT_S": "240", "OMP_NUM_THREADS": "1"}
    state = {"base": base, "registry": reg, "files": files, "ws": ws, "env": env, "n": 0}

    def apply(path: Path | None = None) -> Apply:
        state["n"] += 1
        return Apply(path or ws, base / f"apply-{state['n']}.log", env)

    state["apply"] = apply
    yield state
    for name in (NAME, OTHER):
        subprocess.run([KAIFLOW, "delete", "workspace", name], env=env, capture_output=True, timeout=120)
    files.stop()
    reg.stop()


def adapter_checkpoint() -> bool:
    return any((records.root().parent / "adapters").glob("*.checkpoints/checkpoint-*/trainer_state.json"))


def test_1_killed_while_pulling_the_data_then_killed_while_tuning(matrix):
    files = matrix["files"]
    files.fail("qa.jsonl", fileserver.STATUS, status=503, times=None)  # the data server is failing: the pull retries
    first = matrix["apply"]()
    first.kill_when(lambda: files.hits("qa.jsonl") >= 2, "the dataset pull retrying")
    files._faults.pop("/qa.jsonl")  # the data server is well again (tests.support.fileserver keeps faults per path)
    assert not (records.root().parent / "datasets" / NAME / "qa.jsonl").exists()  # no half file taken for data

    second = matrix["apply"]()
    children = second.kill_when(adapter_checkpoint, "the first tuning checkpoint")
    assert released_stale_slot(second.output), second.output  # the pull's slot, freed at once
    # the tuning program died with the apply (PR_SET_PDEATHSIG): nobody writes the checkpoints now
    assert wait_for(lambda: all_gone(children), 30, "the tuning program dying with its apply")
    killed_run = records.load(NAME).last_flow_run
    assert killed_run


def test_2_the_next_apply_resumes_tuning_and_is_killed_while_deploying(matrix):
    killed_run = records.load(NAME).last_flow_run
    third = matrix["apply"]()
    wdir = records.workspace_dir(NAME)
    third.kill_when(lambda: any(wdir.glob("server-*.json")), "the deploy starting a server")
    assert released_stale_slot(third.output), third.output  # no wait on the slots the killed tuning held
    assert "resuming from" in (wdir / "tuning.log").read_text()  # tuning continued from its checkpoint
    assert flow_run_state(killed_run) == "CRASHED"  # the killed run is not left "Running" forever
    assert events(NAME, "TuningCompleted") == 1
    orphans = wait_for(lambda: supervisors_of(NAME), 30, "the orphaned server's supervisor")

    fourth = matrix["apply"]()
    rc, out = fourth.finish()
    assert rc == 0, out
    assert released_stale_slot(out), out
    assert "tuning [" not in out  # the adapter the killed apply finished was reused
    assert all_gone(orphans) and len(supervisors_of(NAME)) == 1  # the orphan stopped; one server
    rec = records.load(NAME)
    assert get_row(NAME)[2:5] == ["True", "True", "True"]
    assert rec.adapter_image.startswith(matrix["registry"].host)
    assert {q: ask(rec.endpoint, q) for q, _ in PAIRS} == dict(PAIRS)


def test_3_registry_down_while_pushing_killed_then_a_clear_error(matrix):
    reg = matrix["registry"]
    before = records.load(NAME)
    reg.stop()  # even an unchanged adapter's push asks the registry what it holds
    try:
        killed = matrix["apply"]()
        killed.kill_when(lambda: "Retry" in killed.output and "push-adapter" in killed.output,
                         "a retried push to the stopped registry", timeout=300)
        assert ask(before.endpoint, "Which planet is red?") == "Mars."  # the endpoint serves on

        failing = matrix["apply"]()
        rc, out = failing.finish()
        assert rc == 1, out
        assert released_stale_slot(out), out
        assert "Retry" in out and reg.host in out and "Traceback" not in out, out  # retried, then said clearly
        after = records.load(NAME)
        assert after.adapter_image == before.adapter_image and after.server.pid == before.server.pid
        assert ask(before.endpoint, "Which planet is red?") == "Mars."
        assert get_row(NAME)[3] == "True"  # the old endpoint still serves: InferenceReady stays True
    finally:
        reg.start()  # the applies of the next step succeed with it back


def test_4_two_applies_of_one_workspace_take_turns_beside_another_workspace(matrix):
    base = matrix["base"]
    other = base / "other.yaml"
    image = f"{matrix['registry'].host}/adapters/{NAME}:1"
    other.write_text(WITH_ADAPTER.format(name=OTHER, image=image))
    before = records.load(NAME)
    # the first apply is slowed in its data pull (the data server fails 4 times: ~7 s of retries)
    # while it holds the workspace's slot, so the second one surely comes while it is held
    matrix["files"].fail("qa.jsonl", fileserver.STATUS, status=503, times=4)
    first, beside = matrix["apply"](), matrix["apply"](other)
    slots = records.root().parent / "slots"
    wait_for(lambda: any(f"workspace-{NAME}" in p.read_text() for p in slots.glob("*.json")), 120,
             "the first apply holding the workspace's slot")
    runs = [first, matrix["apply"](), beside]
    results = [r.finish() for r in runs]
    assert all(rc == 0 for rc, _ in results), results
    same = [out for rc, out in results[:2]]
    assert sum(f"waits for the concurrency limit 'workspace-{NAME}'" in out for out in same) >= 1, same  # said why
    rec = records.load(NAME)
    assert rec.adapter_image == before.adapter_image and rec.server.pid == before.server.pid  # consistent
    assert len(supervisors_of(NAME)) == 1
    theirs = records.load(OTHER)
    assert ask(rec.endpoint, "Which planet is red?") == "Mars."
    assert ask(theirs.endpoint, "Which planet is red?") == "Mars."  # the other workspace serves the same adapter
    assert get_row(NAME)[3:5] == ["True", "True"] and get_row(OTHER)[3:5] == ["True", "True"]


def test_5_registry_down_while_pulling_is_retried_then_a_clear_error_and_the_old_endpoint_serves(matrix):
    reg = matrix["registry"]
    other = matrix["base"] / "other.yaml"
    before = records.load(OTHER)
    reg.stop()
    try:
        rc, out = matrix["apply"](other).finish()
    finally:
        reg.start()
    assert rc == 1, out
    assert reg.host in out and "Traceback" not in out and "Retry" in out, out
    cond = records.load(OTHER).condition("InferenceReady")
    assert cond["reason"] == "AdapterPullFailed" and reg.host in cond["message"]
    after = records.load(OTHER)
    assert after.server.pid == before.server.pid
    assert ask(before.endpoint, "Which planet is red?") == "Mars."
