"""The Kubernetes objects of a workspace, as plain dicts: pure functions, no cluster, no client.

``objects_for(workspace, config_maps, settings)`` gives every object the flow applies, in apply
order; ``kaiflow apply --dry-run -o yaml`` prints exactly that list, and the platform applies the
same dicts (with owner references once the Workspace CR has a uid). Choices, and why:

- **NodeClaims** (``karpenter.sh/v1``, cluster-scoped) are built as Kaito's ``GenerateNodeClaimManifest``
  builds them: the ``karpenter.sh/nodepool: kaito`` label and requirement (a fake pool, so Karpenter
  does not scale it), ``node.kubernetes.io/instance-type In [sku]``, ``kubernetes.io/os In [linux]``,
  the ``sku=gpu:NoSchedule`` taint, ``karpenter.sh/do-not-disrupt``, the workspace's name/namespace
  labels plus ``resource.labelSelector.matchLabels``, and an ephemeral-storage request from the plan.
  Kaito names them from a hash of the time; kaiflow hashes namespace/name/index instead, so a
  re-apply finds the same NodeClaims rather than making new ones. Cluster-scoped objects cannot be
  owned by a namespaced Workspace: ``teardown`` deletes them by label.
- **Inference** is always a StatefulSet (Kaito uses one for multi-node presets and a Deployment for
  one node): one shape for both, stable pod names for ``kaiflow logs``, ``replicas`` = nodes of the
  plan, one pod per node (pod anti-affinity). A ClusterIP Service named after the workspace maps
  port 80 to the server's 5000 (and 29500 for torch distributed, as in the seed's ``kubectl get svc``),
  with a headless Service for the StatefulSet.
- **Multi-node inference** (the plan needs more than one node): the same StatefulSet, every pod
  running the same command with ``--nnodes N --node-rank auto``; the rank is the pod's index
  (``POD_INDEX`` from the ``apps.kubernetes.io/pod-index`` label, else the host name's ordinal).
  Pod 0 is the leader: it serves, and its engine waits in the rendezvous on ``MASTER_PORT`` at
  ``<sts>-0.<headless>.<ns>.svc.cluster.local`` until every worker joined; the headless Service
  publishes not-ready addresses, so workers find the leader before it is Ready. The client Service
  selects pod 0 only (``statefulset.kubernetes.io/pod-name``), as Kaito's does. Every pod answers
  ``/health`` on the server port (a worker while its stage runs, the leader while the whole group
  serves), so one probe set fits both roles and a worker's readiness never waits on the leader:
  with ``podManagementPolicy: Parallel`` a rolling update replaces pods without the deadlock of
  workers that cannot be Ready until the leader is, nor a leader that cannot be until they are.
  Workers also hold a connection to the leader's membership port (``MASTER_PORT + 1``): a lost
  worker makes the leader exit, a lost leader makes the workers exit, and the pods restart as one
  group. Kaito v0.12 runs a Ray head and Ray workers here; kaiflow uses vLLM's own multi-node launcher
  (see ``serving.multinode``: vLLM's CPU build refuses Ray, and one process tree is simpler to
  keep alive).
- **Tuning** is a Job with ``backoffLimit: 0`` (a failed run is reported, not silently repeated) and
  a TTL: init containers pull the data (``python -m infra.pod pull-data``) and run ``python -m
  tuning`` on the GPU; the main container pushes the adapter (``python -m infra.pod push-adapter``)
  and leaves the pinned reference in its termination message. The Job is named after the cache key,
  which it also carries as the ``kaiflow.io/cache-key`` label.
- **Retrain** (``flows.retrain``): the candidate is the same tuning Job pushing to
  ``candidate_reference`` (``<tag>-candidate-<key[:12]>``) under ``candidate_job_name``; the
  **evaluation Job** pulls the data and the adapter images by digest (init containers) and runs
  ``python -m tuning.evaluate --summary /dev/termination-log`` on a GPU: the scores, without
  samples, come back in its termination message (at most 4096 bytes).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import presets
from workspace import plan as plan_mod
from workspace import spec

WORKSPACE_LABEL = "kaito.sh/workspace"
WORKSPACE_NS_LABEL = "kaito.sh/workspacenamespace"
PART_LABEL = "kaiflow.io/part"
CACHE_KEY_LABEL = "kaiflow.io/cache-key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kaiflow"}
GPU = "nvidia.com/gpu"
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
SERVER_PORT = 5000
TORCHRUN_PORT = 29500
MASTER_PORT = TORCHRUN_PORT  # a multi-node group's rendezvous on its leader (torch.distributed)
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
INFERENCESET_LABEL = "inferenceset.kaito.sh/created-by"  # infra.kube.inferenceset.CREATED_BY
NODEPOOL_LABEL = "karpenter.sh/nodepool"
KAITO_NODEPOOL = "kaito"
NODECLASS = {"azure": ("karpenter.azure.com", "AKSNodeClass"), "aws": ("karpenter.k8s.aws", "EC2NodeClass")}
DATA_DIR, OUTPUT_DIR, ADAPTER_DIR, CONFIG_DIR = "/mnt/data", "/mnt/output", "/mnt/adapter", "/mnt/config"
PLAN_CONFIG_DIR = "/mnt/plan"
VOLUME_ADAPTERS_DIR = "/mnt/adapter-volumes"  # apart from ADAPTER_DIR: no mount inside a read-only one
INPUT_VOLUME_DIR, SECRETS_DIR = "/mnt/input", "/mnt/secrets"
JOB_TTL_S = 24 * 3600
MAX_NAME = 63


# --------------------------------------------------------------------------- names and labels
def short_hash(*parts: str, n: int = 9) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def dns_label(text: str, limit: int = MAX_NAME) -> str:
    """``text`` cut to ``limit`` characters without a trailing '-' or '.' (names used in labels)."""
    return text[:limit].rstrip("-.").replace(".", "-")


def nodeclaim_name(namespace: str, name: str, index: int) -> str:
    return f"ws{short_hash(namespace, name)}-{index}"


def job_name(name: str, cache_key: str | None) -> str:
    return f"{dns_label(name, 40)}-tune-{(cache_key or 'pending')[:10]}"


def inference_config_name(name: str) -> str:
    return f"{dns_label(name, 40)}-inference-params"


def tuning_result_name(name: str) -> str:
    return f"{dns_label(name, 40)}-tuning-result"


def candidate_job_name(name: str, cache_key: str) -> str:
    """A retrain candidate's tuning Job: never the name of an apply's Job (whose push command differs
    and whose pod template cannot be changed in place)."""
    return f"{dns_label(name, 40)}-cand-{cache_key[:10]}"


def candidate_result_name(name: str) -> str:
    return f"{dns_label(name, 40)}-candidate-result"


def retrain_config_name(name: str) -> str:
    """The ConfigMap holding a retrain candidate's training config (the held-out split written in):
    never the user's own ConfigMap, which ``kaiflow apply`` trains with."""
    return f"{dns_label(name, 40)}-retrain-config"


