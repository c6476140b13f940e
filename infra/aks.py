"""AKS GPU agent pools: GPU capacity for a workspace on Azure Kubernetes Service, without Karpenter.

Kaito's gpu-provisioner creates one AKS agent pool per workspace; so does this module, through the
official ``azure-mgmt-containerservice`` client (imported lazily: nothing here loads unless the
provisioner is ``aks``). The AKS node source (``infra.kube.nodes.AksPools``) calls :func:`ensure_agent_pool`
and then waits for the pool's Nodes itself (``infra.kube.nodes.wait_for_gpu_nodes``) with the
returned ``node_selector`` and ``count``; pods add :func:`extra_tolerations` (spot).

The pool's shape, from the workspace and its plan (``workspace.plan.plan_workspace(ws, "aks")``):
VM size = ``resource.instanceType``, count = the plan's nodes (at least ``resource.count``), mode
User, taint ``sku=gpu:NoSchedule``, node labels ``kaito.sh/workspace``,
``kaito.sh/workspacenamespace`` and ``resource.labelSelector.matchLabels``, OS disk from the plan,
OS SKU and spot from settings. An existing pool of the same shape is reused; one of another shape
(or another workspace's) is reported with what differs, never replaced: replacing a pool evicts
whatever runs on it.

Retries, in two layers on purpose. azure-core's ``RetryPolicy`` (``KAIFLOW_AZURE_RETRY_TOTAL``
retries, exponential backoff, ``Retry-After`` honoured) retries 408/429/5xx and connection faults
inside one call, where it knows the request is safe to resend; the poller's GETs get the same. What
still fails becomes a ``TransientError`` (reason ``ARMThrottled``/``ARMUnavailable``/
``ARMUnreachable``), so the Prefect task retries the whole (idempotent) ensure later. Quota, SKU,
authorization, busy-pool and shape errors are not transient: they fail at once with a
``ProvisioningError`` whose ``reason`` lands in the ``ResourceReady`` condition and whose message
says what to do.

Credentials: ``azure.identity.DefaultAzureCredential`` unless a ``credential`` (any azure-core
``TokenCredential``) is passed. Tokens never reach logs or errors: messages carry ARM's error code
and text only.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import re
import time
from typing import Any

import presets
from workspace import errors, spec
from workspace import plan as plan_mod
from workspace import settings as settings_mod

log = logging.getLogger(__name__)

AGENTPOOL_LABEL = "kubernetes.azure.com/agentpool"
WORKSPACE_LABEL = "kaito.sh/workspace"
NAMESPACE_LABEL = "kaito.sh/workspacenamespace"
GPU_TAINT = "sku=gpu:NoSchedule"
SPOT_TOLERATION = {
    "key": "kubernetes.azure.com/scalesetpriority",
    "operator": "Equal",
    "value": "spot",
    "effect": "NoSchedule",
}
MAX_POOL_NAME = 12  # AKS: Linux agent pool names are 1-12 lowercase letters/digits, starting with a letter
_HASH_LEN = 6
_IN_PROGRESS = {"creating", "updating", "scaling", "upgrading", "starting", "stopping", "deleting"}
_ERR_TEXT_MAX = 400


# ---------------------------------------------------------------- names, shapes


def workspace_namespace(workspace: spec.Workspace, settings: settings_mod.Settings | None = None) -> str:
    """The namespace a workspace lives in: its own, else the settings', else ``default``."""
    return workspace.metadata.namespace or (settings.namespace if settings else None) or "default"


def pool_name(workspace: spec.Workspace, namespace: str | None = None) -> str:
    """A stable AKS agent pool name for ``workspace``: up to 6 characters of its name (letters and
    digits, starting with a letter) and a 6-character base-36 hash of ``namespace/name``, so that
    workspaces sharing a long prefix (or the same name in two namespaces) get different pools."""
    ns = namespace or workspace.metadata.namespace or "default"
    stem = re.sub(r"[^a-z0-9]", "", workspace.name.lower()).lstrip("0123456789")
    stem = (stem or "ws")[: MAX_POOL_NAME - _HASH_LEN]
    digest = int.from_bytes(hashlib.sha256(f"{ns}/{workspace.name}".encode()).digest()[:8], "big")
    return stem + _base36(digest, _HASH_LEN)


