"""Node sources: where a workspace's GPU nodes come from on a cluster, behind one protocol.

    Karpenter   NodeClaims (Kaito's path): created per workspace, Ready when their Node is
    OwnNodes    bring-your-own: Ready nodes matching ``resource.labelSelector``, checked against
                the plan through GPU Feature Discovery labels; nothing is created or deleted
    AksPools    one AKS agent pool per workspace (``infra.aks``), its Nodes awaited here

A source makes sure the nodes exist and are Ready (:meth:`NodeSource.ensure`), and says what pods
need to land on them (:class:`Placement`: a node selector and tolerations beyond the ``sku=gpu``
one every pod has); on teardown it deletes what it created (:meth:`NodeSource.release`). The
platform (``infra.platforms.kubernetes``) picks one in ``infra.platforms.get`` and never asks
which it has; a source records nothing itself: what it returns is kept by the platform.

Capacity failures are errors whose ``reason`` lands in ResourceReady and which Prefect does not
retry: a NodeClaim that cannot launch for quota is ``QuotaExceeded``, for capacity or an unknown
SKU ``SkuUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import manifests, objects
from workspace import errors, spec
from workspace import plan as plan_mod
from workspace import settings as settings_mod

QUOTA_WORDS = ("quota", "limit exceeded", "exceeds")
CAPACITY_WORDS = ("insufficientcapacity", "unavailable", "capacity", "sku")
GFD_PRODUCT, GFD_COUNT, GFD_MEMORY = "nvidia.com/gpu.product", "nvidia.com/gpu.count", "nvidia.com/gpu.memory"


@dataclass(frozen=True)
class Placement:
    """What the workspace's pods need to be scheduled on its nodes (empty: the workspace's own
    labelSelector affinity and the ``sku=gpu`` toleration suffice)."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Nodes:
    """The workspace's Ready GPU nodes, and how pods get onto them."""

    names: list[str]
    gpus: int  # each has at least this many allocatable nvidia.com/gpu
    placement: Placement = field(default_factory=Placement)


class NodeSource(Protocol):
    """Where GPU nodes come from; see the module docstring."""

    name: str  # recorded as the workspace's provisioner (``karpenter``, ``byo``, ``aks``)
    ready_reason: str  # ResourceReady's reason once the nodes are Ready

    def ensure(self, kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str,
               settings: settings_mod.Settings) -> Nodes:
        """Make sure the plan's nodes exist and are Ready with the GPUs it needs; idempotent."""

    def release(self, kube: kclient.Kube, ws: spec.Workspace, namespace: str,
                settings: settings_mod.Settings) -> dict[str, list[str]]:
        """Delete the nodes this source created for ``ws``; returns what went, by kind."""


def gpus_needed(plan: plan_mod.WorkspacePlan) -> int:
    """GPUs a node must have: the most any part's pod asks for (1 without parts)."""
    return max(manifests.gpus_per_pod(plan, part.part) for part in plan.parts) if plan.parts else 1


# --------------------------------------------------------------------------- Karpenter
class Karpenter:
    """NodeClaims per workspace (``manifests.nodeclaims``), awaited until each one's Node is Ready."""

    name = "karpenter"
    ready_reason = "NodeClaimsReady"

    def ensure(self, kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str,
               settings: settings_mod.Settings) -> Nodes:
        gpus = gpus_needed(plan)
        nodes = _provision_karpenter(kube, ws, plan, namespace, gpus, settings.kube_wait_timeout_s)
        return Nodes([n["metadata"]["name"] for n in nodes], gpus)

    def release(self, kube: kclient.Kube, ws: spec.Workspace, namespace: str,
                settings: settings_mod.Settings) -> dict[str, list[str]]:
        # cluster-scoped, so not owned by the namespaced CR: by label (the fake's and the real
        # Karpenter then remove their Nodes)
        return {"NodeClaim": kapply.delete_labelled(kube, "karpenter.sh/v1", "NodeClaim", None,
                                                    {manifests.WORKSPACE_LABEL: manifests.dns_label(ws.name),
                                                     manifests.WORKSPACE_NS_LABEL: namespace})}


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
            if node is None or not node_ready(node) or gpu_capacity(node) < gpus:
                return None
            nodes.append(node)
        return nodes

    def describe() -> str:
        return f"NodeClaims {', '.join(names)} not all Ready with {gpus} nvidia.com/gpu on their Nodes"

    return kapply.wait_for(kube, "karpenter.sh/v1", "NodeClaim", None, {manifests.WORKSPACE_LABEL: manifests.dns_label(ws.name)},
                           check, timeout_s=timeout_s, describe=describe)