def evaluation_job_name(name: str, cache_key: str, serving_digest: str) -> str:
    return f"{dns_label(name, 40)}-eval-{short_hash(cache_key, serving_digest, n=10)}"


def candidate_reference(output_image: str, cache_key: str) -> str:
    """Where a retrain candidate is pushed: the output repository, tag ``<tag>-candidate-<key[:12]>``
    (a valid tag: at most 128 characters of [A-Za-z0-9_.-]); the output tag itself stays put until
    the evaluation says promote."""
    base = output_image.split("@", 1)[0]
    if ":" in base[base.rfind("/") + 1:]:
        repo, tag = base.rsplit(":", 1)
    else:  # no tag (a registry port is not one)
        repo, tag = base, "latest"
    suffix = f"-candidate-{cache_key[:12]}"
    return f"{repo}:{tag[:128 - len(suffix)]}{suffix}"


def labels(ws: spec.Workspace, part: str | None = None) -> dict[str, str]:
    out = {**(ws.metadata.labels or {}), WORKSPACE_LABEL: dns_label(ws.name), **MANAGED_BY}
    if part:
        out[PART_LABEL] = part
    return out


def selector(ws: spec.Workspace, part: str) -> dict[str, str]:
    return {WORKSPACE_LABEL: dns_label(ws.name), PART_LABEL: part}


def meta(ws: spec.Workspace, name: str, namespace: str | None, part: str | None = None,
         owner: dict | None = None, extra_labels: dict | None = None) -> dict:
    m: dict[str, Any] = {"name": name, "labels": {**labels(ws, part), **(extra_labels or {})}}
    if namespace is not None:
        m["namespace"] = namespace
    if owner:
        m["ownerReferences"] = [owner]
    return m