def _base36(value: int, width: int) -> str:
    chars = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(width):
        value, rem = divmod(value, 36)
        out = chars[rem] + out
    return out


def extra_tolerations(settings: settings_mod.Settings) -> list[dict[str, str]]:
    """Tolerations pods need on this provisioner's nodes beyond ``sku=gpu``: AKS taints spot nodes
    ``kubernetes.azure.com/scalesetpriority=spot:NoSchedule`` by itself."""
    return [dict(SPOT_TOLERATION)] if settings.aks_spot else []


def node_labels(workspace: spec.Workspace, namespace: str) -> dict[str, str]:
    """Labels every node of the workspace's pool carries: Kaito's two plus the user's matchLabels."""
    labels = {WORKSPACE_LABEL: workspace.name, NAMESPACE_LABEL: namespace}
    selector = workspace.resource.label_selector if workspace.resource else None
    if selector and selector.match_labels:
        labels.update(selector.match_labels)
    return labels


def node_count(workspace: spec.Workspace, plan: plan_mod.WorkspacePlan) -> int:
    """Nodes the pool needs: the inference plan's nodes (the model's need, which raises or lowers
    resource.count as Kaito's estimator does), else resource.count, else 1."""
    for part in plan.parts:
        if part.part == "inference" and part.fits and part.details.get("nodes"):
            return int(part.details["nodes"])
    return (workspace.resource.count if workspace.resource else None) or 1


def os_disk_gib(plan: plan_mod.WorkspacePlan) -> int | None:
    """OS disk per node from the plan: the inference plan's disk, or the same rule (weights x 1.2 + 30 GiB)
    for a tuning model; ``None`` when nothing could be sized (AKS's default then applies)."""
    sizes: list[int] = []
    for part in plan.parts:
        if part.details.get("disk_gib"):
            sizes.append(int(part.details["disk_gib"]))
        elif part.part == "tuning" and part.fits and presets.is_preset(part.model):
            weights = presets.get_model(part.model).weights_gib
            sizes.append(int(math.ceil(weights * 1.2 + 30)))
    return max(sizes) if sizes else None


def desired_pool(
    workspace: spec.Workspace, plan: plan_mod.WorkspacePlan, settings: settings_mod.Settings, namespace: str
) -> dict[str, Any]:
    """The agent pool body (ARM JSON, ``properties`` as the REST API names them)."""
    if not workspace.instance_type:
        raise errors.SpecError(
            f"workspace {workspace.name}: resource.instanceType is required with provisioner aks "
            "(the VM size of the agent pool, e.g. Standard_NC6s_v3)"
        )
    props: dict[str, Any] = {
        "vmSize": workspace.instance_type,
        "count": node_count(workspace, plan),
        "mode": "User",
        "type": "VirtualMachineScaleSets",
        "osType": "Linux",
        "osSKU": settings.aks_os_sku,
        "enableAutoScaling": False,
        "nodeTaints": [GPU_TAINT],
        "nodeLabels": node_labels(workspace, namespace),
    }
    disk = os_disk_gib(plan)
    if disk:
        props["osDiskSizeGB"] = disk
    if settings.aks_spot:
        props.update(scaleSetPriority="Spot", scaleSetEvictionPolicy="Delete", spotMaxPrice=-1)
    return {"properties": props}


def shape_differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """What differs between the wanted pool properties and an existing pool's, in words."""
    diffs: list[str] = []
    for key in ("vmSize", "count", "mode", "osSKU", "osDiskSizeGB"):
        if key in want and str(have.get(key, "")).casefold() != str(want[key]).casefold():
            diffs.append(f"{key} is {have.get(key)!r}, the workspace wants {want[key]!r}")
    priority = have.get("scaleSetPriority") or "Regular"
    if priority != want.get("scaleSetPriority", "Regular"):
        diffs.append(f"scaleSetPriority is {priority!r}, the workspace wants {want.get('scaleSetPriority', 'Regular')!r}")
    have_taints = set(have.get("nodeTaints") or [])
    own_taints = {t for t in have_taints if not t.startswith("kubernetes.azure.com/")}
    if own_taints != set(want["nodeTaints"]):
        diffs.append(f"nodeTaints are {sorted(own_taints)}, the workspace wants {want['nodeTaints']}")
    have_labels = have.get("nodeLabels") or {}
    for key, value in want["nodeLabels"].items():
        if have_labels.get(key) != value:
            diffs.append(f"node label {key} is {have_labels.get(key)!r}, the workspace wants {value!r}")
    return diffs


