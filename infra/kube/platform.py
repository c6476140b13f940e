"""The kubernetes/aks platform as the tasks see it: provision, run_tuning, deploy, teardown, logs.

Each step applies its objects (``manifests``) with server-side apply, waits on them with watches
(``apply.wait_for``), and records its condition twice: in the flow's local record (what ``kaiflow
get`` reads without a cluster) and on the Workspace custom resource's status subresource (what
``kubectl get workspace`` shows). Failures become kaiflow errors whose ``reason`` lands in the
condition: capacity (quota, SKU unavailable) and Job failures are not transient, so Prefect does not
retry them into a storm; API hiccups are.

Where the step's data lives between flow runs:
- the Workspace CR: spec and status; owner of everything namespaced the workspace creates;
- ``<name>-tuning-result`` ConfigMap: the cache key and the digest-pinned adapter image of the
  last successful tuning Job, so an identical re-apply reuses it (the Job itself goes after a TTL);
- the local record (KAIFLOW_HOME): the provisioner's node selector/tolerations (aks), endpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from infra import local_state
from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import manifests
from workspace import errors, plan as plan_mod, settings as settings_mod, spec, status

log = logging.getLogger(__name__)
POD_FAILURES = {"ImagePullBackOff": "ImagePullBackOff", "ErrImagePull": "ImagePullBackOff",
                "InvalidImageName": "ImagePullBackOff", "CrashLoopBackOff": "CrashLoopBackOff",
                "CreateContainerConfigError": "CreateContainerConfigError"}
QUOTA_WORDS = ("quota", "limit exceeded", "exceeds")
CAPACITY_WORDS = ("insufficientcapacity", "unavailable", "capacity", "sku")
GFD_PRODUCT, GFD_COUNT, GFD_MEMORY = "nvidia.com/gpu.product", "nvidia.com/gpu.count", "nvidia.com/gpu.memory"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods (Kubernetes 1.27+)


# --------------------------------------------------------------------------- shared
def connect(settings: settings_mod.Settings | None = None) -> kclient.Kube:
    return kclient.connect(settings or settings_mod.load())


def condition(ws: spec.Workspace, type_: str, ok: bool | None, reason: str, message: str = "",
              kube: kclient.Kube | None = None) -> None:
    """Set a condition in the local record and mirror all conditions to the Workspace CR."""
    local_state.set_condition(ws.name, type_, ok, reason, message)
    write_status(ws, kube=kube)


def write_status(ws: spec.Workspace, conditions: list[dict] | None = None, *, kube: kclient.Kube | None = None,
                 worker_nodes: list[str] | None = None) -> bool:
    """Server-side apply the conditions (default: the local record's) to the CR's status. False
    when the CR does not exist (yet); API faults are logged, never allowed to fail a step."""
    record = local_state.load(ws.name) or {}
    conditions = record.get("conditions", []) if conditions is None else conditions
    try:
        kube = kube or connect()
        ns = kube.namespace_for(ws)
        if kapply.get(kube, ws.api_version, "Workspace", ws.name, ns) is None:
            return False
        st: dict[str, Any] = {"conditions": [_kube_condition(c) for c in conditions]}
        nodes = worker_nodes if worker_nodes is not None else (record.get("kube") or {}).get("nodes")
        if nodes:
            st["workerNodes"] = list(nodes)
        kapply.apply_status(kube, {"apiVersion": ws.api_version, "kind": "Workspace",
                                   "metadata": {"name": ws.name, "namespace": ns}, "status": st})
        return True
    except errors.KaiflowError as exc:
        log.warning("could not write the status of workspace %s to its custom resource: %s", ws.name, exc)
        return False


def _kube_condition(c: dict) -> dict:
    return {"type": c["type"], "status": c["status"], "reason": c.get("reason") or "Unknown",
            "message": c.get("message") or "", "lastTransitionTime": c.get("lastTransitionTime") or status.now()}


def ensure_workspace_cr(kube: kclient.Kube, ws: spec.Workspace) -> dict:
    """Apply the Workspace CR (the owner of the workspace's objects); returns it with its uid."""
    return kapply.apply(kube, manifests.workspace_cr(ws, kube.namespace_for(ws)))


def _owner(kube: kclient.Kube, ws: spec.Workspace) -> dict | None:
    cr = kapply.get(kube, ws.api_version, "Workspace", ws.name, kube.namespace_for(ws))
    return manifests.owner_reference(cr) if cr and cr["metadata"].get("uid") else None


def _placement(ws: spec.Workspace) -> dict:
    return ((local_state.load(ws.name) or {}).get("kube") or {}).get("placement") or {}


def _remember(ws: spec.Workspace, **changes: Any) -> None:
    record = local_state.load(ws.name) or {}
    local_state.update(ws.name, kube={**(record.get("kube") or {}), **changes})


# --------------------------------------------------------------------------- provision
def provision(ws: spec.Workspace, platform: str, settings: settings_mod.Settings | None = None) -> dict:
    """Make sure the workspace's GPU nodes exist and are Ready (ResourceReady)."""
    settings = settings or settings_mod.load()
    p = plan_mod.plan_workspace(ws, platform)
    kube = connect(settings)
    ns = kube.namespace_for(ws)
    try:
        cr = ensure_workspace_cr(kube, ws)
    except errors.KaiflowError as exc:
        local_state.set_condition(ws.name, status.RESOURCE_READY, False, exc.reason, str(exc))
        raise
    if not p.fits:
        msg = "; ".join(p.problems())
        condition(ws, status.RESOURCE_READY, False, errors.SizingError.reason, msg, kube)
        raise errors.SizingError(f"workspace {ws.name}: {msg}")
    provisioner = "aks" if platform == "aks" else settings.provisioner
    gpus = max(manifests.gpus_per_pod(p, part.part) for part in p.parts) if p.parts else 1
    count = manifests.node_count(ws, p)
    placement: dict[str, Any] = {}
    try:
        if provisioner == "karpenter":
            nodes = _provision_karpenter(kube, ws, p, ns, gpus, settings.kube_wait_timeout_s)
        elif provisioner == "aks":
            from infra import aks

            pool = aks.ensure_agent_pool(ws, p, settings, namespace=ns)
            placement = {"node_selector": dict(pool["node_selector"]), "tolerations": list(pool.get("tolerations") or [])}
            nodes = wait_for_gpu_nodes(kube, pool["node_selector"], int(pool["count"]),
                                       int(pool.get("gpu_per_node") or gpus), settings.kube_wait_timeout_s)
        else:
            nodes = _provision_byo(kube, ws, p, count, gpus, settings.kube_wait_timeout_s)
    except errors.KaiflowError as exc:
        condition(ws, status.RESOURCE_READY, False, exc.reason, str(exc), kube)
        raise
    names = [n["metadata"]["name"] for n in nodes]
    _remember(ws, namespace=ns, provisioner=provisioner, nodes=names, placement=placement)
    condition(ws, status.RESOURCE_READY, True, "NodesReady" if provisioner != "karpenter" else "NodeClaimsReady",
              f"{len(names)} node(s) ready with {gpus}+ nvidia.com/gpu: {', '.join(names)}", kube)
    write_status(ws, kube=kube, worker_nodes=names)
    return {"instance": p.instance_type, "provisioner": provisioner, "namespace": ns, "nodes": names,
            "parts": [{"part": x.part, "model": x.model, "summary": x.summary} for x in p.parts]}


def _provision_karpenter(kube: kclient.Kube, ws: spec.Workspace, p: plan_mod.WorkspacePlan, ns: str,
                         gpus: int, timeout_s: float) -> list[dict]:
    claims = manifests.nodeclaims(ws, p, ns)
    if not claims:
        raise errors.SpecError("resource.instanceType: Karpenter NodeClaims need an instance type; set it, or use "
                               "bring-your-own nodes (KAIFLOW_PROVISIONER=byo) with resource.labelSelector")
    for c in claims:
        kapply.apply(kube, c)
    names = [c["metadata"]["name"] for c in claims]

    def check() -> list[dict] | None:
        nodes = []
        for n in names:
            claim = kapply.get(kube, "karpenter.sh/v1", "NodeClaim", n)
            if claim is None:
                raise errors.ProvisioningError(f"NodeClaim {n} disappeared while waiting for it; re-apply the workspace")
            _raise_if_launch_failed(claim, ws)
            node = _claim_node(kube, claim)
            if node is None or not _node_ready(node) or _gpu_capacity(node) < gpus:
                return None
            nodes.append(node)
        return nodes

    def describe() -> str:
        return f"NodeClaims {', '.join(names)} not all Ready with {gpus} nvidia.com/gpu on their Nodes"

    return kapply.wait_for(kube, "karpenter.sh/v1", "NodeClaim", None, {manifests.WORKSPACE_LABEL: manifests.dns_label(ws.name)},
                           check, timeout_s=timeout_s, describe=describe)


def _cond(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _raise_if_launch_failed(claim: dict, ws: spec.Workspace) -> None:
    launched = _cond(claim, "Launched")
    if not launched or launched.get("status") != "False":
        return
    reason, message = launched.get("reason") or "LaunchFailed", launched.get("message") or ""
    text = f"{reason} {message}".lower()
    what = (f"NodeClaim {claim['metadata']['name']} for {ws.instance_type} could not launch: {reason}: {message}")
    if any(w in text for w in QUOTA_WORDS):
        raise errors.QuotaExceeded(f"{what}; raise the GPU quota for {ws.instance_type} in this region, or pick "
                                   "another resource.instanceType (`kaiflow skus`)")
    if any(w in text for w in CAPACITY_WORDS):
        raise errors.SkuUnavailable(f"{what}; try another resource.instanceType (`kaiflow skus`) or region")
    raise errors.ProvisioningError(what)


def _claim_node(kube: kclient.Kube, claim: dict) -> dict | None:
    name = (claim.get("status") or {}).get("nodeName")
    if not name:
        return None
    ready = _cond(claim, "Ready")
    if ready is not None and ready.get("status") != "True":
        return None
    return kapply.get(kube, "v1", "Node", name)


def _node_ready(node: dict) -> bool:
    c = _cond(node, "Ready")
    return bool(c and c.get("status") == "True") and not (node.get("spec") or {}).get("unschedulable")


def _gpu_capacity(node: dict) -> int:
    st = node.get("status") or {}
    value = (st.get("allocatable") or {}).get(manifests.GPU) or (st.get("capacity") or {}).get(manifests.GPU) or "0"
    try:
        return int(str(value))
    except ValueError:
        return 0


def wait_for_gpu_nodes(api: kclient.Kube, selector: dict, count: int, gpu_per_node: int, timeout: float) -> list[dict]:
    """Wait until ``count`` Ready Nodes carry every label of ``selector`` and at least
    ``gpu_per_node`` allocatable ``nvidia.com/gpu``; returns them (sorted by name). ``api`` is a
    ``client.Kube`` (``infra.kube.client.connect(settings)``). Raises KaiflowError (reason
    ``Timeout``) naming how many were found."""
    seen: dict[str, int] = {"matching": 0, "ready": 0}

    def check() -> list[dict] | None:
        items, _ = kapply.list_objects(api, "v1", "Node", None, dict(selector))
        ready = [n for n in items if _node_ready(n) and _gpu_capacity(n) >= gpu_per_node]
        seen.update(matching=len(items), ready=len(ready))
        return sorted(ready, key=lambda n: n["metadata"]["name"])[:count] if len(ready) >= count else None

    def describe() -> str:
        return (f"{seen['ready']} of {count} node(s) matching {kapply.label_selector(selector)} are Ready with "
                f"{gpu_per_node} nvidia.com/gpu ({seen['matching']} match the labels)")

    return kapply.wait_for(api, "v1", "Node", None, dict(selector), check, timeout_s=timeout, describe=describe)


def _provision_byo(kube: kclient.Kube, ws: spec.Workspace, p: plan_mod.WorkspacePlan, count: int, gpus: int,
                   timeout_s: float) -> list[dict]:
    sel = ws.resource.label_selector if ws.resource else None
    match = dict(sel.match_labels or {}) if sel else {}
    if not match:
        raise errors.SpecError("resource.labelSelector.matchLabels: bring-your-own nodes are found by label; "
                               "label your GPU nodes and name the labels here")
    items, _ = kapply.list_objects(kube, "v1", "Node", None, match)
    preferred = list(ws.resource.preferred_nodes or [])
    if not items:
        raise errors.ProvisioningError(
            f"no nodes match resource.labelSelector {kapply.label_selector(match)}: label {count} GPU node(s) "
            f"(kubectl label node NAME {' '.join(f'{k}={v}' for k, v in match.items())}) or let kaiflow create them "
            "(KAIFLOW_PROVISIONER=karpenter with resource.instanceType)", reason="NoMatchingNodes")
    problems = [f"{n['metadata']['name']}: {why}" for n in items if (why := gfd_mismatch(n, p, gpus))]
    if len(problems) == len(items):
        raise errors.ProvisioningError("no matching node has the GPUs the plan needs: " + "; ".join(problems),
                                       reason="NodesDoNotFit")
    nodes = wait_for_gpu_nodes(kube, match, count, gpus, timeout_s)
    fitting = [n for n in nodes if not gfd_mismatch(n, p, gpus)]
    fitting.sort(key=lambda n: (n["metadata"]["name"] not in preferred, n["metadata"]["name"]))
    if len(fitting) < count:
        raise errors.ProvisioningError(f"{len(fitting)} of {count} ready nodes fit the plan: " + "; ".join(problems),
                                       reason="NodesDoNotFit")
    return fitting[:count]


def gfd_mismatch(node: dict, p: plan_mod.WorkspacePlan, gpus: int) -> str:
    """Why a node's GPU Feature Discovery labels do not fit the plan ('' when they do, or are absent)."""
    import presets

    lab = node["metadata"].get("labels") or {}
    product, count, memory = lab.get(GFD_PRODUCT), lab.get(GFD_COUNT), lab.get(GFD_MEMORY)
    if count is not None and int(count) < gpus:
        return f"{count} GPU(s), the plan needs {gpus}"
    try:
        sku = presets.get_sku(p.instance_type)
    except presets.UnknownSku:
        sku = None
    if sku and memory is not None and int(memory) < sku.gpu_memory_gib * 1024 * 0.9:
        return f"{memory} MiB per GPU, the plan needs about {sku.gpu_memory_gib:g} GiB ({sku.gpu_model})"
    if sku and product and sku.gpu_model.lower().replace(" ", "") not in product.lower().replace("-", ""):
        return f"GPU {product}, the plan was made for {sku.gpu_model} ({sku.name})"
    return ""


# --------------------------------------------------------------------------- tuning
def run_tuning(ws: spec.Workspace, *, cache_key: str, platform: str, config_maps: dict[str, dict[str, str]] | None = None,
               settings: settings_mod.Settings | None = None, output_image: str | None = None) -> dict:
    """Run (or reuse) the tuning Job for ``cache_key``; returns the pushed adapter image
    ``{"reference", "digest", "job", "reused", "cache_key"}`` (JobStarted). ``output_image``: a
    retrain candidate's reference (``manifests.candidate_reference``): the Job pushes there, not to
    ``tuning.output.image``, and its result is kept apart (``<name>-candidate-result``), so
    ``kaiflow apply`` never reuses a candidate."""
    settings = settings or settings_mod.load()
    kube = connect(settings)
    ns = kube.namespace_for(ws)
    p = plan_mod.plan_workspace(ws, platform)
    result_name = manifests.candidate_result_name(ws.name) if output_image else manifests.tuning_result_name(ws.name)
    previous = kapply.get(kube, "v1", "ConfigMap", result_name, ns)
    data = (previous or {}).get("data") or {}
    if data.get("cacheKey") == cache_key and data.get("reference") and (not output_image or data.get("image") == output_image):
        log.info("tuning result for this data and config exists (%s): no Job", data["reference"])
        return {"reference": data["reference"], "digest": data["digest"], "job": data.get("job"), "reused": True,
                "cache_key": cache_key, "adapter_dir": None, "steps": None}
    owner = _owner(kube, ws)
    pl = _placement(ws)
    job = manifests.tuning_job(ws, p, ns, settings.image, cache_key=cache_key, owner=owner,
                               node_selector=pl.get("node_selector"), extra_tolerations=pl.get("tolerations"),
                               output_image=output_image)
    name = job["metadata"]["name"]
    for cm in manifests.file_config_maps(ws, config_maps or {}, ns, owner):
        kapply.apply(kube, cm)
    _remove_stale_jobs(kube, ws, ns, keep=name)
    existing = kapply.get(kube, "batch/v1", "Job", name, ns)
    if existing is not None and _job_state(existing)[0] == "failed":
        kapply.delete(kube, "batch/v1", "Job", name, ns)  # same inputs, failed before: run again
        _wait_gone(kube, "batch/v1", "Job", name, ns, settings.kube_wait_timeout_s)
    kapply.apply(kube, job)
    condition(ws, status.JOB_STARTED, True, "TuningJobStarted", f"Job {ns}/{name} running {ws.tuning.method} on "
              f"{ws.tuning.preset.name}", kube)
    local_state.add_event(ws.name, "TuningStarted", f"Job {name}")
    done = kapply.wait_for(kube, "batch/v1", "Job", ns, {manifests.CACHE_KEY_LABEL: cache_key[:63]},
                           lambda: _finished(kube, name, ns), timeout_s=settings.kube_wait_timeout_s,
                           describe=lambda: f"tuning Job {ns}/{name} did not finish")
    state, reason, message = done
    if state == "failed":
        detail = _pod_failure(kube, ns, {manifests.CACHE_KEY_LABEL: cache_key[:63]}) or message
        msg = f"tuning Job {ns}/{name} failed: {reason}: {detail}; see `kaiflow logs {ws.name} --tuning`"
        condition(ws, status.JOB_STARTED, False, "TuningFailed", msg, kube)
        raise errors.TuningError(msg)
    if output_image:
        reference = _pushed_reference(kube, ns, cache_key, ws, pod_labels={JOB_NAME_LABEL: name}, image=output_image)
    else:
        reference = _pushed_reference(kube, ns, cache_key, ws)
    digest = reference.rsplit("@", 1)[1] if "@" in reference else ""
    kapply.apply(kube, manifests.config_map(ws, result_name,
                                            {"cacheKey": cache_key, "reference": reference, "digest": digest, "job": name,
                                             **({"image": output_image} if output_image else {})},
                                            ns, owner))
    condition(ws, status.JOB_STARTED, True, "TuningCompleted", f"Job {name} pushed {reference}", kube)
    local_state.add_event(ws.name, "TuningCompleted", reference)
    return {"reference": reference, "digest": digest, "job": name, "reused": False, "cache_key": cache_key,
            "adapter_dir": None, "steps": None}


def _job_state(job: dict) -> tuple[str, str, str]:
    for type_, state in (("Complete", "succeeded"), ("Failed", "failed")):
        c = _cond(job, type_)
        if c and c.get("status") == "True":
            return state, c.get("reason") or type_, c.get("message") or ""
    st = job.get("status") or {}
    if st.get("failed") and not st.get("active"):
        return "failed", "Failed", f"{st['failed']} pod(s) failed"
    return "running", "", ""


def _finished(kube: kclient.Kube, name: str, ns: str, what: str = "tuning") -> tuple[str, str, str] | None:
    job = kapply.get(kube, "batch/v1", "Job", name, ns)
    if job is None:
        raise errors.TuningError(f"{what} Job {ns}/{name} was deleted while running; re-apply the workspace")
    state = _job_state(job)
    return state if state[0] != "running" else None


def _remove_stale_jobs(kube: kclient.Kube, ws: spec.Workspace, ns: str, keep: str) -> None:
    items, _ = kapply.list_objects(kube, "batch/v1", "Job", ns, manifests.selector(ws, "tuning"))
    for job in items:
        if job["metadata"]["name"] != keep and _job_state(job)[0] == "running":
            kapply.delete(kube, "batch/v1", "Job", job["metadata"]["name"], ns)
            log.info("deleted tuning Job %s: its inputs changed", job["metadata"]["name"])


def _wait_gone(kube: kclient.Kube, av: str, kind: str, name: str, ns: str, timeout_s: float) -> None:
    kapply.wait_for(kube, av, kind, ns, None, lambda: True if kapply.get(kube, av, kind, name, ns) is None else None,
                    timeout_s=timeout_s, describe=lambda: f"{kind} {ns}/{name} still exists")


def _pods(kube: kclient.Kube, ns: str, labels: dict[str, str]) -> list[dict]:
    items, _ = kapply.list_objects(kube, "v1", "Pod", ns, labels)
    return sorted(items, key=lambda p: p["metadata"].get("creationTimestamp") or "")


def _statuses(pod: dict) -> list[dict]:
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])


def _pod_failure(kube: kclient.Kube, ns: str, labels: dict[str, str]) -> str:
    """The first failed container of the newest pod: name, reason and its termination message."""
    for pod in reversed(_pods(kube, ns, labels)):
        for cs in _statuses(pod):
            term = (cs.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode", 0) != 0:
                text = (term.get("message") or "").strip().splitlines()
                return f"container {cs['name']} {term.get('reason') or 'Error'} (exit {term.get('exitCode')})" + \
                    (f": {text[-1]}" if text else "")
    return ""


def _termination_messages(kube: kclient.Kube, ns: str, labels: dict[str, str], container: str, *,
                          missing_exit_ok: bool = False) -> Iterator[tuple[str, str]]:
    """(pod name, termination message) of ``container`` where it exited 0, in the pods with
    ``labels``, newest first (``missing_exit_ok``: a terminated state without an exit code counts)."""
    for pod in reversed(_pods(kube, ns, labels)):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == container and term.get("exitCode", 0 if missing_exit_ok else 1) == 0:
                yield pod["metadata"]["name"], term.get("message") or ""


def _pushed_reference(kube: kclient.Kube, ns: str, cache_key: str, ws: spec.Workspace,
                      pod_labels: dict[str, str] | None = None, image: str | None = None) -> str:
    """The digest-pinned image the Job pushed: preferably what its push-adapter container wrote to
    its termination message (the digest it pushed, whatever the tag points at by now); else the
    tag resolved in the registry (a pod gone after the Job's TTL, or an old image). Logs which.
    ``pod_labels``/``image``: the Job's pods and where it pushed (default: by cache key, the output image)."""
    labels = pod_labels or {manifests.CACHE_KEY_LABEL: cache_key[:63]}
    for pod_name, message in _termination_messages(kube, ns, labels, "push-adapter", missing_exit_ok=True):
        reference = termination_reference(message)
        if reference:
            log.info("pushed adapter %s: read from the termination message of pod %s", reference, pod_name)
            return reference
    image = image or ws.tuning.output.image
    if image:  # no (parsable) termination message: ask the registry what the tag points at now
        from infra import registry

        try:
            qualified = registry.qualify(image)
            store = registry.store_for(qualified, credentials=_local_secret(ws.tuning.output.image_push_secret))
            digest = store.resolve(qualified)
        except errors.KaiflowError as exc:
            log.warning("could not resolve %s in its registry: %s", image, exc)
            digest = None
        if digest:
            pinned = registry.parse_reference(qualified).pinned(digest)
            log.warning("pushed adapter %s: no termination message from the push-adapter container; resolved the "
                        "tag %s in the registry instead (it may have moved since the Job pushed)", pinned, image)
            return pinned
    raise errors.TuningError(
        f"tuning Job for {ws.name} succeeded but its push-adapter container reported no image in its termination "
        f"message and {image or 'the output'} could not be resolved; check `kaiflow logs {ws.name} --tuning`")


def termination_reference(message: str) -> str:
    """The pinned image in a push-adapter termination message: ``infra.pod``'s JSON
    (``{"reference": "...@sha256:..."}``) or a bare ``image@sha256:<64 hex>`` line; '' otherwise."""
    text = message.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    candidate = str(parsed.get("reference") or "") if isinstance(parsed, dict) else (text.splitlines() or [""])[-1]
    name, sep, digest = candidate.partition("@sha256:")
    if sep and name and len(digest) == 64 and all(ch in "0123456789abcdef" for ch in digest):
        return candidate
    return ""


def _local_secret(name: str | None) -> Any:
    """The flow's copy of a registry secret (``KAIFLOW_HOME/secrets/NAME/.dockerconfigjson``), as
    the local platform reads it; None: the default credentials."""
    if not name:
        return None
    path = settings_mod.load().home_dir / "secrets" / name / ".dockerconfigjson"
    return path if path.is_file() else None


# --------------------------------------------------------------------------- retrain: evaluation, promotion
def run_evaluation(ws: spec.Workspace, *, cache_key: str, adapters: dict[str, str], platform: str,
                   config_maps: dict[str, dict[str, str]] | None = None,
                   settings: settings_mod.Settings | None = None) -> dict:
    """Score ``adapters`` (name -> digest-pinned image) on the held-out rows in an evaluation Job
    (``manifests.evaluation_job``; ``ws.tuning.config`` names the candidate's training config) and
    return the scores its evaluate container left in its termination message
    (``{"rows", "shape", "exact_match_applicable", "adapters": {name: {"loss", "exact_match", ...}}}``).
    A Job of the same inputs left by an earlier run is replaced: its pod, and so its scores, may be gone."""
    settings = settings or settings_mod.load()
    kube = connect(settings)
    ns = kube.namespace_for(ws)
    p = plan_mod.plan_workspace(ws, platform)
    owner = _owner(kube, ws)
    pl = _placement(ws)
    name = manifests.evaluation_job_name(ws.name, cache_key, "|".join(f"{k}={v}" for k, v in sorted(adapters.items())))
    job = manifests.evaluation_job(ws, p, ns, settings.image, name=name, cache_key=cache_key, adapters=adapters,
                                   config=ws.tuning.config, owner=owner, node_selector=pl.get("node_selector"),
                                   extra_tolerations=pl.get("tolerations"))
    for cm in manifests.file_config_maps(ws, config_maps or {}, ns, owner):
        kapply.apply(kube, cm)
    if kapply.get(kube, "batch/v1", "Job", name, ns) is not None:
        kapply.delete(kube, "batch/v1", "Job", name, ns)
        _wait_gone(kube, "batch/v1", "Job", name, ns, settings.kube_wait_timeout_s)
    kapply.apply(kube, job)
    local_state.add_event(ws.name, "EvaluationStarted", f"Job {name}: {', '.join(adapters)} on the held-out rows")
    state, reason, message = kapply.wait_for(
        kube, "batch/v1", "Job", ns, {manifests.CACHE_KEY_LABEL: cache_key[:63]},
        lambda: _finished(kube, name, ns, "evaluation"), timeout_s=settings.kube_wait_timeout_s,
        describe=lambda: f"evaluation Job {ns}/{name} did not finish")
    if state == "failed":
        detail = _pod_failure(kube, ns, {JOB_NAME_LABEL: name}) or message
        raise errors.TuningError(f"evaluation Job {ns}/{name} failed: {reason}: {detail}; nothing was promoted; see "
                                 f"`kaiflow logs {ws.name} --tuning` (the newest tuning or evaluation pod)",
                                 reason="EvaluationFailed")
    scores = _evaluation_scores(kube, ns, name, list(adapters))
    local_state.add_event(ws.name, "EvaluationCompleted", f"Job {name}: " + ", ".join(
        f"{n} loss {a['loss']:.4f}" for n, a in scores["adapters"].items()))
    return scores


def _evaluation_scores(kube: kclient.Kube, ns: str, name: str, expected: list[str]) -> dict:
    """The scores summary in the termination message of the evaluate container of Job ``name``."""
    for pod_name, message in _termination_messages(kube, ns, {JOB_NAME_LABEL: name}, "evaluate"):
        try:
            scores = json.loads(message)
            if all(isinstance(scores["adapters"][n]["loss"], (int, float)) for n in expected):
                log.info("evaluation scores read from the termination message of pod %s", pod_name)
                return scores
        except (ValueError, KeyError, TypeError):
            pass
    raise errors.TuningError(f"evaluation Job {ns}/{name} succeeded but its evaluate container left no scores for "
                             f"{', '.join(expected)} in its termination message; nothing was promoted",
                             reason="EvaluationFailed")


def promote_candidate(ws: spec.Workspace, candidate: str) -> dict:
    """Move ``tuning.output.image``'s tag to the candidate's digest: the candidate's manifest PUT
    under the output tag (its blobs are in the same repository already: nothing is uploaded again).
    Runs where the flow runs, with the flow's copy of ``imagePushSecret``. Returns
    ``{"reference", "digest"}`` of the output image pinned by that digest."""
    from infra import registry

    creds = _local_secret(ws.tuning.output.image_push_secret)
    pinned = registry.copy(candidate, ws.tuning.output.image, source_credentials=creds, dest_credentials=creds)
    digest = pinned.rsplit("@", 1)[1]
    if digest != candidate.rsplit("@", 1)[-1]:
        raise errors.RegistryError(f"moving {ws.tuning.output.image} to {candidate} gave digest {digest}: the registry "
                                   "changed the manifest; nothing was deployed")
    return {"reference": pinned, "digest": digest}


# --------------------------------------------------------------------------- inference
def deploy(ws: spec.Workspace, fresh: dict | None, config_maps: dict[str, dict[str, str]], platform: str,
           settings: settings_mod.Settings | None = None) -> dict:
    """Apply the inference StatefulSet and Services and wait for ready pods (InferenceReady)."""
    settings = settings or settings_mod.load()
    kube = connect(settings)
    ns = kube.namespace_for(ws)
    p = plan_mod.plan_workspace(ws, platform)
    owner = _owner(kube, ws)
    pl = _placement(ws)
    fresh_ref = (fresh or {}).get("reference")
    objs = [o for o in manifests.objects_for(ws, config_maps, settings, namespace=ns, plan=p, fresh_reference=fresh_ref,
                                             owner=owner, node_selector=pl.get("node_selector"),
                                             extra_tolerations=pl.get("tolerations"))
            if o["kind"] in ("ConfigMap", "StatefulSet", "Service")]
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    previous = _serving_snapshot(kube, objs, ns)
    applied = [kapply.apply(kube, o) for o in objs]
    replicas = sts["spec"]["replicas"]
    try:
        kapply.wait_for(kube, "v1", "Pod", ns, manifests.selector(ws, "inference"),
                        lambda: _inference_ready(kube, ws, ns, replicas), timeout_s=settings.kube_wait_timeout_s,
                        describe=lambda: f"StatefulSet {ns}/{sts['metadata']['name']} has fewer than {replicas} ready pod(s)")
    except errors.KaiflowError as exc:
        if previous and _template(applied[objs.index(sts)]) != _template(previous[0]):
            exc.message = str(exc) + _restore(kube, ws, ns, previous, settings)
        condition(ws, status.INFERENCE_READY, False, exc.reason, str(exc), kube)
        raise
    svc = kapply.get(kube, "v1", "Service", manifests.dns_label(ws.name), ns) or {}
    endpoint = f"http://{manifests.dns_label(ws.name)}.{ns}.svc.cluster.local"
    cluster_ip = (svc.get("spec") or {}).get("clusterIP")
    adapters = [{"name": a["name"], "image": a["image"], "strength": a["strength"],
                 "digest": a["image"].rsplit("@", 1)[1] if "@" in a["image"] else ""}
                for a in manifests.adapter_entries(ws, fresh_ref)]
    local_state.update(ws.name, endpoint=endpoint, server={"endpoint": endpoint, "adapters": adapters, "model":
                                                           ws.inference.preset.name if ws.inference.preset else None})
    condition(ws, status.INFERENCE_READY, True, "InferenceServiceReady",
              f"{replicas} pod(s) ready; Service {manifests.dns_label(ws.name)} port 80" +
              (f" (cluster IP {cluster_ip})" if cluster_ip else ""), kube)
    return {"endpoint": endpoint, "cluster_ip": cluster_ip, "service": manifests.dns_label(ws.name),
            "statefulset": sts["metadata"]["name"], "adapters": adapters}


def _serving_snapshot(kube: kclient.Kube, objs: list[dict], ns: str) -> list[dict] | None:
    """The live StatefulSet (first) and ConfigMaps when every replica serves now: what a failed
    re-deploy puts back. A one-replica StatefulSet replaces its pod before the new one is ready, so
    without this a bad adapter image or config would leave the endpoint down."""
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    live = kapply.get(kube, "apps/v1", "StatefulSet", sts["metadata"]["name"], ns)
    want = int(((live or {}).get("spec") or {}).get("replicas") or 0)
    if not live or not want or int((live.get("status") or {}).get("readyReplicas") or 0) < want:
        return None
    snapshot = [_reapplicable(live)]
    for o in objs:
        if o["kind"] == "ConfigMap" and (cm := kapply.get(kube, "v1", "ConfigMap", o["metadata"]["name"], ns)):
            snapshot.append(_reapplicable(cm))
    return snapshot


def _reapplicable(obj: dict) -> dict:
    """``obj`` as read from the server, less what the server owns (status, uid, resourceVersion...)."""
    meta = {k: v for k, v in obj["metadata"].items() if k in ("name", "namespace", "labels", "annotations",
                                                              "ownerReferences") and v}
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    return {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""), "metadata": meta, **body}


def _template(sts: dict) -> Any:
    return (sts.get("spec") or {}).get("template")


def _restore(kube: kclient.Kube, ws: spec.Workspace, ns: str, previous: list[dict],
             settings: settings_mod.Settings) -> str:
    """Put the previous inference objects back after a failed re-deploy; returns what happened, for
    the error and the InferenceReady condition."""
    sts = previous[0]
    replicas = int(sts["spec"]["replicas"])
    log.warning("inference of %s did not become ready; restoring the previous StatefulSet", ws.name)
    selector = manifests.selector(ws, "inference")

    def ready() -> bool | None:
        pods = _pods(kube, ns, selector)
        return True if sum(1 for p in pods if (_cond(p, "Ready") or {}).get("status") == "True") >= replicas else None

    try:
        for obj in previous:
            kapply.apply(kube, obj)
        # a StatefulSet does not replace a pod that never became ready (Kubernetes' "forced
        # rollback"): delete the broken ones and the controller makes them from the old template
        for pod in _pods(kube, ns, selector):
            if (_cond(pod, "Ready") or {}).get("status") != "True":
                kapply.delete(kube, "v1", "Pod", pod["metadata"]["name"], ns)
        kapply.wait_for(kube, "v1", "Pod", ns, selector, ready, timeout_s=settings.kube_wait_timeout_s,
                        describe=lambda: f"the restored StatefulSet {ns}/{sts['metadata']['name']} is not ready")
    except errors.KaiflowError as exc:
        return f"; putting the previous version back failed too ({exc}): the endpoint is down"
    return "; the previous version was put back and serves again (nothing of this run was kept)"


def _inference_ready(kube: kclient.Kube, ws: spec.Workspace, ns: str, replicas: int) -> bool | None:
    sts = kapply.get(kube, "apps/v1", "StatefulSet", manifests.dns_label(ws.name), ns) or {}
    pods = _pods(kube, ns, manifests.selector(ws, "inference"))
    for pod in pods:
        failure = pod_problem(pod)
        if failure:
            reason, message = failure
            raise errors.DeploymentError(f"inference pod {pod['metadata']['name']}: {reason}: {message}", reason=reason)
    st = sts.get("status") or {}
    # the controller must have seen this spec and rolled every pod to it: right after a re-apply
    # the old pods are still Ready and the status still counts them
    if int(st.get("observedGeneration") or 0) < int((sts.get("metadata") or {}).get("generation") or 0):
        return None
    if st.get("updateRevision") and st.get("currentRevision", st["updateRevision"]) != st["updateRevision"]:
        return None
    if int(st.get("updatedReplicas") or 0) < replicas:
        return None
    update = st.get("updateRevision")
    current = [p for p in pods if not update
               or (p["metadata"].get("labels") or {}).get("controller-revision-hash", update) == update]
    ready_pods = sum(1 for p in current if (_cond(p, "Ready") or {}).get("status") == "True")
    return True if int(st.get("readyReplicas") or 0) >= replicas and ready_pods >= replicas else None


def pod_problem(pod: dict) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot become ready without a change: an image that does not
    pull, a container that crash-loops, or no node it can be scheduled on."""
    sched = _cond(pod, "PodScheduled")
    if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        return "Unschedulable", (sched.get("message") or "no node fits") + \
            "; check the workspace's nodes (kaiflow describe), GPU capacity and taints"
    for cs in _statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = POD_FAILURES.get(waiting.get("reason") or "")
        if reason:
            hint = {"ImagePullBackOff": "check the image name and its pull secret",
                    "CrashLoopBackOff": "see `kaiflow logs` for why the container exits"}.get(reason, "")
            return reason, f"container {cs.get('name')}: {waiting.get('message') or waiting.get('reason')}" + \
                (f"; {hint}" if hint else "")
    return None


# --------------------------------------------------------------------------- delete, logs
def teardown(ws: spec.Workspace, platform: str = "kubernetes", settings: settings_mod.Settings | None = None) -> dict:
    """Delete everything the workspace created: StatefulSet, Services, Jobs (and their pods),
    ConfigMaps, NodeClaims (by label: cluster-scoped, so not owned), the CR; the AKS pool on aks."""
    settings = settings or settings_mod.load()
    kube = connect(settings)
    ns = kube.namespace_for(ws)
    mine = {manifests.WORKSPACE_LABEL: manifests.dns_label(ws.name), **manifests.MANAGED_BY}
    deleted: dict[str, list[str]] = {}
    for av, kind in (("apps/v1", "StatefulSet"), ("v1", "Service"), ("batch/v1", "Job"), ("v1", "Pod"), ("v1", "ConfigMap")):
        deleted[kind] = kapply.delete_labelled(kube, av, kind, ns, mine)
    deleted["NodeClaim"] = kapply.delete_labelled(kube, "karpenter.sh/v1", "NodeClaim", None,
                                                  {manifests.WORKSPACE_LABEL: manifests.dns_label(ws.name),
                                                   manifests.WORKSPACE_NS_LABEL: ns})
    deleted["Workspace"] = [ws.name] if kapply.delete(kube, ws.api_version, "Workspace", ws.name, ns) else []
    if platform == "aks":
        from infra import aks

        deleted["AgentPool"] = [aks.pool_name(ws, ns)] if aks.delete_agent_pool(ws, settings, namespace=ns) else []
    return deleted


def logs(ws: spec.Workspace, part: str = "inference", settings: settings_mod.Settings | None = None,
         tail_lines: int | None = None) -> str:
    """Logs of the workspace's newest pod for ``part``: the server (inference) or the tuning program."""
    kube = connect(settings)
    ns = kube.namespace_for(ws)
    pods = _pods(kube, ns, manifests.selector(ws, part))
    if part == "tuning":  # retrain's evaluation pods count as tuning runs: the newest of either
        pods = sorted(pods + _pods(kube, ns, manifests.selector(ws, "evaluation")),
                      key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if not pods:
        raise errors.KaiflowError(f"no {part} pod of workspace {ws.name} in namespace {ns} (not run yet, or removed "
                                  f"after the Job's TTL)")
    newest = pods[-1]
    pod = newest["metadata"]["name"]
    container = "inference" if part == "inference" else "tune"
    if (newest["metadata"].get("labels") or {}).get(manifests.PART_LABEL) == "evaluation":
        failed = [cs["name"] for cs in _statuses(newest)
                  if ((cs.get("state") or {}).get("terminated") or {}).get("exitCode", 0) != 0]
        container = failed[0] if failed else "evaluate"
    query: dict[str, Any] = {"container": container}
    if tail_lines:
        query["tailLines"] = tail_lines
    return kube.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod}/log", query=query, raw=True,
                        what=f"logs of pod {pod}")