def owner_reference(cr: dict) -> dict:
    """An owner reference to the applied Workspace CR (needs its uid)."""
    return {"apiVersion": cr["apiVersion"], "kind": "Workspace", "name": cr["metadata"]["name"],
            "uid": cr["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


# --------------------------------------------------------------------------- sizing helpers
def _part(plan: plan_mod.WorkspacePlan, name: str) -> plan_mod.PartPlan | None:
    return next((p for p in plan.parts if p.part == name), None)


def node_count(ws: spec.Workspace, plan: plan_mod.WorkspacePlan) -> int:
    """Nodes the workspace needs: the inference plan's (the model's need decides, raising or lowering
    ``resource.count`` as Kaito's estimator does), else ``resource.count``, else 1."""
    inf = _part(plan, "inference")
    if inf and inf.fits and inf.details.get("nodes"):
        return int(inf.details["nodes"])
    return ws.resource.count if ws.resource and ws.resource.count else 1


def gpus_per_pod(plan: plan_mod.WorkspacePlan, part: str) -> int:
    """GPUs a pod requests: every GPU of the node for inference (the plan's layout uses them all),
    one for tuning (kaiflow's tuning program runs on one GPU), none where the plan sized a CPU."""
    p = _part(plan, part)
    if p and p.details.get("device") == "cpu":
        return 0
    if part == "inference" and p and p.fits:
        return int(p.details.get("gpus_per_node") or 1)
    return 1


def storage_gib(ws: spec.Workspace, plan: plan_mod.WorkspacePlan) -> int:
    inf = _part(plan, "inference")
    if inf and inf.details.get("disk_gib"):
        return int(inf.details["disk_gib"])
    model = next((p.model for p in plan.parts if presets.is_preset(p.model)), None)
    weights = presets.get_model(model).weights_gb if model else 30.0
    return max(50, int(math.ceil(weights * 2.5 + 20)))


def cloud_of(ws: spec.Workspace) -> str:
    try:
        return presets.get_sku(ws.instance_type or "").cloud
    except presets.UnknownSku:
        return "azure"


# --------------------------------------------------------------------------- objects
def workspace_cr(ws: spec.Workspace, namespace: str) -> dict:
    """The Workspace custom resource as the user wrote it (status and server fields dropped)."""
    body = ws.to_dict()
    body.pop("status", None)
    m = body["metadata"]
    body["metadata"] = {k: v for k, v in {"name": m["name"], "namespace": namespace, "labels": m.get("labels"),
                                          "annotations": m.get("annotations")}.items() if v}
    return body


def config_map(ws: spec.Workspace, name: str, data: dict[str, str], namespace: str, owner: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(ws, name, namespace, "config", owner), "data": dict(data)}


def nodeclaims(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str) -> list[dict]:
    if not ws.instance_type or ws.instance_type == plan_mod.LOCAL:  # "local": this machine, no cloud size
        return []
    group, kind = NODECLASS.get(cloud_of(ws), NODECLASS["azure"])
    match = dict(ws.resource.label_selector.match_labels or {}) if ws.resource and ws.resource.label_selector else {}
    claim_labels = {NODEPOOL_LABEL: KAITO_NODEPOOL, WORKSPACE_LABEL: dns_label(ws.name),
                    WORKSPACE_NS_LABEL: namespace, **MANAGED_BY, **match}
    requirements = [
        {"key": NODEPOOL_LABEL, "operator": "In", "values": [KAITO_NODEPOOL]},
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [ws.instance_type]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    if cloud_of(ws) == "azure":
        requirements.append({"key": "karpenter.azure.com/sku-name", "operator": "In", "values": [ws.instance_type]})
    else:
        requirements.append({"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]})
    return [{
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": nodeclaim_name(namespace, ws.name, i), "labels": dict(claim_labels),
                     "annotations": {"karpenter.sh/do-not-disrupt": "true"}},
        "spec": {
            "nodeClassRef": {"group": group, "kind": kind, "name": "default"},
            "taints": [dict(GPU_TAINT)],
            "requirements": [dict(r) for r in requirements],
            "resources": {"requests": {"ephemeral-storage": f"{storage_gib(ws, plan)}Gi"}},
        },
    } for i in range(node_count(ws, plan))]


def node_affinity(ws: spec.Workspace, node_selector: dict[str, str] | None = None) -> dict:
    """Required node affinity: the workspace's labelSelector (as Kaito's pods have it), plus the
    instance type and any selector the provisioner returned (an AKS agent pool's)."""
    exprs: list[dict] = []
    sel = ws.resource.label_selector if ws.resource else None
    for k, v in sorted(((sel.match_labels if sel else None) or {}).items()):
        exprs.append({"key": k, "operator": "In", "values": [v]})
    for e in (sel.match_expressions if sel else None) or []:
        exprs.append(e.to_dict())
    for k, v in sorted((node_selector or {}).items()):
        if not any(x["key"] == k for x in exprs):
            exprs.append({"key": k, "operator": "In", "values": [v]})
    if not exprs:
        exprs.append({"key": WORKSPACE_LABEL, "operator": "In", "values": [dns_label(ws.name)]})
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}


def tolerations(extra: list[dict] | None = None) -> list[dict]:
    """``sku=gpu:NoSchedule`` (Kaito's taint), ``nvidia.com/gpu`` (common on GPU pools) and the
    provisioner's extra ones (AKS spot)."""
    return [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
            {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}, *[dict(t) for t in extra or []]]


def _gpu_resources(n: int) -> dict:
    return {"requests": {GPU: str(n)}, "limits": {GPU: str(n)}} if n else {}


# The Pod Security "restricted" level (a namespace labelled pod-security.kubernetes.io/enforce=restricted
# refuses pods without these); the images run as UID 1000 (deployments/images).
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# CPU and memory requests, so the scheduler, LimitRanges and ResourceQuotas see the pods: small for the
# steps that move files, more for the one that loads the model (the GPU request sizes the node itself).
STEP_REQUESTS = {"cpu": "250m", "memory": "512Mi"}
MAIN_REQUESTS = {"cpu": "1", "memory": "4Gi"}


def restricted(pod: dict, main: str) -> dict:
    """``pod`` with the restricted securityContext and CPU/memory requests on every container
    (``main``: the container that loads the model). What the user set is kept."""
    pod["securityContext"] = {**POD_SECURITY, **pod.get("securityContext", {})}
    for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        c["securityContext"] = {**json.loads(json.dumps(CONTAINER_SECURITY)), **c.get("securityContext", {})}
        resources = c.setdefault("resources", {})
        resources["requests"] = {**(MAIN_REQUESTS if c["name"] == main else STEP_REQUESTS), **resources.get("requests", {})}
    return pod


def volume_name(prefix: str, text: str) -> str:
    """A volume name (a DNS-1123 label) for ``text`` (a secret's name, even Kaito's placeholder
    ``ACR_REGISTRY_SECRET_HERE``): lower case, other characters as '-', a hash when that changed it."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    suffix = "" if clean == text else "-" + short_hash(text, n=6)
    return f"{prefix}-{clean[:MAX_NAME - len(prefix) - 1 - len(suffix)].rstrip('-')}{suffix}"


def _secret_volume(secret: str) -> dict:
    """A docker-config secret (``kubernetes.io/dockerconfigjson``) mounted as ``config.json``."""
    return {"name": volume_name("secret", secret),
            "secret": {"secretName": secret, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}


def _secret_mount(secret: str) -> dict:
    return {"name": volume_name("secret", secret), "mountPath": f"{SECRETS_DIR}/{secret}", "readOnly": True}


def _model_env(preset: spec.PresetSpec | None) -> list[dict]:
    secret = preset.preset_options.model_access_secret if preset and preset.preset_options else None
    if not secret:
        return []
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "HF_TOKEN"}}}]


def data_source(ws: spec.Workspace) -> dict:
    """What the pull-data init container pulls (``infra.datasets`` source shape)."""
    inp = ws.tuning.input
    if inp.urls:
        return {"urls": list(inp.urls)}
    if inp.image:
        return {"image": inp.image}
    return {"volume": INPUT_VOLUME_DIR}


def _pull_data(ws: spec.Workspace, volumes: list[dict], allow_private_urls: bool = False) -> tuple[list[str], list[dict]]:
    """The pull-data init container's command and mounts (its volumes appended to ``volumes``).
    ``allow_private_urls``: the flow's URL policy (``KAIFLOW_ALLOW_PRIVATE_URLS``) goes with the
    command, so the pod does not refuse a data server the flow admitted (e.g. one in the cluster)."""
    t = ws.tuning
    pull_mounts = [{"name": "data", "mountPath": DATA_DIR}]
    pull_cmd = ["python", "-m", "infra.pod", "pull-data", "--source", json.dumps(data_source(ws), sort_keys=True),
                "--dest", DATA_DIR]
    if allow_private_urls:
        pull_cmd.append("--allow-private-urls")
    if t.input.volume_source:
        volumes.append({"name": "input", **t.input.volume_source.to_dict()})
        pull_mounts.append({"name": "input", "mountPath": INPUT_VOLUME_DIR, "readOnly": True})
    for s in t.input.image_pull_secrets or []:
        volumes.append(_secret_volume(s))
        pull_mounts.append(_secret_mount(s))
        pull_cmd += ["--docker-config", f"{SECRETS_DIR}/{s}/config.json"]
    return pull_cmd, pull_mounts


def _image_pull_secrets(ws: spec.Workspace) -> list[dict]:
    opts = ws.tuning.preset.preset_options
    return [{"name": s} for s in (opts.image_pull_secrets or [])] if opts and opts.image_pull_secrets else []


EVAL_ADAPTERS_DIR, TERMINATION_LOG = "/mnt/adapters", "/dev/termination-log"


def tuning_job(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str, image: str, *,
               cache_key: str | None = None, owner: dict | None = None,
               node_selector: dict[str, str] | None = None, extra_tolerations: list[dict] | None = None,
               output_image: str | None = None, allow_private_urls: bool = False) -> dict:
    """The tuning Job. ``output_image``: push there instead of ``tuning.output.image`` (a retrain
    candidate, ``candidate_reference``); the Job is then named ``candidate_job_name``.
    ``allow_private_urls``: the pull-data container may read data on private addresses."""
    t = ws.tuning
    model = t.preset.name
    volumes: list[dict] = [{"name": "data", "emptyDir": {}}, {"name": "output", "emptyDir": {}},
                           {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    pull_cmd, pull_mounts = _pull_data(ws, volumes, allow_private_urls)

    tune_cmd = ["python", "-m", "tuning", "--data", DATA_DIR, "--model", model, "--method", t.method,
                "--output", f"{OUTPUT_DIR}/adapter"]
    tune_mounts = [{"name": "data", "mountPath": DATA_DIR, "readOnly": True}, {"name": "output", "mountPath": OUTPUT_DIR},
                   {"name": "dshm", "mountPath": "/dev/shm"}]
    if t.config:
        volumes.append({"name": "config", "configMap": {"name": t.config}})
        tune_mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
        tune_cmd += ["--config", f"{CONFIG_DIR}/training_config.yaml"]

    push_cmd = ["python", "-m", "infra.pod", "push-adapter", "--dir", f"{OUTPUT_DIR}/adapter", "--model", model]
    push_mounts = [{"name": "output", "mountPath": OUTPUT_DIR, "readOnly": True}]
    if output_image or t.output.image:
        push_cmd += ["--image", output_image or t.output.image]
        if t.output.image_push_secret:
            volumes.append(_secret_volume(t.output.image_push_secret))
            push_mounts.append(_secret_mount(t.output.image_push_secret))
            push_cmd += ["--docker-config", f"{SECRETS_DIR}/{t.output.image_push_secret}/config.json"]
    else:
        volumes.append({"name": "results", **t.output.volume_source.to_dict()})
        push_mounts.append({"name": "results", "mountPath": "/mnt/results"})
        push_cmd += ["--volume-dir", "/mnt/results"]

    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    return _job(ws, candidate_job_name(ws.name, cache_key or "") if output_image else job_name(ws.name, cache_key),
                namespace, "tuning", cache_key, owner, node_selector, extra_tolerations, volumes, init=[
                    {"name": "pull-data", "image": image, "command": pull_cmd, "env": env, "volumeMounts": pull_mounts},
                    {"name": "tune", "image": image, "command": tune_cmd, "env": env + _model_env(t.preset),
                     "resources": _gpu_resources(gpus_per_pod(plan, "tuning")), "volumeMounts": tune_mounts},
                ], main={"name": "push-adapter", "image": image, "command": push_cmd, "env": env,
                         "volumeMounts": push_mounts})


def _job(ws: spec.Workspace, name: str, namespace: str, component: str, cache_key: str | None, owner: dict | None,
         node_selector: dict[str, str] | None, extra_tolerations: list[dict] | None, volumes: list[dict], *,
         init: list[dict], main: dict) -> dict:
    """A run-once Job on the workspace's GPU nodes: no retries, cleaned up after JOB_TTL_S, labelled
    with the cache key; its main container's termination message carries the result to the flow."""
    key_label = {CACHE_KEY_LABEL: cache_key[:63]} if cache_key else {}
    pod = {
        "restartPolicy": "Never",
        "affinity": node_affinity(ws, node_selector),
        "tolerations": tolerations(extra_tolerations),
        **({"imagePullSecrets": secrets} if (secrets := _image_pull_secrets(ws)) else {}),
        "initContainers": init,
        "containers": [{**main, "terminationMessagePath": TERMINATION_LOG,
                        "terminationMessagePolicy": "FallbackToLogsOnError"}],
        "volumes": volumes,
    }
    heavy = next((c["name"] for c in [*init, main] if c["name"] in ("tune", "evaluate")), main["name"])  # loads the model
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": meta(ws, name, namespace, component, owner, key_label or None),
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {
                "metadata": {"labels": {**labels(ws, component), **key_label}},
                "spec": restricted(pod, heavy),
            },
        },
    }


def evaluation_job(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str, image: str, *,
                   name: str, cache_key: str, adapters: dict[str, str], config: str, owner: dict | None = None,
                   node_selector: dict[str, str] | None = None, extra_tolerations: list[dict] | None = None,
                   allow_private_urls: bool = False) -> dict:
    """The retrain evaluation Job: init containers pull the data (as the tuning Job does) and the
    adapter images by digest (``adapters``: name -> pinned image, e.g. serving and candidate); the
    main container runs ``python -m tuning.evaluate`` on the GPU with the candidate's training config
    (ConfigMap ``config``) and writes a compact summary of the scores (no samples: a termination
    message holds at most 4096 bytes) to its termination message, which the flow reads."""
    t = ws.tuning
    volumes: list[dict] = [{"name": "data", "emptyDir": {}}, {"name": "adapters", "emptyDir": {}},
                           {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                           {"name": "config", "configMap": {"name": config}}]
    pull_cmd, pull_mounts = _pull_data(ws, volumes, allow_private_urls)
    fetch_cmd = ["python", "-m", "infra.pod", "pull-adapters", "--dest", EVAL_ADAPTERS_DIR]
    fetch_mounts = [{"name": "adapters", "mountPath": EVAL_ADAPTERS_DIR}]
    for adapter, ref in adapters.items():
        fetch_cmd += ["--adapter", f"{adapter}={ref}"]
    secret = t.output.image_push_secret
    if secret:
        if not any(v["name"] == _secret_volume(secret)["name"] for v in volumes):
            volumes.append(_secret_volume(secret))
        fetch_mounts.append(_secret_mount(secret))
        fetch_cmd += ["--docker-config", f"{SECRETS_DIR}/{secret}/config.json"]
    eval_cmd = ["python", "-m", "tuning.evaluate", "--model", t.preset.name, "--data", DATA_DIR,
                "--config", f"{CONFIG_DIR}/training_config.yaml", "--method", t.method, "--summary", TERMINATION_LOG]
    for adapter in adapters:
        eval_cmd += ["--adapter", f"{adapter}={EVAL_ADAPTERS_DIR}/{adapter}"]
    eval_mounts = [{"name": "data", "mountPath": DATA_DIR, "readOnly": True},
                   {"name": "adapters", "mountPath": EVAL_ADAPTERS_DIR, "readOnly": True},
                   {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                   {"name": "dshm", "mountPath": "/dev/shm"}]
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    return _job(ws, name, namespace, "evaluation", cache_key, owner, node_selector, extra_tolerations, volumes, init=[
        {"name": "pull-data", "image": image, "command": pull_cmd, "env": env, "volumeMounts": pull_mounts},
        {"name": "pull-adapters", "image": image, "command": fetch_cmd, "env": env, "volumeMounts": fetch_mounts},
    ], main={"name": "evaluate", "image": image, "command": eval_cmd, "env": env + _model_env(t.preset),
             "resources": _gpu_resources(gpus_per_pod(plan, "tuning")), "volumeMounts": eval_mounts})


def inference_params(ws: spec.Workspace, plan: plan_mod.WorkspacePlan) -> dict[str, Any]:
    """vLLM arguments from the plan: max-model-len (``auto`` unless the user's config sets one),
    gpu-memory-utilization, the layout over the pod's GPUs (tensor / pipeline / data parallel) and
    dtype. Empty where nothing was sized for a GPU (a CPU host, a custom template)."""
    inf = _part(plan, "inference")
    if not inf or not inf.fits:
        return {}
    return dict(inf.details.get("vllm_args") or {})


def inference_config_data(ws: spec.Workspace, plan: plan_mod.WorkspacePlan) -> dict[str, str]:
    import yaml

    return {"inference_config.yaml": yaml.safe_dump({"vllm": inference_params(ws, plan)}, sort_keys=True)}


def adapter_entries(ws: spec.Workspace, fresh_reference: str | None = None) -> list[dict]:
    """Adapters to serve: name, image (the fresh digest-pinned one for a just-tuned adapter), strength, secrets."""
    out = []
    for a in ws.effective_adapters():
        image = a.source.image
        if fresh_reference and ws.tuning and image == ws.tuning.output.image:
            image = fresh_reference
        out.append({"name": a.source.name, "image": image, "strength": a.strength_value,
                    "secrets": list(a.source.image_pull_secrets or []),
                    "volume": a.source.volume_source.to_dict() if a.source.volume_source else None})
    return out


def inference_statefulset(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str, image: str, *,
                          adapters: list[dict] | None = None, owner: dict | None = None,
                          node_selector: dict[str, str] | None = None, extra_tolerations: list[dict] | None = None) -> dict:
    inf = ws.inference
    adapters = adapter_entries(ws) if adapters is None else adapters
    replicas = node_count(ws, plan)
    pod_labels = {**labels(ws, "inference"), **selector(ws, "inference")}
    affinity = node_affinity(ws, node_selector)
    if replicas > 1:
        affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": selector(ws, "inference")}, "topologyKey": "kubernetes.io/hostname"}]}
    if inf.template:
        pod_spec = json.loads(json.dumps(inf.template.get("spec", {})))
        pod_spec.setdefault("tolerations", []).extend(tolerations(extra_tolerations))
        pod_spec.setdefault("affinity", affinity)
        template = {"metadata": {"labels": {**(inf.template.get("metadata") or {}).get("labels", {}), **pod_labels}},
                    "spec": pod_spec}
    else:
        template = {"metadata": {"labels": pod_labels},
                    "spec": _serving_pod(ws, plan, image, adapters, affinity, extra_tolerations, namespace=namespace)}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta(ws, dns_label(ws.name), namespace, "inference", owner),
        "spec": {
            "replicas": replicas,
            "serviceName": headless_name(ws),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(ws, "inference")},
            "template": template,
        },
    }


def headless_name(ws: spec.Workspace) -> str:
    return f"{dns_label(ws.name, 54)}-headless"


def leader_pod(ws: spec.Workspace) -> str:
    """The name of a multi-node group's leader: the StatefulSet's pod 0."""
    return f"{dns_label(ws.name)}-0"


def leader_address(ws: spec.Workspace, namespace: str) -> str:
    """The leader's stable DNS name through the headless Service (resolves before it is Ready)."""
    return f"{leader_pod(ws)}.{headless_name(ws)}.{namespace}.svc.cluster.local"


def group_layout(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str) -> list[str]:
    """What ``kaiflow plan`` says of a multi-node group: who serves, who joins where, on which ports."""
    nodes = node_count(ws, plan)
    if nodes <= 1 or not ws.inference or ws.inference.template:
        return []
    workers = "pod 1 runs a pipeline stage and joins" if nodes == 2 else f"pods 1-{nodes - 1} run pipeline stages and join"
    return [f"group: {nodes} pods of StatefulSet {dns_label(ws.name)}; pod 0 is the leader: it serves HTTP on :{SERVER_PORT} "
            f"(Service {dns_label(ws.name)} port 80 selects pod 0 only)",
            f"group: {workers} the leader at {leader_address(ws, namespace)}:{MASTER_PORT} "
            f"(Service {headless_name(ws)}, not-ready addresses published); each keeps a connection to its :{MASTER_PORT + 1} "
            "(a member that leaves restarts the group); vLLM's multi-node launcher, no Ray"]


def group_args(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str) -> list[str]:
    """``python -m serving`` arguments that make the pods one multi-node group (none for one node)."""
    nodes = node_count(ws, plan)
    if nodes <= 1:
        return []
    return ["--nnodes", str(nodes), "--node-rank", "auto", "--master-addr", leader_address(ws, namespace),
            "--master-port", str(MASTER_PORT)]


def _serving_pod(ws: spec.Workspace, plan: plan_mod.WorkspacePlan, image: str, adapters: list[dict], affinity: dict,
                 extra_tolerations: list[dict] | None = None, namespace: str = "default") -> dict:
    model = ws.inference.preset.name
    # a replica of an InferenceSet serves under the set's name (as Kaito's vLLM command does)
    served = (ws.metadata.labels or {}).get(INFERENCESET_LABEL) or model
    cmd = ["python", "-m", "serving", "--model", model, "--host", "0.0.0.0", "--port", str(SERVER_PORT),
           "--served-model-name", served,
           "--engine", "transformers" if ws.runtime == "transformers" else "auto"]  # kaito.sh/runtime
    for a in adapters:
        where = VOLUME_ADAPTERS_DIR if a.get("volume") else ADAPTER_DIR
        cmd += ["--adapter", f"{a['name']}={where}/{a['name']}:{a['strength']:g}"]
    # the plan's engine arguments first, the user's inference ConfigMap (if any) last: its keys win
    cmd += ["--config", f"{PLAN_CONFIG_DIR}/inference_config.yaml"]
    group = group_args(ws, plan, namespace)
    cmd += group
    volumes = [{"name": "plan-config", "configMap": {"name": inference_config_name(ws.name)}},
               {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "plan-config", "mountPath": PLAN_CONFIG_DIR, "readOnly": True},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    if ws.inference.config:
        cmd += ["--config", f"{CONFIG_DIR}/inference_config.yaml"]
        volumes.insert(0, {"name": "config", "configMap": {"name": ws.inference.config}})
        mounts.insert(0, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    init: list[dict] = []
    # adapters on a volume (Kaito #1877: e.g. a tuning Job's output PVC) are mounted where the server
    # looks for them, read only; only image adapters need the pull step
    for a in (a for a in adapters if a.get("volume")):
        vol = volume_name("adapter-volume", a["name"])
        volumes.append({"name": vol, **a["volume"]})
        mounts.append({"name": vol, "mountPath": f"{VOLUME_ADAPTERS_DIR}/{a['name']}", "readOnly": True})
    pulled = [a for a in adapters if not a.get("volume")]
    if pulled:
        volumes.append({"name": "adapters", "emptyDir": {}})
        mounts.append({"name": "adapters", "mountPath": ADAPTER_DIR, "readOnly": True})
        pull = ["python", "-m", "infra.pod", "pull-adapters", "--dest", ADAPTER_DIR]
        pull_mounts = [{"name": "adapters", "mountPath": ADAPTER_DIR}]
        secrets = sorted({s for a in pulled for s in a["secrets"]})
        for a in pulled:
            pull += ["--adapter", f"{a['name']}={a['image']}"]
        for s in secrets:
            volumes.append(_secret_volume(s))
            pull_mounts.append(_secret_mount(s))
            pull += ["--docker-config", f"{SECRETS_DIR}/{s}/config.json"]
        init.append({"name": "pull-adapters", "image": image, "command": pull, "volumeMounts": pull_mounts})
    probe = {"httpGet": {"path": "/health", "port": SERVER_PORT}}
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if group:  # the node rank (Kaito sets POD_INDEX the same way)
        env.append({"name": "POD_INDEX", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}}})
    container = {
        "name": "inference", "image": image, "command": cmd,
        "env": env + _model_env(ws.inference.preset),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"},
                  {"name": "torchrun", "containerPort": TORCHRUN_PORT, "protocol": "TCP"}],
        "resources": _gpu_resources(gpus_per_pod(plan, "inference")),
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 20, "failureThreshold": 6},
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {"affinity": affinity, "tolerations": tolerations(extra_tolerations), "containers": [container], "volumes": volumes}
    if init:
        pod["initContainers"] = init
    opts = ws.inference.preset.preset_options
    if opts and opts.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in opts.image_pull_secrets]
    return restricted(pod, "inference")


