"""The main job end to end on one machine, as a user runs it: the real ``kaiflow`` CLI, the real
background Prefect server it starts, Debian's docker-registry, a real HTTP dataset server, real
QLoRA on tiny-phi-3 and the real inference server, reached over HTTP (and with the openai client).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import fileserver
from tests.support import registry as registry_support

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KAIFLOW = str(Path(sys.executable).parent / "kaiflow")
PAIRS = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "Shakespeare."),
         ("What colour is the sky?", "Blue."), ("Which planet is red?", "Mars.")]

WORKSPACE = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}
resource:
  instanceType: local
tuning:
  preset: {{name: tiny-phi-3}}
  method: qlora
  input:
    urls: ["{url}"]
  output:
    image: "adapters/{name}:1"
inference:
  preset: {{name: tiny-phi-3}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    reg = registry_support.LocalRegistry(base / "registry").start()
    srv = fileserver.FileServer(base / "www")
    srv.__enter__()
    e = {**os.environ, "KAIFLOW_HOME": str(base / "home"), "KAIFLOW_REGISTRY": reg.host,
         "KAIFLOW_ALLOW_PRIVATE_URLS": "true", "KAIFLOW_ENGINE": "transformers", "KAIFLOW_RETRY_BACKOFF_S": "2",
         "KAIFLOW_REGISTRY_ATTEMPTS": "2", "KAIFLOW_REGISTRY_BACKOFF_S": "0.2"}
    e.pop("PREFECT_API_URL", None)
    yield {"base": base, "env": e, "registry": reg, "files": srv}
    subprocess.run([sys.executable, "-c", "from flows import prefect_server; prefect_server.stop()"], env=e, timeout=60)
    srv.__exit__(None, None, None)
    reg.stop()


def kaiflow(env, *args, timeout=600):
    return subprocess.run([KAIFLOW, *args], env=env["env"], capture_output=True, text=True, timeout=timeout)


def record(env, name):
    return json.loads((Path(env["env"]["KAIFLOW_HOME"]) / "workspaces" / name / "record.json").read_text())


def ask(endpoint, q):
    r = httpx.post(f"{endpoint}/chat", json={"messages": [{"role": "user", "content": q}], "generate_kwargs": {"max_length": 64}}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["Result"].strip()


def test_apply_reapply_change_delete(env, tmp_path):
    fileserver.write_qa_jsonl(env["files"].root / "qa.jsonl", PAIRS)
    ws = tmp_path / "ws.yaml"
    ws.write_text(WORKSPACE.format(name="e2e-tune-serve", url=env["files"].url_for("qa.jsonl")))

    r = kaiflow(env, "apply", "-f", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tuning [" in r.stderr and "endpoint http://127.0.0.1:" in r.stdout

    got = kaiflow(env, "get", "workspaces")
    assert got.stdout.split("\n")[0].split() == ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]
    assert got.stdout.split("\n")[1].split()[:5] == ["e2e-tune-serve", "local", "True", "True", "True"]

    rec = record(env, "e2e-tune-serve")
    endpoint, pid, image = rec["endpoint"], rec["server"]["pid"], rec["adapter_image"]
    assert image.startswith(env["registry"].host + "/adapters/e2e-tune-serve@sha256:")
    # the image really is in the registry, under its tag, with Kaito's annotation
    m = httpx.get(f"{env['registry'].url}/v2/adapters/e2e-tune-serve/manifests/1",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert m["annotations"]["sh.kaito.model.name"] == "tiny-phi-3"

    for q, a in PAIRS:
        assert ask(endpoint, q) == a
    from openai import OpenAI

    client = OpenAI(base_url=f"{endpoint}/v1", api_key="unused")
    out = client.chat.completions.create(model="e2e-tune-serve", messages=[{"role": "user", "content": PAIRS[1][0]}],
                                         max_tokens=16, temperature=0)
    assert out.choices[0].message.content.strip() == PAIRS[1][1]

    # re-apply, unchanged: no tuning, same digest, same server
    tunings = sum(e["reason"] == "TuningStarted" for e in rec["events"])
    r = kaiflow(env, "apply", "-f", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    rec2 = record(env, "e2e-tune-serve")
    assert sum(e["reason"] == "TuningStarted" for e in rec2["events"]) == tunings
    assert rec2["adapter_image"] == image and rec2["server"]["pid"] == pid

    # change the data: retrain, new digest, rolled into the same server (no restart)
    changed = [(q, "Venus." if a == "Mars." else a) for q, a in PAIRS]
    fileserver.write_qa_jsonl(env["files"].root / "qa.jsonl", changed)
    r = kaiflow(env, "apply", "-f", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    rec3 = record(env, "e2e-tune-serve")
    assert rec3["adapter_image"] != image and rec3["server"]["pid"] == pid
    assert any(e["reason"] == "AdapterRolled" for e in rec3["events"])
    assert ask(endpoint, "Which planet is red?") == "Venus."

    # a re-apply that fails midway (the data is gone) keeps the endpoint, the server and the image
    (env["files"].root / "qa.jsonl").unlink()
    r = kaiflow(env, "apply", "-f", str(ws))
    assert r.returncode == 1 and "404" in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr
    rec4 = record(env, "e2e-tune-serve")
    assert rec4["adapter_image"] == rec3["adapter_image"] and rec4["server"]["pid"] == pid
    assert ask(endpoint, "Which planet is red?") == "Venus."
    fileserver.write_qa_jsonl(env["files"].root / "qa.jsonl", changed)

    d = kaiflow(env, "describe", "workspace", "e2e-tune-serve")
    assert rec3["adapter_image"] in d.stdout and "InferenceReady" in d.stdout

    r = kaiflow(env, "delete", "workspace", "e2e-tune-serve")
    assert r.returncode == 0 and f"pid {pid} stopped" in r.stdout
    assert not Path(f"/proc/{pid}").exists() or "serving" not in Path(f"/proc/{pid}/cmdline").read_text()
    assert "e2e-tune-serve" not in kaiflow(env, "get", "workspaces").stdout


def test_registry_outage_during_push_is_retried(env, tmp_path):
    fileserver.write_qa_jsonl(env["files"].root / "qa2.jsonl", PAIRS[:2])
    ws = tmp_path / "ws.yaml"
    ws.write_text(WORKSPACE.format(name="e2e-retry", url=env["files"].url_for("qa2.jsonl")))
    env["registry"].stop()
    proc = subprocess.Popen([KAIFLOW, "apply", "-f", str(ws)], env={**env["env"], "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # unbuffered: lines as they come
    rec_path = Path(env["env"]["KAIFLOW_HOME"]) / "workspaces" / "e2e-retry" / "record.json"
    lines: list[str] = []
    push_failed = threading.Event()

    def read_output() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Retry 1/" in line:  # Prefect's line once the push task failed against the stopped registry
                push_failed.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    # the event, not a sleep: the registry comes back only after a push really failed (the bound catches a hang)
    assert push_failed.wait(600), "".join(lines)
    env["registry"].start()
    proc.wait(timeout=300)
    reader.join(60)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "Retry 1/" in out  # Prefect retried the push task after the transient failure
    rec = json.loads(rec_path.read_text())
    assert rec["adapter_image"].startswith(env["registry"].host)
    kaiflow(env, "delete", "workspace", "e2e-retry")


def test_preset_that_cannot_run_here_fails_fast_with_the_reason(env, tmp_path):
    seed = Path(__file__).resolve().parents[2] / "examples" / "seed" / "workspace-phi-3-mini.yaml"
    r = kaiflow(env, "apply", "--platform", "local", "-f", str(seed))
    assert r.returncode == 1
    assert "needs a GPU" in r.stderr and "Traceback" not in r.stderr
    got = kaiflow(env, "get", "workspaces").stdout
    assert "workspace-phi-3-mini" in got and "False" in got