def _from_record(record: dict) -> spec.Workspace:
    if not record.get("spec"):
        raise errors.KaiflowError(f"workspace {record.get('name')}: its record holds no spec; delete it with kubectl")
    return spec.Workspace.model_validate(record["spec"])


def cluster_record(record: dict) -> dict:
    """``record`` (a kubernetes/aks workspace's local record) as its Workspace CR has it now, for
    ``kaiflow get``/``describe``: ``instance``, ``conditions`` and ``created`` from the CR (the
    columns of ``kubectl get workspace``), plus ``cluster``: ``{"namespace", "found", "worker_nodes"}``
    or ``{"error"}``. A CR that is gone, or an API that cannot be reached, leaves the local record's
    values in place (``get`` still lists the workspace, saying why)."""
    out = dict(record)
    try:
        ws = _from_record(record)
        kube = connect()
        ns = kube.namespace_for(ws)
        cr = kapply.get(kube, ws.api_version, "Workspace", ws.name, ns)
    except errors.KaiflowError as exc:
        out["cluster"] = {"error": str(exc)}
        return out
    if cr is None:
        out["cluster"] = {"namespace": ns, "found": False, "worker_nodes": []}
        return out
    st = cr.get("status") or {}
    out.update(instance=(cr.get("resource") or {}).get("instanceType") or "-",
               conditions=list(st.get("conditions") or []),
               created=cr["metadata"].get("creationTimestamp") or record.get("created"),
               cluster={"namespace": ns, "found": True, "worker_nodes": list(st.get("workerNodes") or [])})
    return out


def teardown_record(record: dict) -> dict[str, list[str]]:
    """``teardown`` for a workspace known from its local record (``kaiflow delete``)."""
    return teardown(_from_record(record), record.get("platform", "kubernetes"))


def logs_record(record: dict, part: str) -> str:
    """``logs`` for a workspace known from its local record (``kaiflow logs``)."""
    return logs(_from_record(record), part)