def inference_services(ws: spec.Workspace, namespace: str, owner: dict | None = None, nodes: int = 1) -> list[dict]:
    """The client Service (port 80; a multi-node group's leader only) and the headless one."""
    sel = selector(ws, "inference")
    client_sel = {**sel, POD_NAME_LABEL: leader_pod(ws)} if nodes > 1 else sel
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(ws, dns_label(ws.name), namespace, "inference", owner),
         "spec": {"type": "ClusterIP", "selector": client_sel, "ports": [
             {"name": "http", "port": 80, "targetPort": SERVER_PORT, "protocol": "TCP"},
             {"name": "torchrun", "port": TORCHRUN_PORT, "targetPort": TORCHRUN_PORT, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(ws, headless_name(ws), namespace, "inference", owner),
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": sel,
                  "ports": [{"name": "torchrun", "port": TORCHRUN_PORT, "targetPort": TORCHRUN_PORT, "protocol": "TCP"}]}},
    ]


def file_config_maps(ws: spec.Workspace, config_maps: dict[str, dict[str, str]], namespace: str,
                     owner: dict | None = None) -> list[dict]:
    """ConfigMaps from the workspace's file that it references (others are read from the cluster)."""
    names = [n for n in ((ws.tuning and ws.tuning.config), (ws.inference and ws.inference.config)) if n]
    return [config_map(ws, n, config_maps[n], namespace, owner) for n in dict.fromkeys(names) if n in config_maps]


