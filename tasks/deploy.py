"""Deploy inference on the local platform: a detached ``python -m serving`` process (InferenceReady).

If the workspace's server is already running the same base model, adapters are rolled in place
through its ``/v1/load_lora_adapter`` endpoint (requests in flight finish on the old weights; the
endpoint never goes down); an unchanged adapter (same image digest) is left alone. Otherwise a new
server starts, and only once it is healthy does it replace the old one, so a failed deploy leaves
the previous endpoint serving.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact

from infra import local_process, local_state, registry
from tasks.common import artifact_key, task_options
from tasks.push import credentials_for
from workspace import settings, spec, status
from workspace.errors import DeploymentError, RegistryError

MARKER = "-m serving"


def _pull_adapter(name: str, reference: str, secret: str | None) -> tuple[str, str]:
    """Pull an adapter image into the workspace's folder (once per digest); returns (dir, digest)."""
    adapters = local_state.workspace_dir(name) / "adapters"
    resolved = registry.store_for(reference).resolve(registry.qualify(reference)) if "@" not in reference else reference.rsplit("@", 1)[1]
    if resolved:
        target = adapters / resolved.replace(":", "-")[:24]
        if (target / "adapter_config.json").exists():
            return str(target), resolved
    tmp = adapters / ".pulling"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    result = registry.pull(reference, tmp, credentials=credentials_for(secret))
    target = adapters / result.digest.replace(":", "-")[:24]
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return str(target), result.digest


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _start(name: str, model: str, adapters: list[dict], config_text: str | None) -> dict:
    s = settings.load()
    port = local_process.free_port(s.serve_host)
    wdir = local_state.workspace_dir(name)
    cmd = [sys.executable, "-m", "serving", "--model", model, "--host", s.serve_host, "--port", str(port),
           "--engine", s.engine, "--served-model-name", model]
    for a in adapters:
        cmd += ["--adapter", f"{a['name']}={a['dir']}:{a['strength']}"]
    if config_text:
        cfg = wdir / "inference_config.yaml"
        cfg.write_text(config_text)
        cmd += ["--config", str(cfg)]
    log_path = wdir / "server.log"
    pid = local_process.start(cmd, log_path=log_path, pidfile=wdir / f"server-{port}.pid")
    url = f"http://{s.serve_host}:{port}"
    try:
        local_process.wait_healthy(f"{url}/health", pid=pid, marker=MARKER, timeout=s.health_timeout_s, log_path=log_path)
    except (RuntimeError, TimeoutError) as exc:
        local_process.stop(pid, MARKER)
        raise DeploymentError(f"inference server for {name} did not become healthy: {exc}", reason="ServerNotHealthy") from None
    return {"pid": pid, "endpoint": url, "port": port}


@task(name="deploy-inference", **task_options())
def deploy(workspace: spec.Workspace, fresh: dict | None, config_maps: dict[str, dict[str, str]], platform: str = "local") -> dict:
    """``fresh``: the adapter image just pushed by this run ({"reference", "digest"}), if any."""
    if platform != "local":  # a StatefulSet + Service on the workspace's GPU nodes
        from infra.kube import platform as kube_platform

        return kube_platform.deploy(workspace, fresh, config_maps, platform)
    log = get_run_logger()
    name = workspace.name
    model = workspace.inference.preset.name
    wanted: list[dict] = []
    for a in workspace.effective_adapters():
        image = a.source.image
        if fresh and workspace.tuning and image == workspace.tuning.output.image:
            image = fresh["reference"]
        secret = (a.source.image_pull_secrets or [None])[0]
        try:
            adir, digest = _pull_adapter(name, image, secret)
        except RegistryError as exc:
            local_state.set_condition(name, status.INFERENCE_READY, False, "AdapterPullFailed", str(exc))
            raise
        wanted.append({"name": a.source.name, "dir": adir, "digest": digest, "strength": a.strength_value, "image": image})

    config_text = None
    if workspace.inference.config:
        cm = config_maps.get(workspace.inference.config) or {}
        config_text = cm.get("inference_config.yaml")

    record = local_state.load(name) or {}
    server = record.get("server") or {}
    same = (server.get("model") == model and server.get("config") == config_text
            and local_process.alive(server.get("pid"), MARKER) and _healthy(server.get("endpoint", "")))
    if same:
        current = {a["name"]: a for a in server.get("adapters", [])}
        for a in wanted:
            old = current.get(a["name"])
            if old and old["digest"] == a["digest"] and old["strength"] == a["strength"]:
                continue
            r = httpx.post(f"{server['endpoint']}/v1/load_lora_adapter",
                           json={"lora_name": a["name"], "lora_path": a["dir"], "strength": a["strength"]}, timeout=120)
            if r.status_code >= 300:
                raise DeploymentError(f"rolling adapter {a['name']} into the running server failed: {r.status_code} {r.text[:300]}")
            log.info("rolled adapter %s to %s without restarting the server", a["name"], a["digest"][:19])
            local_state.add_event(name, "AdapterRolled", f"{a['name']} -> {a['digest'][:19]}")
        for gone in set(current) - {a["name"] for a in wanted}:
            httpx.post(f"{server['endpoint']}/v1/unload_lora_adapter", json={"lora_name": gone}, timeout=60)
        server["adapters"] = wanted
    else:
        started = _start(name, model, wanted, config_text)
        old_pid = server.get("pid")
        server = {**started, "model": model, "config": config_text, "adapters": wanted}
        if old_pid and old_pid != started["pid"]:
            local_process.stop(old_pid, MARKER)
        log.info("inference server for %s at %s (pid %s)", name, started["endpoint"], started["pid"])
        local_state.add_event(name, "ServerStarted", f"{started['endpoint']} pid {started['pid']}")
    local_state.update(name, server=server, endpoint=server["endpoint"])
    local_state.set_condition(name, status.INFERENCE_READY, True, "InferenceServerReady", f"serving at {server['endpoint']}")
    create_link_artifact(f"{server['endpoint']}/v1/models", link_text=f"{name} endpoint", key=artifact_key(name, "endpoint"))
    return {"endpoint": server["endpoint"], "pid": server["pid"],
            "adapters": [{k: a[k] for k in ("name", "digest", "strength")} for a in wanted]}
