"""The local platform: everything on this machine, no cluster, no cloud (the embedded default).

    provision      check this machine (its GPUs or CPU, its memory) against the plan
    fetch_dataset  pull ``tuning.input`` into KAIFLOW_HOME/datasets/<name> and fingerprint it
    tune           run ``python -m tuning`` as a child process; the adapter lands in
                   KAIFLOW_HOME/adapters/<cache key>, reused when its COMPLETE marker exists
    publish        push the adapter as a Kaito-layout OCI image (a registry, or the OCI layout
                   under KAIFLOW_HOME when the reference names none)
    evaluate       run ``python -m tuning.evaluate`` on the held-out rows
    deploy         a detached supervisor (``python -m infra.supervisor``) running ``python -m serving``
                   and restarting it when it crashes; adapters rolled into a running server of the
                   same model through ``/v1/load_lora_adapter`` (no restart, no gap), otherwise a new
                   supervised server that replaces the old one only once it is healthy
    teardown       stop the supervisor and its server; logs: its log files
    describe       the record, refreshed from what runs: a server that is not running (or does not
                   answer ``/health``) shows InferenceReady False, with why and since when

The tuning and evaluation programs speak the protocol in ``tuning.protocol``: progress lines, an
``error:`` line, exit status 2 for bad input, the COMPLETE marker and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from infra import datasets, local_process, records, registry, supervisor
from infra.platforms.base import Dataset, Endpoint, Image, PartSummary, Provisioned, Scores, Teardown, Tuned
from tuning import protocol
from workspace import configmaps
from workspace import plan as plan_mod
from workspace import settings, spec, status
from workspace.errors import DeploymentError, KaiflowError, RegistryError, SizingError, SpecError, TuningError

log = logging.getLogger(__name__)
SERVING_MARKER = "-m serving"


class LocalPlatform:
    name = "local"
    runs_inferencesets = False  # one server process per workspace here: N replicas would split one machine
    runs_in_image = False  # the steps are processes of this machine

    # ------------------------------------------------------------------ shared
    def reporter(self, ws: spec.Workspace) -> status.Reporter:
        return records.RecordSink(ws.name)

    def plan(self, ws: spec.Workspace, config_maps: dict[str, dict[str, str]] | None = None) -> plan_mod.WorkspacePlan:
        return plan_mod.plan_workspace(ws, self.name, on_host=True, config_maps=config_maps)

    def sku(self, ws: spec.Workspace) -> str:
        return "local"

    # ------------------------------------------------------------------ provision
    def provision(self, ws: spec.Workspace, report: status.Reporter,
                  config_maps: dict[str, dict[str, str]] | None = None) -> Provisioned:
        p = self.plan(ws, config_maps)
        for part in p.parts:
            log.info("plan %s: %s on %s: %s", part.part, part.model, p.instance_type, part.summary)
        if not p.fits:
            msg = "; ".join(p.problems())
            report.condition(status.RESOURCE_READY, False, SizingError.reason, msg)
            raise SizingError(f"workspace {ws.name}: {msg}")
        report.condition(status.RESOURCE_READY, True, "LocalMachineReady", f"this machine can run the plan ({p.instance_type})")
        return Provisioned(instance=p.instance_type,
                           parts=[PartSummary(part=x.part, model=x.model, summary=x.summary) for x in p.parts])

    # ------------------------------------------------------------------ data
    def fetch_dataset(self, ws: spec.Workspace, report: status.Reporter) -> Dataset:
        dest = settings.load().home_dir / "datasets" / ws.name
        fp = datasets.pull(ws.tuning.input, dest)  # urls, image or a hostPath volume
        return dataset_result(fp, dest, report)

    # ------------------------------------------------------------------ tuning
    def tune(self, ws: spec.Workspace, dataset: Dataset, config_maps: dict[str, dict[str, str]],
             cache_key: str, report: status.Reporter, *, candidate: bool = False) -> Tuned:
        from tuning import config as tuning_config

        name, t = ws.name, ws.tuning
        model, method = t.preset.name, t.method
        out = settings.load().home_dir / "adapters" / cache_key[:24]
        if (out / protocol.COMPLETE).exists():
            log.info("adapter for this data and config already exists (%s): no tuning needed", cache_key[:12])
            metrics = _metrics(out)
            return Tuned(cache_key=cache_key, reused=True, steps=metrics.get("steps"), adapter_dir=str(out))
        report.condition(status.JOB_STARTED, True, "TuningJobStarted", f"{method} tuning of {model} started")
        report.event("TuningStarted", f"{method} on {model}, data {dataset.digest[:19]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        raw = configmaps.training_config(ws, config_maps)
        log_path = records.workspace_dir(name) / "tuning.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with _config_file({"training_config": tuning_config.sections_of(raw)}) as cfg_path:  # Kaito's file is wrapped already
            cmd = [sys.executable, "-m", "tuning", "--config", cfg_path, "--data", str(dataset.dir), "--model", model,
                   "--output", str(out), "--method", method]
            rc, last_error = _run_reporting_progress(cmd, log_path)
        if rc != 0 or not (out / protocol.COMPLETE).exists():
            msg = last_error or f"tuning program exited with status {rc}; see `kaiflow logs {name} --tuning`"
            report.condition(status.JOB_STARTED, False, "TuningFailed", msg)
            raise TuningError(f"tuning {name}: {msg}")
        metrics = _metrics(out)
        losses = metrics.get("loss") or []
        report.condition(status.JOB_STARTED, True, "TuningCompleted",
                         f"{metrics.get('steps')} steps, final loss {losses[-1][1]:.4f}" if losses else "done")
        report.event("TuningCompleted", f"adapter {cache_key[:12]} in {metrics.get('wall_seconds', 0):.1f} s")
        report_dataset_rows(metrics, report)
        return Tuned(cache_key=cache_key, reused=False, steps=metrics.get("steps"), adapter_dir=str(out), metrics=metrics)

    def publish(self, ws: spec.Workspace, tuned: Tuned, report: status.Reporter) -> Image:
        out = ws.tuning.output
        if out.image is None:
            raise RegistryError("tuning.output.volumeSource is not supported on the local platform yet; use tuning.output.image")
        secret = out.image_push_secret
        creds = registry.for_secret(secret)
        try:
            pinned = registry.push_adapter(Path(str(tuned.adapter_dir)), out.image, model_name=ws.tuning.preset.name,
                                           credentials=creds)
        except RegistryError as exc:
            if secret and not creds:
                exc.message += f" (imagePushSecret '{secret}' was not found under KAIFLOW_HOME/secrets/{secret}/)"
            raise
        except OSError as exc:  # the OCI layout's disk (full, read-only): say where, not a traceback
            where = exc.filename or registry.qualify(out.image)
            raise RegistryError(f"pushing the adapter image {out.image}: {exc.strerror or exc} ({where}); "
                                "free space there (or point KAIFLOW_OCI_LAYOUT_ROOT elsewhere) and apply again; "
                                "images pushed before are intact") from None
        log.info("adapter image %s", pinned)
        report.event("AdapterPushed", pinned)
        return Image.pinned(pinned)

    # ------------------------------------------------------------------ retrain
    def evaluate(self, ws: spec.Workspace, dataset: Dataset, config_maps: dict[str, dict[str, str]],
                 serving_image: str, candidate: Tuned, report: status.Reporter) -> Scores:
        from tuning import config as tuning_config

        name, t = ws.name, ws.tuning
        sections = tuning_config.sections_of(configmaps.training_config(ws, config_maps))
        adapters = {"serving": self._serving_adapter_dir(ws, serving_image), "candidate": str(candidate.adapter_dir)}
        wdir = records.workspace_dir(name)
        wdir.mkdir(parents=True, exist_ok=True)
        out = wdir / "evaluation.json"
        out.unlink(missing_ok=True)
        with _config_file({"training_config": sections or {}}) as cfg_path:
            cmd = [sys.executable, "-m", "tuning.evaluate", "--model", t.preset.name, "--data", str(dataset.dir),
                   "--config", cfg_path, "--method", t.method, "--output", str(out)]
            for adapter, path in adapters.items():
                cmd += ["--adapter", f"{adapter}={path}"]
            log.info("running: %s", " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                  preexec_fn=local_process.die_with_parent())
        (wdir / "evaluation.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not out.exists():
            last = next((line for line in reversed(proc.stderr.splitlines()) if line.startswith(protocol.ERROR_PREFIX)), "")
            msg = f"evaluating adapters of {name}: {last or f'program exited with status {proc.returncode}'}"
            if proc.returncode == protocol.EXIT_BAD_INPUT:
                raise SpecError(msg + f" (tuning.config {t.config or '(preset defaults)'})")
            raise TuningError(msg + f"; see {wdir / 'evaluation.log'}", reason="EvaluationFailed")
        return Scores.model_validate(json.loads(out.read_text()))

    def _serving_adapter_dir(self, ws: spec.Workspace, image: str) -> str:
        """A local folder holding the adapter ``image`` (the one the workspace serves), pulled if need be."""
        record = records.load(ws.name)
        digest = image.rsplit("@", 1)[-1]
        for a in (record.server.adapters if record and record.server else []):
            if a.digest == digest and a.dir and (Path(a.dir) / "adapter_config.json").exists():
                return a.dir
        target = records.workspace_dir(ws.name) / "retrain" / digest.replace(":", "-")[:24]
        if not (target / "adapter_config.json").exists():
            tmp = target.with_name(target.name + ".pulling")
            shutil.rmtree(tmp, ignore_errors=True)
            registry.pull(image, tmp, credentials=registry.for_secret(ws.tuning.output.image_push_secret))
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        return str(target)

    def promote(self, ws: spec.Workspace, candidate: Tuned, report: status.Reporter) -> Image:
        return self.publish(ws, candidate, report)

    # ------------------------------------------------------------------ inference
    def deploy(self, ws: spec.Workspace, image: Image | None, config_maps: dict[str, dict[str, str]],
               report: status.Reporter) -> Endpoint:
        name = ws.name
        model = ws.inference.preset.name
        wanted: list[records.ServedAdapter] = []
        for i, a in enumerate(ws.effective_adapters()):
            if a.source.volume_source is not None:  # Kaito #1877: the adapter's files on a volume
                adir, digest = _volume_adapter(a.source.volume_source.to_dict(), f"inference.adapters[{i}].source.volumeSource")
                wanted.append(records.ServedAdapter(name=a.source.name, dir=adir, digest=digest, strength=a.strength_value))
                continue
            ref = str(a.source.image)
            if image and ws.tuning and ref == ws.tuning.output.image:
                ref = image.reference
            secret = a.source.image_pull_secrets[0] if a.source.image_pull_secrets else None
            try:
                adir, digest = _pull_adapter(name, ref, secret)
            except RegistryError as exc:
                report.condition(status.INFERENCE_READY, False, "AdapterPullFailed", str(exc))
                raise
            wanted.append(records.ServedAdapter(name=a.source.name, dir=adir, digest=digest, strength=a.strength_value, image=ref))

        config_text = plan_mod.serving_config_text(self.plan(ws, config_maps), configmaps.inference_config_text(ws, config_maps))

        record = records.load(name)
        server = record.server if record and record.server else records.Server()
        same = (server.model == model and server.config == config_text
                and local_process.alive(server.pid, SERVING_MARKER)
                and local_process.alive(server.supervisor_pid, supervisor.MARKER) and _healthy(server.endpoint))
        if same:
            _roll_adapters(server, wanted, report)
            server.adapters = wanted
        else:
            _stop_orphans(name, keep=server.supervisor_pid)  # before loading another model beside them
            started = _start(name, model, wanted, config_text, runtime=ws.runtime)
            old = server
            server = records.Server(endpoint=started["endpoint"], port=started["port"], pid=started["pid"], model=model,
                                    config=config_text, adapters=wanted, engine=started["engine"],
                                    supervisor_pid=started["supervisor_pid"])
            if old.pid != started["pid"]:
                _stop_server(old)
            log.info("inference server for %s at %s (pid %s, supervisor pid %s)", name, server.endpoint, server.pid,
                     server.supervisor_pid)
            report.event("ServerStarted", f"{server.endpoint} pid {server.pid}")
        records.update(name, server=server, endpoint=server.endpoint)
        _stop_orphans(name, keep=server.supervisor_pid)
        report.condition(status.INFERENCE_READY, True, "InferenceServerReady", f"serving at {server.endpoint}")
        return Endpoint(endpoint=server.endpoint, pid=server.pid,
                        adapters=[{"name": a.name, "digest": a.digest, "strength": a.strength} for a in wanted])

    # ------------------------------------------------------------------ views
    def teardown(self, record: records.WorkspaceRecord) -> Teardown:
        stopped = _stop_server(record.server) if record.server else False
        stopped = _stop_orphans(record.name, keep=None) or stopped
        return Teardown(server_stopped=stopped)

    def logs(self, record: records.WorkspaceRecord, part: str) -> str:
        path = records.workspace_dir(record.name) / ("tuning.log" if part == "tuning" else "server.log")
        if not path.exists():
            raise KaiflowError(f"no {'tuning' if part == 'tuning' else 'server'} log for {record.name} yet")
        return path.read_text(errors="replace")

    def describe(self, record: records.WorkspaceRecord) -> dict[str, Any]:
        server = record.server
        if server is None or not server.endpoint:
            view = record.model_dump(mode="json")
            view.pop("cluster", None)
            return view
        running = local_process.alive(server.pid, SERVING_MARKER)
        supervised = local_process.alive(server.supervisor_pid, supervisor.MARKER)
        ready = running and _healthy(server.endpoint)
        said = record.condition(status.INFERENCE_READY)
        if not ready and said and said.get("status") == "True":
            record = _seen_down(record, running, supervised)
        view = record.model_dump(mode="json")
        view.pop("cluster", None)
        view["server_running"], view["server_ready"], view["supervisor_running"] = running, ready, supervised
        return view


# ---------------------------------------------------------------------- helpers shared with other platforms
def dataset_result(fp: Any, dest: Path, report: status.Reporter) -> Dataset:
    """A pulled dataset's fingerprint as the contract's ``Dataset``, logged and recorded."""
    import dataclasses

    data = dataclasses.asdict(fp) if dataclasses.is_dataclass(fp) and not isinstance(fp, type) else dict(fp)
    digest = data["digest"]
    log.info("dataset %s: %d file(s), digest %s", dest, len(data.get("files", [])), digest[:19])
    report.event("DatasetPulled", f"digest {digest[:19]}")
    return Dataset(dir=str(Path(data.get("dir") or dest)), digest=digest, verified=True)


class _config_file:
    """A temporary YAML file holding ``content``, removed on exit."""

    def __init__(self, content: dict) -> None:
        self.content = content

    def __enter__(self) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(self.content, f)
            self.path = f.name
        return self.path

    def __exit__(self, *exc: object) -> None:
        os.unlink(self.path)


def report_dataset_rows(metrics: dict, report: status.Reporter) -> None:
    """How many rows were trained on, and a warning event when rows of no known shape were left out."""
    rows = metrics.get("dataset") or {}
    if not rows:
        return
    msg = f"trained on {rows.get('train_rows')} of {rows.get('rows', 0) + rows.get('skipped', 0)} rows ({rows.get('shape')})"
    if rows.get("skipped"):
        msg += (f"; {rows['skipped']} row(s) of no known shape left out (first: "
                f"{', '.join(rows.get('skipped_examples') or [])}): fix or remove them")
        log.warning("dataset: %s", msg)
        report.event("DatasetRowsSkipped", msg, "Warning")
    else:
        report.event("DatasetRows", msg)


def _metrics(out: Path) -> dict:
    path = out / protocol.METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _run_reporting_progress(cmd: list[str], log_path: Path) -> tuple[int, str]:
    """Run the tuning program, copying its output to ``log_path`` and its progress lines to the
    log as a bar; returns (exit status, its last ``error:`` line)."""
    log.info("running: %s", " ".join(cmd))
    last_error = ""
    with open(log_path, "w") as logf:
        # the tuning program dies with the thread that waits for it (PR_SET_PDEATHSIG): an apply killed
        # mid-tuning leaves no trainer behind writing the checkpoints the next apply resumes from
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=local_process.die_with_parent())
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = protocol.parse_progress(line)
            if ev is None:  # a progress line is also said as a human line: the log keeps that one only
                logf.write(line)
                if line.startswith(protocol.ERROR_PREFIX):
                    last_error = line.strip()
            elif "step" in ev and "loss" in ev:
                total = ev.get("max_steps") or "?"
                done = int(20 * ev["step"] / total) if isinstance(total, int) and total else 0
                log.info("tuning [%s%s] step %s/%s loss %.4f", "#" * done, "." * (20 - done), ev["step"], total, ev["loss"])
        rc = proc.wait()
    return rc, last_error


def _volume_adapter(volume: dict, field: str) -> tuple[str, str]:
    """An adapter served from a folder (``hostPath.path``, the local platform's volume) and a digest of
    its files, so a changed adapter is rolled in and an unchanged one left alone."""
    import hashlib

    path = (volume.get("hostPath") or {}).get("path")
    if not path:
        raise SpecError(f"{field}: on the local platform an adapter volume is hostPath.path (a folder holding "
                        f"adapter_config.json and the weights); found {', '.join(volume) or 'nothing'}")
    folder = Path(path)
    missing = [f for f in protocol.ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise DeploymentError(f"{field}: {folder} holds no adapter (missing {', '.join(missing)}); point hostPath.path "
                              "at the folder a tuning run wrote")
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return str(folder), "sha256:" + h.hexdigest()


def _pull_adapter(name: str, reference: str, secret: str | None) -> tuple[str, str]:
    """Pull an adapter image into the workspace's folder (once per digest); returns (dir, digest)."""
    adapters = records.workspace_dir(name) / "adapters"
    if "@" in reference:
        resolved: str | None = reference.rsplit("@", 1)[1]
    else:
        resolved = registry.store_for(registry.qualify(reference)).resolve(registry.qualify(reference))
    if resolved:
        target = adapters / resolved.replace(":", "-")[:24]
        if (target / "adapter_config.json").exists():
            return str(target), resolved
    tmp = adapters / ".pulling"
    shutil.rmtree(tmp, ignore_errors=True)
    result = registry.pull(reference, tmp, credentials=registry.for_secret(secret))
    target = adapters / result.digest.replace(":", "-")[:24]
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return str(target), result.digest


def _healthy(url: str) -> bool:
    if not url:
        return False
    try:
        return httpx.get(f"{url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _roll_adapters(server: records.Server, wanted: list[records.ServedAdapter], report: status.Reporter) -> None:
    """Load changed adapters into the running server and unload the ones no longer wanted."""
    current = {a.name: a for a in server.adapters}
    for a in wanted:
        old = current.get(a.name)
        if old and old.digest == a.digest and old.strength == a.strength:
            continue
        r = httpx.post(f"{server.endpoint}/v1/load_lora_adapter",
                       json={"lora_name": a.name, "lora_path": a.dir, "strength": a.strength}, timeout=120)
        if r.status_code >= 300:
            raise DeploymentError(f"rolling adapter {a.name} into the running server failed: {r.status_code} {r.text[:300]}")
        log.info("rolled adapter %s to %s without restarting the server", a.name, a.digest[:19])
        report.event("AdapterRolled", f"{a.name} -> {a.digest[:19]}")
    for gone in set(current) - {a.name for a in wanted}:
        httpx.post(f"{server.endpoint}/v1/unload_lora_adapter", json={"lora_name": gone}, timeout=60)


def _start(name: str, model: str, adapters: list[records.ServedAdapter], config_text: str | None,
           runtime: str = "vllm") -> dict:
    """A new supervised server (``infra.supervisor``), once it answers ``/health``."""
    s = settings.load()
    engine = "transformers" if runtime == "transformers" else s.engine  # kaito.sh/runtime
    port = local_process.free_port(s.serve_host)
    wdir = records.workspace_dir(name)
    wdir.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config_text:
        cfg = wdir / f"inference_config-{port}.yaml"  # one per server: a restart reads the config it started with
        cfg.write_text(config_text)
        config_path = str(cfg)
    log_path = wdir / "server.log"
    spec_path = wdir / f"server-{port}.json"
    supervisor.write_spec(spec_path, workspace=name, model=model, host=s.serve_host, port=port, engine=engine,
                          adapters=adapters, config_path=config_path, log_path=log_path)
    sup = local_process.start([sys.executable, "-m", "infra.supervisor", "--spec", str(spec_path)],
                              log_path=wdir / "supervisor.log", pidfile=wdir / f"supervisor-{port}.pid")
    url = f"http://{s.serve_host}:{port}"
    try:
        local_process.wait_healthy(f"{url}/health", pid=sup, marker=supervisor.MARKER, timeout=s.health_timeout_s,
                                   log_path=log_path)
    except (RuntimeError, TimeoutError) as exc:
        local_process.stop(sup, supervisor.MARKER)
        raise DeploymentError(f"inference server for {name} did not become healthy: {exc}", reason="ServerNotHealthy") from None
    return {"pid": supervisor.read_state(spec_path).get("pid"), "supervisor_pid": sup, "endpoint": url, "port": port,
            "engine": engine}


def _stop_server(server: records.Server) -> bool:
    """Stop a server and its supervisor for good; True if either was running."""
    stopped = local_process.stop(server.supervisor_pid, supervisor.MARKER)  # its process group: the server too
    return local_process.stop(server.pid, SERVING_MARKER) or stopped  # a server from before supervisors


def _stop_orphans(name: str, keep: int | None) -> bool:
    """Stop the workspace's supervisors other than ``keep`` (left by a deploy killed before it recorded
    its server) and forget the files of stopped ones; True if one was running."""
    stopped = False
    for spec_path in records.workspace_dir(name).glob("server-*.json"):
        if spec_path.name.endswith(".state.json"):
            continue
        state = supervisor.read_state(spec_path)
        pid = state.get("supervisor_pid")
        if pid == keep and keep is not None:
            continue
        if pid and local_process.stop(pid, supervisor.MARKER):
            log.info("stopped an orphaned inference server of %s (supervisor pid %s)", name, pid)
            stopped = True
        if not pid and _age_s(spec_path) < 30:
            continue  # a supervisor starting right now has not written its state yet
        for path in (spec_path, supervisor.state_path(spec_path)):
            path.unlink(missing_ok=True)
    return stopped


def _age_s(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _seen_down(record: records.WorkspaceRecord, running: bool, supervised: bool) -> records.WorkspaceRecord:
    """The record with InferenceReady (and WorkspaceReady) False for a server that is down.

    A server that is not running is written down (with the time it was first seen down), so every
    later view agrees; its supervisor sets it True again once it answers. A running server that
    does not answer ``/health`` (busy, or hung) is shown not ready in this view only: nothing would
    set it back."""
    server = record.server
    assert server is not None
    seen = server.down_since or status.now()
    how = f"not running ({server.last_exit})" if not running and server.last_exit else (
        "not running" if not running else "running but not answering /health")
    then = (f"its supervisor (pid {server.supervisor_pid}) restarts it; restarts so far: {server.restarts}" if supervised
            else "nothing restarts it: re-apply the workspace (kaiflow apply)")
    message = f"server pid {server.pid} {how}, seen down at {seen}; {then}"
    reason = "ServerNotRunning" if not running else "ServerNotAnswering"

    def mark(rec: records.WorkspaceRecord) -> None:
        if rec.server is None or rec.server.pid != server.pid:
            return  # a deploy or the supervisor changed it meanwhile
        if not running:
            rec.server = rec.server.model_copy(update={"down_since": seen})
        rec.conditions = status.set_condition(rec.conditions, status.INFERENCE_READY, False, reason, message)
        ready = rec.condition(status.WORKSPACE_READY)
        if ready and ready.get("status") == "True":
            rec.conditions = status.set_condition(rec.conditions, status.WORKSPACE_READY, False, supervisor.DOWN_REASON,
                                                  f"inference is not ready: {message}")

    if not running:
        return records.change(record.name, mark)
    shown = record.model_copy(deep=True)
    mark(shown)
    return shown