# ---------------------------------------------------------------- public operations


def ensure_agent_pool(
    workspace: spec.Workspace,
    plan: plan_mod.WorkspacePlan,
    settings: settings_mod.Settings,
    *,
    credential: Any = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """Create (or reuse) the workspace's agent pool and wait for its long-running operation.

    Returns ``{"pool", "node_selector", "count", "gpu_per_node", "created", "tolerations"}``;
    ``node_selector`` selects exactly this pool's nodes. ``credential``: any azure-core
    ``TokenCredential`` (default: ``KAIFLOW_AZURE_CREDENTIAL``). ``namespace``: the workspace's namespace
    as the platform resolved it (default: :func:`workspace_namespace`); it is part of the pool's name
    and labels, so pass the same one to :func:`delete_agent_pool`. Raises ``ProvisioningError``
    (reason and what to do), ``TransientError`` for faults worth retrying, ``SpecError``/``SizingError``.
    """
    plan_mod.require_fit(plan)
    namespace = namespace or workspace_namespace(workspace, settings)
    name = pool_name(workspace, namespace)
    body = desired_pool(workspace, plan, settings, namespace)
    ctx = _Context(settings, name, workspace.name, body["properties"])
    with _client(settings, credential) as client:
        existing = _get_pool(client, ctx)
        if existing is not None and _state(existing) in _IN_PROGRESS:
            existing = _wait_while_busy(client, ctx, existing)
        created = existing is None
        if existing is not None:
            _check_reusable(ctx, workspace, existing)
            if _state(existing) != "failed":
                log.info("agent pool %s of cluster %s exists with the workspace's shape: reused", name, settings.azure_cluster)
                return _result(ctx, body, workspace, created=False)
        _create(client, ctx, body)
    return _result(ctx, body, workspace, created=created)


def delete_agent_pool(
    workspace: spec.Workspace, settings: settings_mod.Settings, *, credential: Any = None, namespace: str | None = None
) -> bool:
    """Delete the workspace's agent pool and wait until it is gone. False when there was none.

    A pool of that name that carries another workspace's label is left alone (``PoolNotOwned``)."""
    namespace = namespace or workspace_namespace(workspace, settings)
    name = pool_name(workspace, namespace)
    ctx = _Context(settings, name, workspace.name, {})
    with _client(settings, credential) as client:
        existing = _get_pool(client, ctx)
        if existing is None:
            return False
        labels = _props(existing).get("nodeLabels") or {}
        if labels.get(WORKSPACE_LABEL) != workspace.name or labels.get(NAMESPACE_LABEL) != namespace:
            raise errors.ProvisioningError(
                f"agent pool {name} of cluster {settings.azure_cluster} does not belong to workspace "
                f"{namespace}/{workspace.name} (its nodes are labelled {WORKSPACE_LABEL}={labels.get(WORKSPACE_LABEL)!r}): "
                "left in place; delete it yourself (az aks nodepool delete) if it is no longer needed",
                reason="PoolNotOwned",
            )
        _call(ctx, "delete", lambda: _await(ctx, client.agent_pools.begin_delete(
            settings.azure_resource_group, settings.azure_cluster, name), "deleted"))
    return True


# ---------------------------------------------------------------- internals


class _Context:
    """What error messages need to say where and what."""

    def __init__(self, settings: settings_mod.Settings, pool: str, workspace: str, props: dict[str, Any]):
        self.settings = settings
        self.pool = pool
        self.workspace = workspace
        self.props = props

    @property
    def where(self) -> str:
        s = self.settings
        return f"agent pool {self.pool} of AKS cluster {s.azure_cluster} (resource group {s.azure_resource_group})"


def _client(settings: settings_mod.Settings, credential: Any) -> Any:
    missing = [
        f"KAIFLOW_{field.upper()}"
        for field in ("azure_subscription_id", "azure_resource_group", "azure_cluster")
        if not getattr(settings, field)
    ]
    if missing:
        raise errors.ProvisioningError(
            f"provisioner aks needs the AKS cluster's coordinates: set {', '.join(missing)}",
            reason="AzureNotConfigured",
        )
    from azure.mgmt.containerservice import ContainerServiceClient

    if credential is None:
        credential = make_credential(settings)
    kwargs: dict[str, Any] = dict(
        base_url=settings.azure_base_url,
        retry_total=settings.azure_retry_total,
        polling_interval=settings.azure_poll_interval_s,
    )
    if settings.azure_ca_bundle:
        kwargs["connection_verify"] = str(settings.azure_ca_bundle.expanduser())
    return ContainerServiceClient(credential, settings.azure_subscription_id, **kwargs)


def make_credential(settings: settings_mod.Settings) -> Any:
    """The TokenCredential ``KAIFLOW_AZURE_CREDENTIAL`` names: ``default`` (azure-identity's
    ``DefaultAzureCredential``: environment, workload identity, managed identity, ``az login``), or
    ``module:callable`` returning any TokenCredential (your own, built however your site needs)."""
    spec_ = settings.azure_credential
    if spec_ == "default":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()
    module_name, _, attr = spec_.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise errors.ProvisioningError(
            f"KAIFLOW_AZURE_CREDENTIAL={spec_!r}: cannot load it ({exc}); use 'default' or 'module:callable'",
            reason="AzureNotConfigured",
        ) from None
    return factory()


def _props(pool: Any) -> dict[str, Any]:
    data = pool.as_dict() if hasattr(pool, "as_dict") else dict(pool)
    return data.get("properties") or {}


def _state(pool: Any) -> str:
    return str(_props(pool).get("provisioningState") or "").casefold()


def _get_pool(client: Any, ctx: _Context) -> Any | None:
    from azure.core.exceptions import ResourceNotFoundError

    s = ctx.settings

    def get() -> Any | None:
        try:
            return client.agent_pools.get(s.azure_resource_group, s.azure_cluster, ctx.pool)
        except ResourceNotFoundError as exc:
            if _code(exc).casefold() in ("notfound", "agentpoolnotfound", "") and _cluster_exists(client, s):
                return None
            raise

    return _call(ctx, "read", get)


def _cluster_exists(client: Any, s: settings_mod.Settings) -> bool:
    """A 404 on the pool means "no pool yet" only when the cluster itself exists."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        client.managed_clusters.get(s.azure_resource_group, s.azure_cluster)
    except ResourceNotFoundError:
        return False
    return True


def _wait_while_busy(client: Any, ctx: _Context, pool: Any) -> Any | None:
    """An earlier apply's operation is still running on the pool: wait for it rather than fight it."""
    deadline = time.monotonic() + ctx.settings.aks_pool_timeout_s
    while _state(pool) in _IN_PROGRESS:
        if _state(pool) == "deleting" or time.monotonic() > deadline:
            raise errors.ProvisioningError(
                f"{ctx.where} is {_props(pool).get('provisioningState')}: wait for that operation to finish "
                f"(az aks nodepool show -g {ctx.settings.azure_resource_group} --cluster-name {ctx.settings.azure_cluster} "
                f"-n {ctx.pool} --query provisioningState) and apply again",
                reason="PoolBusy",
            )
        time.sleep(max(ctx.settings.azure_poll_interval_s, 0.05))
        pool = _get_pool(client, ctx)
        if pool is None:
            return None
    return pool


def _check_reusable(ctx: _Context, workspace: spec.Workspace, existing: Any) -> None:
    have = _props(existing)
    labels = have.get("nodeLabels") or {}
    owner = labels.get(WORKSPACE_LABEL)
    want_ns = ctx.props["nodeLabels"][NAMESPACE_LABEL]
    if owner != workspace.name or labels.get(NAMESPACE_LABEL) != want_ns:
        raise errors.ProvisioningError(
            f"{ctx.where} exists but is not workspace {want_ns}/{workspace.name}'s (its nodes are labelled "
            f"{WORKSPACE_LABEL}={owner!r}, {NAMESPACE_LABEL}={labels.get(NAMESPACE_LABEL)!r}): left untouched; "
            "rename the workspace, or delete that pool if it is stale (az aks nodepool delete)",
            reason="PoolNameTaken",
        )
    diffs = shape_differences(ctx.props, have)
    if diffs:
        raise errors.ProvisioningError(
            f"{ctx.where} exists with another shape: " + "; ".join(diffs) + ". kaiflow does not replace a "
            f"pool silently (that evicts what runs on it): run `kaiflow delete workspace {workspace.name}` "
            "to remove the pool and apply again, or change the workspace back to the pool's shape",
            reason="PoolShapeMismatch",
        )


def _create(client: Any, ctx: _Context, body: dict[str, Any]) -> None:
    s = ctx.settings
    log.info("creating %s: %s x %s", ctx.where, body["properties"]["count"], body["properties"]["vmSize"])
    _call(ctx, "create", lambda: _await(ctx, client.agent_pools.begin_create_or_update(
        s.azure_resource_group, s.azure_cluster, ctx.pool, body), "created"))


def _await(ctx: _Context, poller: Any, what: str) -> Any:
    timeout = ctx.settings.aks_pool_timeout_s
    result = poller.result(timeout=timeout)
    if not poller.done():
        raise errors.ProvisioningError(
            f"{ctx.where} was not {what} within {timeout:g} s (status {poller.status()}): apply again to keep "
            "waiting, or raise KAIFLOW_AKS_POOL_TIMEOUT_S",
            reason="PoolTimeout",
        )
    return result


def _result(ctx: _Context, body: dict[str, Any], workspace: spec.Workspace, *, created: bool) -> dict[str, Any]:
    props = body["properties"]
    try:
        gpus = presets.get_sku(props["vmSize"]).gpu_count
    except presets.UnknownSku:
        gpus = None
    selector = {AGENTPOOL_LABEL: ctx.pool, WORKSPACE_LABEL: workspace.name}
    selector.update(props["nodeLabels"])
    return {
        "pool": ctx.pool,
        "node_selector": selector,
        "count": props["count"],
        "gpu_per_node": gpus,
        "created": created,
        "tolerations": extra_tolerations(ctx.settings),
    }


# ---------------------------------------------------------------- error mapping


def _call(ctx: _Context, action: str, fn: Any) -> Any:
    """Run one ARM call; turn azure-core errors into kaiflow errors that say what to do."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError, ServiceResponseError

    try:
        return fn()
    except ClientAuthenticationError as exc:
        raise _authentication_error(ctx, exc) from None
    except HttpResponseError as exc:
        raise map_http_error(ctx, action, exc) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise errors.ProvisioningError(
                f"the TLS certificate of {ctx.settings.azure_base_url} is not trusted: point KAIFLOW_AZURE_CA_BUNDLE "
                f"at the CA bundle (PEM) that signed it, or fix KAIFLOW_AZURE_BASE_URL ({_short(str(exc))})",
                reason="ARMCertificateUntrusted",
            ) from None
        raise errors.TransientError(
            f"could not reach Azure Resource Manager at {ctx.settings.azure_base_url} to {action} {ctx.where}: "
            f"{type(exc).__name__}: {_short(str(exc))}",
            reason="ARMUnreachable",
        ) from None


def _code(exc: Any) -> str:
    err = getattr(exc, "error", None)
    return str(getattr(err, "code", None) or "")


def _arm_text(exc: Any) -> str:
    err = getattr(exc, "error", None)
    return _short(str(getattr(err, "message", None) or getattr(exc, "reason", None) or exc))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERR_TEXT_MAX else text[: _ERR_TEXT_MAX - 3] + "..."


def _is_quota(code: str, text: str) -> bool:
    return "quota" in code.casefold() or (code in ("OperationNotAllowed", "BadRequest", "") and "quota" in text.casefold())


def _is_sku(code: str, text: str) -> bool:
    low = text.casefold()
    return code in ("SkuNotAvailable", "ErrCode_VMSizeNotSupported", "VMSizeNotSupported") or (
        code in ("BadRequest", "InvalidParameter", "") and ("vm size" in low or "sku" in low)
        and ("not allowed" in low or "not available" in low or "not supported" in low)
    )


def _is_busy(status: int | None, code: str) -> bool:
    return status in (409, 412) or code in (
        "OperationNotAllowed", "EtagMismatch", "AnotherOperationInProgress", "Conflict", "PreconditionFailed",
    )


def map_http_error(ctx: _Context, action: str, exc: Any) -> errors.KaiflowError:
    """The kaiflow error for an ARM ``HttpResponseError`` (the initial call or the operation's end)."""
    status, code, text = getattr(exc, "status_code", None), _code(exc), _arm_text(exc)
    s, vm = ctx.settings, ctx.props.get("vmSize", "?")
    arm = f"(ARM {'operation' if status == 200 else status} {code}: {text})"
    if _is_quota(code, text):
        return errors.QuotaExceeded(_quota_message(ctx, vm) + f" {arm}")
    if _is_sku(code, text):
        return errors.SkuUnavailable(
            f"VM size {vm} is not available to subscription {s.azure_subscription_id} in the cluster's region, so "
            f"{ctx.where} cannot be {_PAST.get(action, action)}: see `az vm list-skus --location <region> --size {vm} --all -o table` "
            "(the Restrictions column), pick another resource.instanceType (`kaiflow skus`), or ask Azure support "
            f"to enable the size {arm}"
        )
    if status == 403 or code in ("AuthorizationFailed", "LinkedAuthorizationFailed"):
        return errors.ProvisioningError(
            f"the Azure identity kaiflow runs as may not {action} {ctx.where}: grant it the 'Azure Kubernetes Service "
            "Contributor Role' (or Contributor) on the cluster: `az role assignment create --assignee <its client id> "
            f"--role 'Azure Kubernetes Service Contributor Role' --scope <cluster resource id>` {arm}",
            reason="AuthorizationFailed",
        )
    if status == 429:
        return errors.TransientError(f"Azure Resource Manager is throttling requests to {action} {ctx.where} {arm}",
                                     reason="ARMThrottled")
    if status is not None and status >= 500:
        return errors.TransientError(f"Azure Resource Manager failed to {action} {ctx.where} {arm}", reason="ARMUnavailable")
    if _is_busy(status, code):
        return errors.ProvisioningError(
            f"another operation is in progress on {ctx.where} or its cluster: wait for it to finish "
            f"(az aks nodepool show -g {s.azure_resource_group} --cluster-name {s.azure_cluster} -n {ctx.pool} "
            f"--query provisioningState) and apply again {arm}",
            reason="PoolBusy",
        )
    if status == 404:
        return errors.ProvisioningError(
            f"AKS cluster {s.azure_cluster} was not found in resource group {s.azure_resource_group} of subscription "
            f"{s.azure_subscription_id}: check KAIFLOW_AZURE_SUBSCRIPTION_ID, KAIFLOW_AZURE_RESOURCE_GROUP and "
            f"KAIFLOW_AZURE_CLUSTER {arm}",
            reason="ClusterNotFound",
        )
    return errors.ProvisioningError(f"could not {action} {ctx.where} {arm}", reason=code or "ProvisioningFailed")


_PAST = {"create": "created", "delete": "deleted", "read": "read"}


def _quota_message(ctx: _Context, vm: str) -> str:
    count = ctx.props.get("count", 1)
    try:
        vcpus = presets.get_sku(vm).vcpus * count
        need = f"{count} x {vm} = {vcpus} vCPUs"
    except presets.UnknownSku:
        need = f"{count} x {vm}"
    return (
        f"the subscription's vCPU quota for {vm}'s VM family in the cluster's region is too low for {ctx.where} "
        f"({need}): request more (Azure portal > Quotas > Compute, or `az vm list-usage --location <region> -o table` "
        "to see the family's limit and usage), free some, or pick another resource.instanceType"
    )


def _authentication_error(ctx: _Context, exc: Any) -> errors.ProvisioningError:
    return errors.ProvisioningError(
        f"could not authenticate to Azure to manage {ctx.where}: sign in with `az login`, or set AZURE_CLIENT_ID, "
        "AZURE_TENANT_ID and AZURE_CLIENT_SECRET (or use a managed/workload identity) for DefaultAzureCredential "
        f"({type(exc).__name__}: {_short(_arm_text(exc))})",
        reason="AuthenticationFailed",
    )
