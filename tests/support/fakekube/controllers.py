"""Controller simulation: what Karpenter, the Job/StatefulSet/Deployment controllers, the scheduler
and the kubelet would do, in small fast steps (one step per object every ``interval_s``).

- NodeClaim (karpenter.sh/v1): ``nodeclaim_outcome`` "ready" → Launched (providerID, capacity),
  then a Node (labels from the NodeClaim and its single-valued ``In`` requirements, taints from
  ``spec.taints``, GPU capacity and GPU Feature Discovery labels from ``INSTANCE_TYPES``) and
  Registered/Initialized/Ready; ``("failed", reason, message)`` → Launched=False and Ready=False
  with that reason, no Node. The Node is owned by the NodeClaim, so deleting the NodeClaim
  removes it (Karpenter does that with a finalizer).
- Job: one Pod (``<job>-<suffix>``, labels job-name / batch.kubernetes.io/job-name, controller
  ownerReference); once the pod runs (its init containers reported Completed in
  ``initContainerStatuses``), ``job_outcomes[name]`` or ``job_outcome`` decides:
  succeeded → ``on_job_complete(job)`` is called (without the store lock); a ``str`` it returns
  becomes ``state.terminated.message`` of the pod's main container(s) (what a container writes to
  its ``terminationMessagePath``; nothing else is put there), then the pod Succeeded and the Job
  Complete; ``("failed", reason, message[, container])`` → pod Failed and Job Failed with the
  reason/message; the named container (init or main; default: the main ones) exits 1 with the
  message as its termination message, init containers before it Completed, containers after it
  never started (waiting PodInitializing). No retries of failed pods (backoffLimit is not simulated).
- StatefulSet → pods ``<name>-<i>``; Deployment → pods ``<name>-<hash>-<suffix>`` (no ReplicaSet
  objects). A changed pod template replaces the pods; status carries replicas, readyReplicas,
  availableReplicas, updatedReplicas, currentRevision/updateRevision, observedGeneration.
- Scheduler: a pending pod binds to a Ready node that matches nodeSelector / required node
  affinity, whose NoSchedule/NoExecute taints it tolerates and that has enough free
  ``nvidia.com/gpu``; otherwise PodScheduled=False, reason Unschedulable, with a message shaped
  like the scheduler's ("0/N nodes are available: ...").
- Kubelet: a bound pod becomes Running and Ready, unless ``pod_failure`` (or ``pod_failure_for(pod)``) is "ImagePullBackOff"
  (waiting, Pending) or "CrashLoopBackOff" (waiting, restartCount, not Ready); "Unschedulable"
  keeps every pod unbound.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import traceback
import uuid
from typing import Any, Callable

from tests.support.fakekube import selectors, store

GPU = "nvidia.com/gpu"
LOG = logging.getLogger(__name__)

# instance type -> (GPU count, GFD product label, GPU memory MiB, CPUs, memory)
INSTANCE_TYPES: dict[str, tuple[int, str, int, int, str]] = {
    "Standard_NC6s_v3": (1, "Tesla-V100-PCIE-16GB", 16384, 6, "112Gi"),
    "Standard_NC12s_v3": (2, "Tesla-V100-PCIE-16GB", 16384, 12, "224Gi"),
    "Standard_NC24s_v3": (4, "Tesla-V100-PCIE-16GB", 16384, 24, "448Gi"),
    "Standard_NC24ads_A100_v4": (1, "NVIDIA-A100-PCIE-80GB", 81920, 24, "220Gi"),
    "Standard_NC48ads_A100_v4": (2, "NVIDIA-A100-PCIE-80GB", 81920, 48, "440Gi"),
    "Standard_NC96ads_A100_v4": (4, "NVIDIA-A100-PCIE-80GB", 81920, 96, "880Gi"),
    "Standard_NV36ads_A10_v5": (1, "NVIDIA-A10", 24576, 36, "440Gi"),
}
DEFAULT_INSTANCE = (1, "Tesla-V100-PCIE-16GB", 16384, 8, "56Gi")
INSTANCE_LABEL = "node.kubernetes.io/instance-type"


def node_object(name: str, *, labels: dict[str, str], gpu_count: int = 1, gpu_product: str = "Tesla-V100-PCIE-16GB",
                gpu_memory_mib: int = 16384, instance_type: str | None = None, ready: bool = True,
                taints: list[dict[str, Any]] | None = None, cpus: int = 8, memory: str = "56Gi",
                provider_id: str | None = None) -> dict[str, Any]:
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": gpu_product,
                  "nvidia.com/gpu.count": str(gpu_count), "nvidia.com/gpu.memory": str(gpu_memory_mib)}
    if instance_type:
        all_labels.update({INSTANCE_LABEL: instance_type, "beta.kubernetes.io/instance-type": instance_type})
    all_labels.update(labels)
    capacity = {"cpu": str(cpus), "memory": memory, "pods": "110", "ephemeral-storage": "129886128Ki",
                GPU: str(gpu_count)}
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = copy.deepcopy(taints)
    if provider_id:
        spec["providerID"] = provider_id
    ready_cond = {"type": "Ready", "status": "True" if ready else "False",
                  "reason": "KubeletReady" if ready else "KubeletNotReady",
                  "message": "kubelet is posting ready status" if ready else "container runtime is down",
                  "lastHeartbeatTime": store.now(), "lastTransitionTime": store.now()}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": all_labels}, "spec": spec,
            "status": {"capacity": capacity, "allocatable": dict(capacity), "conditions": [ready_cond],
                       "addresses": [{"type": "InternalIP", "address": "10.224.0.4"},
                                     {"type": "Hostname", "address": name}]}}


def _condition(ctype: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    cond = {"type": ctype, "status": status, "lastTransitionTime": store.now()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _cond_status(obj: dict[str, Any], ctype: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond.get("status")
    return None


def pod_gpus(pod: dict[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        res = container.get("resources") or {}
        value = (res.get("limits") or {}).get(GPU, (res.get("requests") or {}).get(GPU, 0))
        total += int(value)
    return total


def _owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(o.get("uid") == owner["metadata"]["uid"] for o in obj["metadata"].get("ownerReferences") or [])


def _template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class Controllers:
    def __init__(self, kube: Any):
        self.kube = kube
        self.nodeclaim_outcome: Any = "ready"
        self.job_outcome: Any = "succeeded"
        self.job_outcomes: dict[str, Any] = {}
        self.on_job_complete: Callable[[dict[str, Any]], str | None] | None = None
        self.pod_failure: str | None = None
        # per pod: a callable (pod -> failure or None), e.g. only pods whose spec names a bad image
        self.pod_failure_for: Callable[[dict[str, Any]], str | None] | None = None
        self.interval_s = 0.1
        # podman mode (tests/support/fakekube/podman.py): a PodmanKubelet runs bound pods as containers
        # and reports their status; Jobs then follow their pod's real outcome. None: pods by decree.
        self.kubelet: Any = None
        self.errors: list[str] = []          # exceptions raised inside the loop (a test that saw any fails)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._passes = 0                     # full reconcile passes of the loop, for settle()
        self._passed = threading.Condition()

    @property
    def store(self) -> store.Store:
        return self.kube.store

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fakekube-controllers")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception as err:  # noqa: BLE001 - a controller bug must not kill the loop silently
                LOG.exception("fakekube controller step failed")
                self.errors.append(f"{err!r}\n{traceback.format_exc()}")
            with self._passed:
                self._passes += 1
                self._passed.notify_all()

    def settle(self, passes: int = 2, timeout: float = 30) -> None:
        """Wait until the loop has made ``passes`` more full reconcile passes: whatever the
        controllers would do about the state the caller sees now, they have done (an event to wait
        for instead of a sleep). ``timeout`` only catches a stopped or hung loop."""
        with self._passed:
            target = self._passes + passes
            if not self._passed.wait_for(lambda: self._passes >= target, timeout):
                raise TimeoutError(f"the fake's controllers made no {passes} passes within {timeout} s")

    def step(self) -> None:
        """One reconcile pass over every controller (tests without the thread may call it directly)."""
        self._nodeclaims()
        completions = self._jobs()
        for job in completions:
            self._finish_job_succeeded(job)
        self._workloads()
        self._pods()

    # ---- helpers ----
    def _type(self, api_version: str, kind: str) -> Any:
        try:
            return self.store.find_type(api_version, kind)
        except store.ApiError:
            return None

    def _write(self, api_version: str, kind: str, new: dict[str, Any]) -> dict[str, Any] | None:
        """Replace an object (status included) as a controller would; None when it vanished meanwhile."""
        rtype = self._type(api_version, kind)
        with self.store.lock:
            key = self.store._key(rtype, new["metadata"].get("namespace"), new["metadata"]["name"])
            old = self.store.objects.get(key)
            if old is None:
                return None
            return self.store.commit(rtype, new, old)

    def _list(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        rtype = self._type(api_version, kind)
        return self.store.list(rtype) if rtype else []

    # ---- NodeClaims ----
    def _nodeclaims(self) -> None:
        for claim in self._list("karpenter.sh/v1", "NodeClaim"):
            if _cond_status(claim, "Ready") == "True" or _cond_status(claim, "Launched") == "False":
                continue
            outcome = self.nodeclaim_outcome
            if isinstance(outcome, (tuple, list)) and outcome and outcome[0] == "failed":
                self._fail_nodeclaim(claim, str(outcome[1]), str(outcome[2]))
            elif _cond_status(claim, "Launched") != "True":
                self._launch_nodeclaim(claim)
            else:
                self._register_nodeclaim(claim)

    def _claim_instance_type(self, claim: dict[str, Any]) -> str | None:
        for req in (claim.get("spec") or {}).get("requirements") or []:
            if req.get("key") == INSTANCE_LABEL and req.get("operator") == "In" and req.get("values"):
                return req["values"][0]
        return (claim["metadata"].get("labels") or {}).get(INSTANCE_LABEL)

    def _fail_nodeclaim(self, claim: dict[str, Any], reason: str, message: str) -> None:
        new = copy.deepcopy(claim)
        new["status"] = dict(new.get("status") or {}, conditions=[
            _condition("Launched", "False", reason, message), _condition("Ready", "False", reason, message)])
        self._write("karpenter.sh/v1", "NodeClaim", new)

    def _launch_nodeclaim(self, claim: dict[str, Any]) -> None:
        gpus, _, _, cpus, memory = INSTANCE_TYPES.get(self._claim_instance_type(claim) or "", DEFAULT_INSTANCE)
        name = claim["metadata"]["name"]
        new = copy.deepcopy(claim)
        new["status"] = dict(new.get("status") or {}, providerID=self._provider_id(name),
                             capacity={"cpu": str(cpus), "memory": memory, GPU: str(gpus), "pods": "110"},
                             conditions=[_condition("Launched", "True", "Launched", ""),
                                         _condition("Registered", "Unknown", "AwaitingReconciliation",
                                                    "object is awaiting reconciliation"),
                                         _condition("Initialized", "Unknown", "AwaitingReconciliation",
                                                    "object is awaiting reconciliation"),
                                         _condition("Ready", "Unknown", "AwaitingReconciliation",
                                                    "object is awaiting reconciliation")])
        new["status"]["allocatable"] = dict(new["status"]["capacity"])
        self._write("karpenter.sh/v1", "NodeClaim", new)

    @staticmethod
    def _provider_id(name: str) -> str:
        return ("azure:///subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mc_fakekube/providers/"
                f"Microsoft.Compute/virtualMachines/{name}")

    def _register_nodeclaim(self, claim: dict[str, Any]) -> None:
        name = claim["metadata"]["name"]
        instance = self._claim_instance_type(claim)
        gpus, product, mem_mib, cpus, memory = INSTANCE_TYPES.get(instance or "", DEFAULT_INSTANCE)
        labels = dict(claim["metadata"].get("labels") or {})
        for req in (claim.get("spec") or {}).get("requirements") or []:
            if req.get("operator") == "In" and len(req.get("values") or []) == 1:
                labels.setdefault(req["key"], req["values"][0])
        labels["karpenter.sh/registered"] = "true"
        labels["karpenter.sh/initialized"] = "true"
        node = node_object(name, labels=labels, gpu_count=gpus, gpu_product=product, gpu_memory_mib=mem_mib,
                           instance_type=instance, taints=(claim.get("spec") or {}).get("taints"), cpus=cpus,
                           memory=memory, provider_id=self._provider_id(name))
        node["metadata"]["ownerReferences"] = [dict(_owner_ref(claim), blockOwnerDeletion=True)]
        with self.store.lock:
            if self.kube.get("v1", "Node", name) is None:
                self.kube.create(node)
            new = copy.deepcopy(claim)
            new["status"] = dict(new.get("status") or {}, nodeName=name, conditions=[
                _condition("Launched", "True", "Launched"), _condition("Registered", "True", "Registered"),
                _condition("Initialized", "True", "Initialized"), _condition("Ready", "True", "Ready")])
            self._write("karpenter.sh/v1", "NodeClaim", new)

    # ---- Jobs ----
    def _job_outcome(self, job: dict[str, Any]) -> Any:
        return self.job_outcomes.get(job["metadata"]["name"], self.job_outcome)

    def _jobs(self) -> list[dict[str, Any]]:
        """Advance every Job one step; returns the Jobs that are ready to succeed (callback pending)."""
        ready_to_succeed = []
        pods = self._list("v1", "Pod")
        for job in self._list("batch/v1", "Job"):
            if _cond_status(job, "Complete") == "True" or _cond_status(job, "Failed") == "True":
                continue
            if (job.get("spec") or {}).get("suspend"):
                continue
            mine = [p for p in pods if _owned_by(p, job)]
            if not mine:
                self._start_job_pod(job)
                continue
            pod = mine[0]
            if self.kubelet is not None:
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    self._finish_job(job, pod, phase == "Succeeded", *(("CompletionsReached", "Reached expected number of "
                                     "succeeded pods") if phase == "Succeeded" else ("BackoffLimitExceeded",
                                                                                     "Job has reached the specified backoff limit")))
                continue
            if (pod.get("status") or {}).get("phase") != "Running" or _cond_status(pod, "Ready") != "True":
                continue
            outcome = self._job_outcome(job)
            if isinstance(outcome, (tuple, list)) and outcome and outcome[0] == "failed":
                self._finish_job(job, pod, False, str(outcome[1]), str(outcome[2]),
                                 failed_container=str(outcome[3]) if len(outcome) > 3 else None)
            else:
                ready_to_succeed.append(job)
        return ready_to_succeed

    def _start_job_pod(self, job: dict[str, Any]) -> None:
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        meta = template.get("metadata") or {}
        name = job["metadata"]["name"]
        labels = dict(meta.get("labels") or {}, **{"job-name": name, "batch.kubernetes.io/job-name": name})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-{uuid.uuid4().hex[:5]}", "namespace": job["metadata"]["namespace"],
                            "labels": labels, "annotations": meta.get("annotations") or {},
                            "ownerReferences": [_owner_ref(job)]},
               "spec": template.get("spec") or {}}
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        self.kube.create(pod)
        new = copy.deepcopy(job)
        new["status"] = dict(new.get("status") or {}, startTime=store.now(), active=1)
        self._write("batch/v1", "Job", new)

    def _finish_job_succeeded(self, job: dict[str, Any]) -> None:
        callback = self.on_job_complete
        returned: Any = None
        if callback is not None:
            try:
                returned = callback(copy.deepcopy(job))
            except Exception as err:  # noqa: BLE001 - the test's effect failed: the Job fails, saying why
                LOG.exception("on_job_complete failed")
                self.errors.append(repr(err))
                return self._finish_job(self.kube.get("batch/v1", "Job", job["metadata"]["name"],
                                                      job["metadata"]["namespace"]) or job, None, False,
                                        "OnJobCompleteFailed", f"on_job_complete raised {err!r}")
        current = self.kube.get("batch/v1", "Job", job["metadata"]["name"], job["metadata"]["namespace"])
        if current is not None:
            self._finish_job(current, None, True, "CompletionsReached", "Reached expected number of succeeded pods",
                             container_message=returned if isinstance(returned, str) else None)

    def _finish_job(self, job: dict[str, Any], pod: dict[str, Any] | None, succeeded: bool, reason: str,
                    message: str, container_message: str | None = None, failed_container: str | None = None) -> None:
        if pod is None:
            pod = next((p for p in self._list("v1", "Pod") if _owned_by(p, job)), None)
        if pod is not None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self._terminate_pod(pod, succeeded, message if not succeeded else container_message, failed_container)
        new = copy.deepcopy(job)
        status = dict(new.get("status") or {}, active=0)
        status.setdefault("startTime", store.now())
        if succeeded:
            status.update(succeeded=1, completionTime=store.now(), conditions=[
                _condition("SuccessCriteriaMet", "True", reason, message), _condition("Complete", "True", reason,
                                                                                      message)])
        else:
            status.update(failed=1, conditions=[_condition("FailureTarget", "True", reason, message),
                                                _condition("Failed", "True", reason, message)])
        self._write("batch/v1", "Job", new | {"status": status})

    def _terminate_pod(self, pod: dict[str, Any], succeeded: bool, message: str | None,
                       failed_container: str | None = None) -> None:
        """Pod Succeeded/Failed with a terminated state per container. ``message`` is the termination
        message of the main containers (on failure: of ``failed_container`` when one is named)."""
        new = copy.deepcopy(pod)
        spec = pod.get("spec") or {}
        inits, mains = spec.get("initContainers") or [], spec.get("containers") or []
        names = [c["name"] for c in inits + mains]
        failed_at = names.index(failed_container) if failed_container in names else len(inits)
        statuses = []
        for i, c in enumerate(inits + mains):
            if succeeded:
                state = _terminated(0, None if i < len(inits) else message)
            elif i == failed_at or (failed_container is None and i >= len(inits)):
                state = _terminated(1, message)
            elif i < failed_at or failed_at >= len(inits):  # init containers before it; other main ones
                state = _terminated(0, None)
            else:  # a failed init container: what follows it never starts
                state = {"waiting": {"reason": "PodInitializing"}}
            statuses.append({"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                             "restartCount": 0, "started": False, "state": state})
        new["status"] = dict(new.get("status") or {}, phase="Succeeded" if succeeded else "Failed",
                             containerStatuses=statuses[len(inits):], conditions=[
                                 _condition("PodScheduled", "True"),
                                 _condition("Initialized", "True" if failed_at >= len(inits) else "False"),
                                 _condition("ContainersReady", "False", "PodCompleted"),
                                 _condition("Ready", "False", "PodCompleted")])
        if inits:
            new["status"]["initContainerStatuses"] = statuses[:len(inits)]
        self._write("v1", "Pod", new)

    # ---- StatefulSets and Deployments ----
    def _workloads(self) -> None:
        pods = self._list("v1", "Pod")
        for sts in self._list("apps/v1", "StatefulSet"):
            self._reconcile_workload(sts, [p for p in pods if _owned_by(p, sts)], stateful=True)
        for deploy in self._list("apps/v1", "Deployment"):
            self._reconcile_workload(deploy, [p for p in pods if _owned_by(p, deploy)], stateful=False)

    def _reconcile_workload(self, obj: dict[str, Any], pods: list[dict[str, Any]], stateful: bool) -> None:
        spec = obj.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        revision = f"{obj['metadata']['name']}-{_template_hash(template)}"
        label = "controller-revision-hash" if stateful else "pod-template-hash"
        pod_type = self._type("v1", "Pod")
        wanted_label = revision if stateful else revision.rsplit("-", 1)[1]
        for pod in pods:
            stale = (pod["metadata"].get("labels") or {}).get(label) != wanted_label
            extra = stateful and int(pod["metadata"]["name"].rsplit("-", 1)[1]) >= replicas
            if stale or extra:
                self.store.delete(pod_type, pod["metadata"]["namespace"], pod["metadata"]["name"])
        pods = [p for p in self._list("v1", "Pod") if _owned_by(p, obj)]
        if stateful:
            have = {p["metadata"]["name"] for p in pods}
            for i in range(replicas):
                name = f"{obj['metadata']['name']}-{i}"
                if name not in have:
                    self._create_workload_pod(obj, name, {label: revision,
                                                          "apps.kubernetes.io/pod-index": str(i),
                                                          "statefulset.kubernetes.io/pod-name": name})
                    break   # OrderedReady-like: one new pod per step
        else:
            for _ in range(max(0, replicas - len(pods))):
                short = revision.rsplit("-", 1)[1]
                self._create_workload_pod(obj, f"{obj['metadata']['name']}-{short}-{uuid.uuid4().hex[:5]}",
                                          {label: short})
        self._workload_status(obj, revision, replicas, stateful)

    def _create_workload_pod(self, obj: dict[str, Any], name: str, extra_labels: dict[str, str]) -> None:
        template = copy.deepcopy((obj.get("spec") or {}).get("template") or {})
        meta = template.get("metadata") or {}
        pod_meta = {"name": name, "namespace": obj["metadata"]["namespace"],
                    "labels": dict(meta.get("labels") or {}, **extra_labels), "ownerReferences": [_owner_ref(obj)]}
        if meta.get("annotations"):
            pod_meta["annotations"] = meta["annotations"]
        self.kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec") or {}})

    def _workload_status(self, obj: dict[str, Any], revision: str, replicas: int, stateful: bool) -> None:
        pods = [p for p in self._list("v1", "Pod") if _owned_by(p, obj)]
        ready = sum(1 for p in pods if _cond_status(p, "Ready") == "True")
        status: dict[str, Any] = {"observedGeneration": obj["metadata"].get("generation", 1), "replicas": len(pods),
                                  "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": len(pods)}
        if stateful:
            status.update(currentReplicas=len(pods), currentRevision=revision, updateRevision=revision,
                          collisionCount=0)
        else:
            status["unavailableReplicas"] = max(0, replicas - ready)
            available = ready >= replicas
            status["conditions"] = [
                _condition("Available", "True" if available else "False",
                           "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                           "Deployment has minimum availability." if available else
                           "Deployment does not have minimum availability."),
                _condition("Progressing", "True", "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                           f'ReplicaSet "{obj["metadata"]["name"]}" is progressing.')]
        for key in [k for k, v in status.items() if v == 0 and k in ("readyReplicas", "availableReplicas",
                                                                     "unavailableReplicas")]:
            status.pop(key)
        old = obj.get("status") or {}
        if {k: v for k, v in old.items() if k != "conditions"} == {k: v for k, v in status.items()
                                                                   if k != "conditions"}:
            return
        self._write(obj["apiVersion"], obj["kind"], dict(obj, status=status))

    # ---- scheduler and kubelet ----
    def _pods(self) -> None:
        nodes = self._list("v1", "Node")
        pods = self._list("v1", "Pod")
        if self.kubelet is not None:
            self.kubelet.forget({p["metadata"]["uid"] for p in pods})
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if phase in ("Succeeded", "Failed"):
                continue
            if not (pod.get("spec") or {}).get("nodeName"):
                self._schedule(pod, nodes, pods)
            elif self.kubelet is not None:
                status = self.kubelet.sync(pod)
                if status != pod.get("status"):
                    self._write("v1", "Pod", dict(pod, status=status))
            elif phase == "Pending" or (_cond_status(pod, "Ready") != "True" and not self._waiting(pod)):
                self._run(pod)

    def _failure(self, pod: dict[str, Any]) -> str | None:
        return self.pod_failure or (self.pod_failure_for(pod) if self.pod_failure_for else None)

    def _waiting(self, pod: dict[str, Any]) -> bool:
        return any("waiting" in (s.get("state") or {}) for s in (pod.get("status") or {}).get("containerStatuses") or []
                   ) and self._failure(pod) is not None

    def _gpus_used(self, node_name: str, pods: list[dict[str, Any]]) -> int:
        return sum(pod_gpus(p) for p in pods if (p.get("spec") or {}).get("nodeName") == node_name
                   and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))

    def _unschedulable_reasons(self, pod: dict[str, Any], nodes: list[dict[str, Any]],
                               pods: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, int]]:
        spec = pod.get("spec") or {}
        reasons: dict[str, int] = {}
        for node in nodes:
            if _cond_status(node, "Ready") != "True":
                reason = "node(s) were not ready"
            elif (node.get("spec") or {}).get("unschedulable"):
                reason = "node(s) were unschedulable"
            elif not selectors.node_affinity_matches(spec, node):
                reason = "node(s) didn't match Pod's node affinity/selector"
            else:
                untolerated = [t for t in (node.get("spec") or {}).get("taints") or []
                               if t.get("effect") in ("NoSchedule", "NoExecute")
                               and not selectors.tolerates(spec.get("tolerations"), t)]
                if untolerated:
                    t = untolerated[0]
                    reason = f"node(s) had untolerated taint {{{t.get('key')}: {t.get('value', '')}}}"
                else:
                    allocatable = int(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0))
                    if pod_gpus(pod) > allocatable - self._gpus_used(node["metadata"]["name"], pods):
                        reason = f"Insufficient {GPU}"
                    else:
                        return node, {}
            reasons[reason] = reasons.get(reason, 0) + 1
        return None, reasons

    def _schedule(self, pod: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        node, reasons = (None, {"forced by kube.controllers.pod_failure": len(nodes) or 1}) \
            if self._failure(pod) == "Unschedulable" else self._unschedulable_reasons(pod, nodes, pods)
        new = copy.deepcopy(pod)
        status = new.setdefault("status", {})
        status.setdefault("phase", "Pending")
        if node is None:
            detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "no nodes available to schedule pods"
            message = (f"0/{len(nodes)} nodes are available: {detail}. preemption: 0/{len(nodes)} nodes are "
                       f"available: {len(nodes)} Preemption is not helpful for scheduling.")
            cond = _condition("PodScheduled", "False", "Unschedulable", message)
            if [c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"] == [cond] or \
                    _same_condition(status, cond):
                return
            status["conditions"] = [cond]
        else:
            new["spec"]["nodeName"] = node["metadata"]["name"]
            status["conditions"] = [_condition("PodScheduled", "True")]
            status["hostIP"] = "10.224.0.4"
        self._write("v1", "Pod", new)

    def _run(self, pod: dict[str, Any]) -> None:
        new = copy.deepcopy(pod)
        status = new.setdefault("status", {})
        containers = (pod.get("spec") or {}).get("containers") or []
        status.update(startTime=status.get("startTime") or store.now(), podIP="10.244.0.10", hostIP="10.224.0.4")
        failure = self._failure(pod)
        if failure == "ImagePullBackOff":
            status["phase"] = "Pending"
            states = [{"waiting": {"reason": "ImagePullBackOff",
                                   "message": f'Back-off pulling image "{c.get("image", "")}"'}} for c in containers]
            ready, restarts = False, 0
        elif failure == "CrashLoopBackOff":
            status["phase"] = "Running"
            states = [{"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off 40s restarting failed container={c['name']} pod="
                                              f"{pod['metadata']['name']}"}} for c in containers]
            ready, restarts = False, 3
        else:
            status["phase"] = "Running"
            states = [{"running": {"startedAt": store.now()}} for _ in containers]
            ready, restarts = True, 0
        status["containerStatuses"] = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready, "restartCount": restarts,
             "started": ready, "state": state} | ({"lastState": {"terminated": {
                 "exitCode": 1, "reason": "Error", "startedAt": store.now(), "finishedAt": store.now()}}}
                 if restarts else {})
            for c, state in zip(containers, states)]
        inits = (pod.get("spec") or {}).get("initContainers") or []
        if inits and failure is None:  # the kubelet ran them to completion before the main containers
            status["initContainerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "restartCount": 0,
                 "started": False, "state": _terminated(0, None)} for c in inits]
        flag = "True" if ready else "False"
        reason = "" if ready else "ContainersNotReady"
        status["conditions"] = [_condition("PodScheduled", "True"), _condition("Initialized", "True"),
                                _condition("ContainersReady", flag, reason), _condition("Ready", flag, reason)]
        self._write("v1", "Pod", new)


def _terminated(exit_code: int, message: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                             "startedAt": store.now(), "finishedAt": store.now()}
    if message:
        state["message"] = message
    return {"terminated": state}


def _same_condition(status: dict[str, Any], cond: dict[str, Any]) -> bool:
    for have in status.get("conditions") or []:
        if have.get("type") == cond["type"]:
            return all(have.get(k) == cond.get(k) for k in ("status", "reason", "message"))
    return False
