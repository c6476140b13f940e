"""Inference on a cluster: the StatefulSet running ``python -m serving`` behind a Service on port 80,
applied, awaited until every replica serves this very spec, and rolled back when it does not.

Ready means the controller saw the new spec and rolled every pod to it, and that many pods are
Ready; a pod that cannot become ready without a change (an image that does not pull, a crash
loop, no node to run on) fails the wait at once with that reason. A one-replica StatefulSet
replaces its pod before the new one is ready, so before a re-deploy the serving version is
snapshotted (:func:`serving_snapshot`) and put back when the new one fails (:func:`restore`):
a bad adapter image or config never leaves the endpoint down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import crstatus, manifests, nodes, objects
from workspace import errors, spec, status
from workspace import plan as plan_mod
from workspace import settings as settings_mod

log = logging.getLogger(__name__)
POD_FAILURES = {"ImagePullBackOff": "ImagePullBackOff", "ErrImagePull": "ImagePullBackOff",
                "InvalidImageName": "ImagePullBackOff", "CrashLoopBackOff": "CrashLoopBackOff",
                "CreateContainerConfigError": "CreateContainerConfigError"}


@dataclass(frozen=True)
class Served:
    """What a deploy left serving."""

    endpoint: str
    service: str
    statefulset: str
    replicas: int
    cluster_ip: str | None = None
    adapters: list[dict[str, Any]] = field(default_factory=list)


def deploy(kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, *, fresh_reference: str | None,
           config_maps: dict[str, dict[str, str]], placement: nodes.Placement, settings: settings_mod.Settings,
           report: status.Reporter) -> Served:
    """Apply the inference ConfigMaps, StatefulSet and Services and wait for ready pods. On failure
    the serving version is put back (when one served) and InferenceReady is set False with what
    happened; success is the caller's to report. ``fresh_reference``: the adapter image this run
    tuned (it replaces ``tuning.output.image`` among the adapters)."""
    ns = kube.namespace_for(ws)
    owner = crstatus.owner(kube, ws)
    objs = [o for o in manifests.objects_for(ws, config_maps, settings, namespace=ns, plan=plan,
                                             fresh_reference=fresh_reference, owner=owner,
                                             node_selector=placement.node_selector,
                                             extra_tolerations=placement.tolerations)
            if o["kind"] in ("ConfigMap", "StatefulSet", "Service")]
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    previous = serving_snapshot(kube, objs, ns)
    applied = [kapply.apply(kube, o) for o in objs]
    replicas = sts["spec"]["replicas"]
    try:
        kapply.wait_for(kube, "v1", "Pod", ns, manifests.selector(ws, "inference"),
                        lambda: inference_ready(kube, ws, ns, replicas), timeout_s=settings.kube_wait_timeout_s,
                        describe=lambda: f"StatefulSet {ns}/{sts['metadata']['name']} has fewer than {replicas} ready pod(s)")
    except errors.KaiflowError as exc:
        if previous and _template(applied[objs.index(sts)]) != _template(previous[0]):
            exc.message = str(exc) + restore(kube, ws, ns, previous, settings.kube_wait_timeout_s)
        report.condition(status.INFERENCE_READY, False, exc.reason, str(exc))
        raise
    svc = kapply.get(kube, "v1", "Service", manifests.dns_label(ws.name), ns) or {}
    adapters = [{"name": a["name"], "image": a["image"] or "", "strength": a["strength"],
                 "digest": a["image"].rsplit("@", 1)[1] if a["image"] and "@" in a["image"] else ""}
                for a in manifests.adapter_entries(ws, fresh_reference)]
    return Served(endpoint=f"http://{manifests.dns_label(ws.name)}.{ns}.svc.cluster.local",
                  service=manifests.dns_label(ws.name), statefulset=sts["metadata"]["name"], replicas=replicas,
                  cluster_ip=(svc.get("spec") or {}).get("clusterIP"), adapters=adapters)


def serving_snapshot(kube: kclient.Kube, objs: list[dict], ns: str) -> list[dict] | None:
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


def restore(kube: kclient.Kube, ws: spec.Workspace, ns: str, previous: list[dict], timeout_s: float) -> str:
    """Put the previous inference objects back after a failed re-deploy; returns what happened, for
    the error and the InferenceReady condition."""
    sts = previous[0]
    replicas = int(sts["spec"]["replicas"])
    log.warning("inference of %s did not become ready; restoring the previous StatefulSet", ws.name)
    selector = manifests.selector(ws, "inference")

    def ready() -> bool | None:
        return True if sum(1 for p in objects.pods(kube, ns, selector) if objects.is_true(p, "Ready")) >= replicas else None

    try:
        for obj in previous:
            kapply.apply(kube, obj)
        # a StatefulSet does not replace a pod that never became ready (Kubernetes' "forced
        # rollback"): delete the broken ones and the controller makes them from the old template
        for pod in objects.pods(kube, ns, selector):
            if not objects.is_true(pod, "Ready"):
                kapply.delete(kube, "v1", "Pod", pod["metadata"]["name"], ns)
        kapply.wait_for(kube, "v1", "Pod", ns, selector, ready, timeout_s=timeout_s,
                        describe=lambda: f"the restored StatefulSet {ns}/{sts['metadata']['name']} is not ready")
    except errors.KaiflowError as exc:
        return f"; putting the previous version back failed too ({exc}): the endpoint is down"
    return "; the previous version was put back and serves again (nothing of this run was kept)"


def inference_ready(kube: kclient.Kube, ws: spec.Workspace, ns: str, replicas: int) -> bool | None:
    """True when ``replicas`` pods of the current spec are Ready; None while not yet; raises
    DeploymentError (reason from :func:`pod_problem`) when a pod cannot become ready."""
    sts = kapply.get(kube, "apps/v1", "StatefulSet", manifests.dns_label(ws.name), ns) or {}
    pods = objects.pods(kube, ns, manifests.selector(ws, "inference"))
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
    ready_pods = sum(1 for p in current if objects.is_true(p, "Ready"))
    return True if int(st.get("readyReplicas") or 0) >= replicas and ready_pods >= replicas else None


def pod_problem(pod: dict) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot become ready without a change: an image that does not
    pull, a container that crash-loops, or no node it can be scheduled on."""
    sched = objects.condition_of(pod, "PodScheduled")
    if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        return "Unschedulable", (sched.get("message") or "no node fits") + \
            "; check the workspace's nodes (kaiflow describe), GPU capacity and taints"
    for cs in objects.container_statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = POD_FAILURES.get(waiting.get("reason") or "")
        if reason:
            hint = {"ImagePullBackOff": "check the image name and its pull secret",
                    "CrashLoopBackOff": "see `kaiflow logs` for why the container exits"}.get(reason, "")
            return reason, f"container {cs.get('name')}: {waiting.get('message') or waiting.get('reason')}" + \
                (f"; {hint}" if hint else "")
    return None
