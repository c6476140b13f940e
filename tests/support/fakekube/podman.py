"""The fake cluster's podman mode: a kubelet that runs a bound pod's containers as real podman
containers, so the image, its user, its working directory, its volumes and its termination
message are what a real node would run (issue 17). The default mode stays the process-free one
(pods become Running/Succeeded by decree, tests run the commands themselves): it is fast.

    kube.controllers.kubelet = PodmanKubelet(kube, work=tmp_path / "pods")
    ...
    kube.controllers.kubelet.stop()      # removes every container it started

What a pod gets, as the kubelet would give it:
- init containers one after another, each to completion; a failed one fails the pod (restartPolicy
  Never: Jobs) or is reported and retried on the next sync (others); then the main containers;
- volumes as host folders under ``work/<pod>/volumes``: emptyDir (mode 0777, ``medium: Memory``
  too), ConfigMap and Secret (keys, or ``items`` key → path, mode 0644); ``subPath`` mounts;
- env from ``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef`` (name, namespace, pod IP),
  passed in a 0600 ``--env-file`` so secret values are never on a command line;
- ``terminationMessagePath``: a 0666 file per container bind-mounted there, read back into
  ``state.terminated.message`` (``FallbackToLogsOnError``: the log's last 80 lines when the file
  is empty and the container failed); logs kept in ``kube.pod_logs[pod]`` and ``work/<pod>/*.log``;
- securityContext: runAsUser/runAsGroup (``--user``), ``capabilities.drop: [ALL]``,
  ``allowPrivilegeEscalation: false`` (no-new-privileges), ``readOnlyRootFilesystem``;
- the service account, when the fake serves HTTPS too (``kube.serve_tls()``): token, ``ca.crt`` and
  ``namespace`` mounted read-only at /var/run/secrets/kubernetes.io/serviceaccount and
  ``KUBERNETES_SERVICE_HOST``/``_PORT`` set, so in-cluster configuration reaches the fake (any token
  is accepted: no RBAC); ``automountServiceAccountToken: false`` opts out;
- the pod's readinessProbe (httpGet) decides Ready; the image is pulled once per reference
  (``--tls-verify=false`` for loopback registries), an unpullable one is ``ImagePullBackOff``.

Deliberate differences: every container uses the HOST network (``netns = "host"`` in
deployments/images/containers.conf), so a pod reaches the test's servers on 127.0.0.1 and the test
reaches the pod's ports on 127.0.0.1 — and a server the pod binds to 0.0.0.0 listens on all the
host's interfaces while the test runs. ``node_env`` puts variables into every container (what a
cluster's mutating admission webhook might inject; a test names what it needs). GPU requests are ignored (no devices are passed). Probes
other than httpGet, resource limits, restarts of crashed main containers (a crashed one leaves the
pod Failed/not Ready) and pod IPs are not modelled.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.fakekube import store

REPO = Path(__file__).resolve().parents[3]
IMAGES = REPO / "deployments" / "images"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def service_account_token(namespace: str, account: str) -> str:
    """The token the kubelet mounts for a pod of ``account`` (the fake accepts any; tests tell pods apart by it)."""
    return f"fakekube-sa-{namespace}-{account}"


def podman_env() -> dict[str, str]:
    """The environment podman/buildah/skopeo run in: deployments/images/env.sh's settings
    (containers.conf and the image store under KAIFLOW_IMAGE_CACHE)."""
    out = subprocess.run(["bash", "-c", f". {IMAGES / 'env.sh'} && env -0"], capture_output=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)


def podman(*args: str, env: dict[str, str], check: bool = True, timeout: float | None = None,
           ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def _terminated(code: int, message: str | None, started: str, finished: str) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                             "startedAt": started, "finishedAt": finished}
    if message:
        state["message"] = message
    return {"terminated": state}


class _Pod:
    """One pod's containers and the status the kubelet reports for it."""

    def __init__(self, kubelet: PodmanKubelet, pod: dict[str, Any]):
        self.kubelet = kubelet
        self.pod = copy.deepcopy(pod)
        self.name = pod["metadata"]["name"]
        self.namespace = pod["metadata"].get("namespace", "default")
        self.dir = kubelet.work / self.name
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        spec = pod.get("spec") or {}
        self.inits: list[dict[str, Any]] = spec.get("initContainers") or []
        self.mains: list[dict[str, Any]] = spec.get("containers") or []
        self.states: dict[str, dict[str, Any]] = {c["name"]: {"waiting": {"reason": "PodInitializing"}}
                                                   for c in self.inits + self.mains}
        self.phase = "Pending"
        self.ready = False
        self.started_at = store.now()
        self.thread = threading.Thread(target=self._run_guarded, daemon=True, name=f"podman-kubelet-{self.name}")

    # ---- status the controller writes ----
    def status(self) -> dict[str, Any]:
        with self.lock:
            inits_done = all("terminated" in self.states[c["name"]] and
                             self.states[c["name"]]["terminated"]["exitCode"] == 0 for c in self.inits)
            ready = self.ready and self.phase == "Running"

            def entry(c: dict[str, Any], is_init: bool) -> dict[str, Any]:
                state = self.states[c["name"]]
                return {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                        "ready": (not is_init and ready) or (is_init and "terminated" in state
                                                              and state["terminated"]["exitCode"] == 0),
                        "restartCount": 0, "started": "running" in state, "state": copy.deepcopy(state)}
            flag = "True" if ready else "False"
            reason = "" if ready else ("PodCompleted" if self.phase in ("Succeeded", "Failed") else "ContainersNotReady")
            conds = [{"type": "PodScheduled", "status": "True"},
                     {"type": "Initialized", "status": "True" if inits_done else "False"},
                     {"type": "ContainersReady", "status": flag}, {"type": "Ready", "status": flag}]
            for c in conds[2:]:
                if reason:
                    c["reason"] = reason
            status: dict[str, Any] = {"phase": self.phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                                      "startTime": self.started_at, "conditions": conds,
                                      "containerStatuses": [entry(c, False) for c in self.mains]}
            if self.inits:
                status["initContainerStatuses"] = [entry(c, True) for c in self.inits]
            return status

    # ---- running ----
    def _run_guarded(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - reported as a failed pod and as a fake's internal error
            self.kubelet.errors.append(f"pod {self.name}: {err!r}")
            with self.lock:
                self.phase = "Failed"

    def _run(self) -> None:
        volumes = self._volumes()
        for c in self.inits + self.mains:
            image = c.get("image", "")
            if not self.kubelet.pull(image):
                with self.lock:
                    for other in self.mains:
                        self.states[other["name"]] = {"waiting": {"reason": "ImagePullBackOff",
                                                                  "message": f'Back-off pulling image "{image}"'}}
                return
        for c in self.inits:
            code = self._run_container(c, volumes, wait=True)
            if code != 0 or self.stopped.is_set():
                with self.lock:
                    self.phase = "Failed"
                    for other in self.mains:
                        self.states[other["name"]] = {"waiting": {"reason": "PodInitializing"}}
                return
        with self.lock:
            self.phase = "Running"
        if (self.pod.get("spec") or {}).get("restartPolicy", "Always") == "Never" or \
                (self.pod.get("spec") or {}).get("restartPolicy") == "OnFailure":
            codes = [self._run_container(c, volumes, wait=True) for c in self.mains]  # Job pods: one main container
            with self.lock:
                self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
            return
        for c in self.mains:
            self._run_container(c, volumes, wait=False)
        self._probe_until_stopped()

    def _probe_until_stopped(self) -> None:
        probes = [(c["name"], (c.get("readinessProbe") or {}).get("httpGet")) for c in self.mains]
        while not self.stopped.wait(0.5):
            alive = all(self.kubelet.running(self._container_name(n)) for n, _ in probes)
            ok = alive and all(probe is None or _http_ok(probe) for _, probe in probes)
            with self.lock:
                if not alive:
                    for c in self.mains:
                        self._record_exit(c)
                    self.phase, self.ready = "Failed", False
                    return
                self.ready = ok

    def _container_name(self, container: str) -> str:
        return f"kf-{self.kubelet.tag}-{self.name}-{container}"[:250]

    def _run_container(self, c: dict[str, Any], volumes: dict[str, Path], *, wait: bool) -> int:
        name = self._container_name(c["name"])
        podman(*["rm", "-f", "-i", name], env=self.kubelet.env, check=False)
        args = ["run", "--name", name, "--network", "host", "--pull", "never", "--label", f"kaiflow-fakekube={self.kubelet.tag}"]
        args += self._security(c)
        tlog = self.dir / "termination" / c["name"]
        tlog.parent.mkdir(parents=True, exist_ok=True)
        tlog.write_text("")
        tlog.chmod(0o666)
        args += ["-v", f"{tlog}:{c.get('terminationMessagePath', DEFAULT_TERMINATION_LOG)}:rw"]
        for m in c.get("volumeMounts") or []:
            host = volumes[m["name"]] / m["subPath"] if m.get("subPath") else volumes[m["name"]]
            args += ["-v", f"{host}:{m['mountPath']}:{'ro' if m.get('readOnly') else 'rw'}"]
        account = self._service_account()
        if account is not None:
            args += ["-v", f"{account}:{SERVICE_ACCOUNT_DIR}:ro"]
        envfile = self.dir / "env" / c["name"]
        envfile.parent.mkdir(parents=True, exist_ok=True)
        envfile.touch(mode=0o600)
        envfile.write_text("".join(f"{k}={v}\n" for k, v in self._env(c).items()))
        args += ["--env-file", str(envfile)]
        if c.get("workingDir"):
            args += ["--workdir", c["workingDir"]]
        if c.get("command"):
            args += ["--entrypoint", json.dumps(c["command"])]
        args += [] if wait else ["-d"]
        args += [c["image"], *(c.get("args") or [])]
        with self.lock:
            self.states[c["name"]] = {"running": {"startedAt": store.now()}}
        started = store.now()
        proc = podman(*args, env=self.kubelet.env, check=False)
        if not wait:
            if proc.returncode != 0:
                self._save_log(c, proc.stdout + proc.stderr)
                with self.lock:
                    self.states[c["name"]] = _terminated(proc.returncode, proc.stderr.strip()[-1000:], started, store.now())
            return proc.returncode
        code = self._record_exit(c, started=started, fallback=proc.stderr if proc.returncode == 125 else "")
        return code

    def _record_exit(self, c: dict[str, Any], started: str | None = None, fallback: str = "") -> int:
        name = self._container_name(c["name"])
        inspect = podman("inspect", "--format", "{{.State.ExitCode}} {{.State.Status}}", name,
                         env=self.kubelet.env, check=False).stdout.split()
        code = int(inspect[0]) if inspect and inspect[0].lstrip("-").isdigit() else 125
        log = podman("logs", name, env=self.kubelet.env, check=False)
        text = (log.stdout + log.stderr) or fallback
        self._save_log(c, text)
        message = (self.dir / "termination" / c["name"]).read_text()[:4096]
        if not message and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = "\n".join(text.splitlines()[-80:])[-2048:]
        podman("rm", "-f", "-i", name, env=self.kubelet.env, check=False)
        self.states[c["name"]] = _terminated(code, message or None, started or self.started_at, store.now())
        return code

    def _save_log(self, c: dict[str, Any], text: str) -> None:
        (self.dir / f"{c['name']}.log").write_text(text)
        logs = self.kubelet.kube.pod_logs
        logs[self.name] = logs.get(self.name, "") + text

    def stop(self) -> None:
        self.stopped.set()
        for c in self.inits + self.mains:
            podman("rm", "-f", "-i", "-t", "5", self._container_name(c["name"]), env=self.kubelet.env, check=False)

    # ---- what the kubelet projects into a container ----
    def _security(self, c: dict[str, Any]) -> list[str]:
        pod_sc = (self.pod.get("spec") or {}).get("securityContext") or {}
        sc = {**pod_sc, **(c.get("securityContext") or {})}
        args: list[str] = []
        if sc.get("runAsUser") is not None:
            args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if "ALL" in ((sc.get("capabilities") or {}).get("drop") or []):
            args += ["--cap-drop", "all"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only"]
        return args

    def _volumes(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for vol in (self.pod.get("spec") or {}).get("volumes") or []:
            path = self.dir / "volumes" / vol["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                path.chmod(0o777)
            elif "configMap" in vol or "secret" in vol:
                source = vol.get("configMap") or vol["secret"]
                data = self._source_data("ConfigMap" if "configMap" in vol else "Secret",
                                         source.get("name") or source.get("secretName"), source.get("optional", False))
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        raise RuntimeError(f"volume {vol['name']}: key {item['key']!r} not in its source")
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data[item["key"]])
                    target.chmod(0o644)
                path.chmod(0o755)
            else:
                raise RuntimeError(f"volume {vol['name']}: only emptyDir, configMap and secret volumes run under podman")
            out[vol["name"]] = path
        return out

    def _source_data(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        obj = self.kubelet.kube.get("v1", kind, name, self.namespace)
        if obj is None:
            if optional:
                return {}
            raise RuntimeError(f"{kind} {self.namespace}/{name} not found (the pod would stay ContainerCreating)")
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()} if kind == "ConfigMap" else \
            {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        if kind == "ConfigMap":
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _service_account(self) -> Path | None:
        """The pod's service-account folder (token, ca.crt, namespace), as the kubelet projects it, when
        the fake serves HTTPS (``FakeKube.serve_tls``) and the pod does not opt out; else None."""
        spec = self.pod.get("spec") or {}
        if not self.kubelet.kube.tls_url or spec.get("automountServiceAccountToken") is False:
            return None
        path = self.dir / "serviceaccount"
        if not path.exists():
            path.mkdir(parents=True)
            account = spec.get("serviceAccountName") or "default"
            for name, data in {"token": service_account_token(self.namespace, account).encode(),
                               "ca.crt": self.kubelet.kube.ca_pem, "namespace": self.namespace.encode()}.items():
                (path / name).write_bytes(data)
                (path / name).chmod(0o644)
            path.chmod(0o755)
        return path

    def _env(self, c: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = dict(self.kubelet.node_env)
        if self._service_account() is not None:   # the API server's address, as every pod gets it
            host, port = self.kubelet.kube.tls_url.removeprefix("https://").rsplit(":", 1)
            env.update({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                        "KUBERNETES_SERVICE_PORT_HTTPS": port})
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
                continue
            ref = e.get("valueFrom") or {}
            if "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind, r = ("Secret", ref["secretKeyRef"]) if "secretKeyRef" in ref else ("ConfigMap", ref["configMapKeyRef"])
                data = self._source_data(kind, r["name"], r.get("optional", False))
                if r["key"] in data:
                    env[e["name"]] = data[r["key"]].decode()
            elif "fieldRef" in ref:
                field = ref["fieldRef"]["fieldPath"]
                env[e["name"]] = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
                                  "spec.nodeName": (self.pod.get("spec") or {}).get("nodeName", "")}.get(field, "")
        return env


def _http_ok(probe: dict[str, Any]) -> bool:
    port = probe.get("port")
    if not isinstance(port, int):
        return False   # named ports: not modelled
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe.get('path', '/')}", timeout=2) as resp:
            return 200 <= resp.status < 400
    except OSError:
        return False


class PodmanKubelet:
    """Runs the fake cluster's bound pods as podman containers (see the module docstring).
    ``Controllers.kubelet`` set to one of these switches the fake's pods to it."""

    def __init__(self, kube: Any, work: Path, *, pull: bool = True, node_env: dict[str, str] | None = None):
        self.kube = kube
        self.node_env = dict(node_env or {})   # put into every container, as a mutating webhook would
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = podman_env()
        self.tag = os.urandom(3).hex()    # this kubelet's containers, so stop() removes exactly them
        self.pods: dict[str, _Pod] = {}
        self.pulled: dict[str, bool] = {}
        self.pulled_here: list[str] = []      # removed again by stop(): the test registry's tags
        self.do_pull = pull
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def sync(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The pod's status now; its containers are started on the first call."""
        key = pod["metadata"]["uid"]
        with self._lock:
            runner = self.pods.get(key)
            if runner is None:
                runner = self.pods[key] = _Pod(self, pod)
                if runner.dir.exists():
                    shutil.rmtree(runner.dir)
                runner.dir.mkdir(parents=True)
                runner.thread.start()
        return runner.status()

    def forget(self, live_uids: set[str]) -> None:
        """Stop the containers of pods that are gone from the API (deleted, replaced)."""
        with self._lock:
            gone = [uid for uid in self.pods if uid not in live_uids]
            runners = [self.pods.pop(uid) for uid in gone]
        for runner in runners:
            runner.stop()

    def pull(self, image: str) -> bool:
        """Pull ``image`` once (loopback registries over plain HTTP); False when it cannot be pulled."""
        with self._lock:
            if image in self.pulled:
                return self.pulled[image]
        local = podman("image", "exists", image, env=self.env, check=False).returncode == 0
        if local and (not self.do_pull or image.startswith("localhost/")):
            ok = True
        else:
            host = image.split("/", 1)[0]
            tls = "false" if host.startswith(("127.0.0.1:", "localhost:", "localhost/")) or host == "localhost" else "true"
            proc = podman("pull", "--quiet", f"--tls-verify={tls}", image, env=self.env, check=False, timeout=600)
            ok = proc.returncode == 0
            if ok and not local:
                self.pulled_here.append(image)
            if not ok:
                self.errors.append(f"pull {image}: {proc.stderr.strip()[-500:]}")
        with self._lock:
            self.pulled[image] = ok
        return ok

    def running(self, container: str) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", container, env=self.env, check=False)
        return out.stdout.strip() == "true"

    def stop(self) -> None:
        with self._lock:
            runners = list(self.pods.values())
            self.pods.clear()
        for runner in runners:
            runner.stop()
        for runner in runners:
            runner.thread.join(timeout=30)
        if self.pulled_here:  # its layers are the built image's: only the tags go
            podman("rmi", *self.pulled_here, env=self.env, check=False)
            self.pulled_here.clear()