def _raise_if_launch_failed(claim: dict, ws: spec.Workspace) -> None:
    launched = objects.condition_of(claim, "Launched")
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
    ready = objects.condition_of(claim, "Ready")
    if ready is not None and ready.get("status") != "True":
        return None
    return kapply.get(kube, "v1", "Node", name)


def node_ready(node: dict) -> bool:
    c = objects.condition_of(node, "Ready")
    return bool(c and c.get("status") == "True") and not (node.get("spec") or {}).get("unschedulable")


def gpu_capacity(node: dict) -> int:
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
        ready = [n for n in items if node_ready(n) and gpu_capacity(n) >= gpu_per_node]
        seen.update(matching=len(items), ready=len(ready))
        return sorted(ready, key=lambda n: n["metadata"]["name"])[:count] if len(ready) >= count else None

    def describe() -> str:
        return (f"{seen['ready']} of {count} node(s) matching {kapply.label_selector(selector)} are Ready with "
                f"{gpu_per_node} nvidia.com/gpu ({seen['matching']} match the labels)")

    return kapply.wait_for(api, "v1", "Node", None, dict(selector), check, timeout_s=timeout, describe=describe)


# --------------------------------------------------------------------------- your own nodes
class OwnNodes:
    """Ready nodes you labelled (``resource.labelSelector.matchLabels``), preferred ones first;
    each is checked against the plan by its GPU Feature Discovery labels. Never deleted."""

    name = "byo"
    ready_reason = "NodesReady"

    def ensure(self, kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str,
               settings: settings_mod.Settings) -> Nodes:
        gpus = gpus_needed(plan)
        nodes = _provision_byo(kube, ws, plan, manifests.node_count(ws, plan), gpus, settings.kube_wait_timeout_s)
        return Nodes([n["metadata"]["name"] for n in nodes], gpus)

    def release(self, kube: kclient.Kube, ws: spec.Workspace, namespace: str,
                settings: settings_mod.Settings) -> dict[str, list[str]]:
        return {}


def _provision_byo(kube: kclient.Kube, ws: spec.Workspace, p: plan_mod.WorkspacePlan, count: int, gpus: int,
                   timeout_s: float) -> list[dict]:
    sel = ws.resource.label_selector if ws.resource else None
    match = dict(sel.match_labels or {}) if sel else {}
    if not match:
        raise errors.SpecError("resource.labelSelector.matchLabels: bring-your-own nodes are found by label; "
                               "label your GPU nodes and name the labels here")
    items, _ = kapply.list_objects(kube, "v1", "Node", None, match)
    preferred = list((ws.resource.preferred_nodes if ws.resource else None) or [])
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


# --------------------------------------------------------------------------- AKS agent pools
class AksPools:
    """One AKS agent pool per workspace (``infra.aks``: created or reused, through its long-running
    operation); its Nodes are awaited here, and pods select the pool and tolerate spot."""

    name = "aks"
    ready_reason = "NodesReady"

    def __init__(self, credential: Any = None) -> None:
        self.credential = credential  # any azure-core TokenCredential; None: KAIFLOW_AZURE_CREDENTIAL

    def ensure(self, kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, namespace: str,
               settings: settings_mod.Settings) -> Nodes:
        from infra import aks

        gpus = gpus_needed(plan)
        pool = aks.ensure_agent_pool(ws, plan, settings, namespace=namespace, credential=self.credential)
        per_node = int(pool.get("gpu_per_node") or gpus)
        nodes = wait_for_gpu_nodes(kube, pool["node_selector"], int(pool["count"]), per_node,
                                   settings.kube_wait_timeout_s)
        return Nodes([n["metadata"]["name"] for n in nodes], gpus,
                     Placement(dict(pool["node_selector"]), list(pool.get("tolerations") or [])))

    def release(self, kube: kclient.Kube, ws: spec.Workspace, namespace: str,
                settings: settings_mod.Settings) -> dict[str, list[str]]:
        from infra import aks

        gone = aks.delete_agent_pool(ws, settings, namespace=namespace, credential=self.credential)
        return {"AgentPool": [aks.pool_name(ws, namespace)] if gone else []}