def objects_for(workspace: spec.Workspace, config_maps: dict[str, dict[str, str]] | None, settings: Any, *,
                namespace: str | None = None, plan: plan_mod.WorkspacePlan | None = None,
                cache_key: str | None = None, fresh_reference: str | None = None, owner: dict | None = None,
                node_selector: dict[str, str] | None = None, extra_tolerations: list[dict] | None = None,
                provisioner: str | None = None) -> list[dict]:
    """Every object the flow applies for ``workspace``, in apply order: the Workspace CR, its
    ConfigMaps, NodeClaims (``provisioner`` karpenter; default ``settings.provisioner``), the tuning
    Job, the inference config, StatefulSet and Services."""
    ws = workspace
    ns = namespace or ws.metadata.namespace or getattr(settings, "namespace", None) or "default"
    plan = plan or plan_mod.plan_workspace(ws, "kubernetes", config_maps=config_maps)
    image = settings.image
    objs = [workspace_cr(ws, ns), *file_config_maps(ws, config_maps or {}, ns, owner)]
    if (provisioner or getattr(settings, "provisioner", "karpenter")) == "karpenter":
        objs += nodeclaims(ws, plan, ns)
    if ws.tuning:
        objs.append(tuning_job(ws, plan, ns, image, cache_key=cache_key, owner=owner, node_selector=node_selector,
                               extra_tolerations=extra_tolerations,
                               allow_private_urls=bool(getattr(settings, "allow_private_urls", False))))
    if ws.inference:
        if ws.inference.preset:
            objs.append(config_map(ws, inference_config_name(ws.name), inference_config_data(ws, plan), ns, owner))
        objs.append(inference_statefulset(ws, plan, ns, image, adapters=adapter_entries(ws, fresh_reference),
                                          owner=owner, node_selector=node_selector, extra_tolerations=extra_tolerations))
        objs += inference_services(ws, ns, owner, nodes=node_count(ws, plan) if not ws.inference.template else 1)
    return objs


def render(workspaces: list[spec.Workspace], config_maps: dict[str, dict[str, str]], settings: Any,
           fmt: str = "yaml", provisioner: str | None = None) -> str:
    """What ``kaiflow apply --dry-run`` prints: every object of every workspace, multi-document YAML
    (or a JSON list). Owner references and the tuning cache key are known only at run time."""
    objs = [o for ws in workspaces for o in objects_for(ws, config_maps, settings, provisioner=provisioner)]
    if fmt == "json":
        return json.dumps(objs, indent=2) + "\n"
    import yaml

    class Plain(yaml.SafeDumper):
        """Every object written out in full: no ``&id001`` anchors and ``*id001`` aliases where two
        fields share one Python object (a reader of a manifest expects plain YAML)."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    docs = []
    for obj in objs:
        text = yaml.dump(obj, Dumper=Plain, sort_keys=False)
        if obj["kind"] == "Job" and obj["metadata"]["name"].endswith("-tune-pending"):
            text = (f"# the tuning Job: at apply its name ends with the first 10 hex digits of the tuning cache key\n"
                    f"# (dataset digest + training config + model, known once the data is pulled), not 'pending'\n{text}")
        docs.append(text)
    return "---\n".join(docs)
