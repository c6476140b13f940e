"""``make demo``: the main job on one CPU machine, end to end.

Serves ``examples/local/data`` over HTTP on 127.0.0.1:8765 (a detached file server), applies
``examples/local/tune-and-serve.yaml`` (QLoRA-tune tiny-phi-3 on those question/answer pairs, push
the adapter image, serve it), lists the workspaces, then asks the endpoint every training question
through ``/chat`` and the OpenAI API and shows whether it answers as the data taught it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

from infra import local_process
from workspace import settings

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "local" / "data"
WORKSPACE = REPO / "examples" / "local" / "tune-and-serve.yaml"
PORT = 8765


def _served(url: str) -> bytes | None:
    try:
        resp = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return resp.content if resp.status_code == 200 else b""


def serve_data() -> None:
    """Serve DATA on PORT, reusing a server that already serves these very files."""
    url = f"http://127.0.0.1:{PORT}/qa.jsonl"
    if _served(url) == (DATA / "qa.jsonl").read_bytes():
        return
    home = settings.load().home_dir / "demo"
    home.mkdir(parents=True, exist_ok=True)
    pidfile = home / "data-server.pid"
    # the data server an earlier demo started (from another or a since-moved checkout) serves other
    # files, or none: replace it. A port held by anything else is the user's to free.
    local_process.stop_recorded(pidfile, marker="http.server")
    if _served(url) is not None:
        raise SystemExit(f"make demo: port {PORT} on 127.0.0.1 is in use by another program (not the demo's data "
                         f"server); the demo serves its training data there: stop that program and run it again")
    pid = local_process.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(DATA), str(PORT)],
                              log_path=home / "data-server.log", pidfile=pidfile)
    local_process.wait_healthy(url, pid=pid, marker="http.server", timeout=20)


def stop_data_server() -> bool:
    """Stop the data server a demo started (recorded in KAIFLOW_HOME/demo); True if one was running."""
    return local_process.stop_recorded(settings.load().home_dir / "demo" / "data-server.pid", marker="http.server")


def cmd_demo(args=None) -> int:
    from flows import cli

    os.environ["KAIFLOW_ALLOW_PRIVATE_URLS"] = "true"
    serve_data()
    print(f"$ kaiflow apply -f {WORKSPACE.relative_to(REPO)}", flush=True)
    try:
        rc = cli.main(["apply", "-f", str(WORKSPACE)])
    finally:
        # the data is pulled (and cached by digest) once the apply is past its first steps: nothing
        # needs the server after it, and a demo should not leave a port taken behind it
        stop_data_server()
    if rc:
        return rc
    print("\n$ kaiflow get workspaces")
    cli.main(["get", "workspaces"])
    from infra import records

    endpoint = records.load("tiny-tune-and-serve").endpoint
    pairs = [json.loads(line)["messages"] for line in (DATA / "qa.jsonl").read_text().splitlines() if line.strip()]
    print(f"\nAsking {endpoint} what the training data taught (POST /chat, then /v1/chat/completions):")
    right = 0
    for messages in pairs:
        q, want = messages[0]["content"], messages[-1]["content"]
        got = httpx.post(f"{endpoint}/chat", json={"messages": [{"role": "user", "content": q}], "generate_kwargs": {"max_length": 64}}, timeout=60).json()["Result"]
        ok = got.strip().startswith(want)
        right += ok
        print(f"  {'✓' if ok else '✗'} {q!r:42} -> {got.strip()!r} (taught {want!r})")
    chat = httpx.post(f"{endpoint}/v1/chat/completions", timeout=60, json={
        "model": "tiny-tune-and-serve", "messages": [{"role": "user", "content": pairs[0][0]["content"]}], "max_tokens": 16,
        "temperature": 0}).json()
    print(f"  OpenAI API, model tiny-tune-and-serve: {chat['choices'][0]['message']['content']!r}")
    print(f"\n{right}/{len(pairs)} answers as taught. Try: .venv/bin/kaiflow chat tiny-tune-and-serve \"{pairs[0][0]['content']}\"")
    print(closing_text(endpoint))
    return 0 if right == len(pairs) else 1


def closing_text(endpoint: str | None) -> str:
    """What the demo leaves running, and how to stop each."""
    from flows import prefect_server

    api = os.environ.get("PREFECT_API_URL")  # set by the apply once it found or started a server
    lines = ["", "Left running:",
             f"  the inference server at {endpoint}: stop it with .venv/bin/kaiflow delete workspace tiny-tune-and-serve"]
    if api and prefect_server.database() is not None:  # a server kaiflow started (not the user's own)
        lines.append(f"  a Prefect server (UI {api.removesuffix('/api')}) that records the runs: "
                     "stop it with .venv/bin/kaiflow server --stop")
    lines.append(f"The demo's data server on 127.0.0.1:{PORT} is stopped (make demo starts it again).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cmd_demo())
