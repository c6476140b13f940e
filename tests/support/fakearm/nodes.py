"""The Nodes an AKS agent pool brings, as AKS labels and taints them, for the fake Kubernetes API.

``attach_kube(arm, kube)`` makes a pool's Nodes appear in a FakeKube when its create operation
succeeds, and go when its delete operation does, the way the real VM scale set joins and leaves.
The GPU count and memory come from the VM size's entry in kaiflow's SKU catalog.
"""

from __future__ import annotations

import hashlib
from typing import Any

import presets

from tests.support.fakearm import server


def node_names(pool: dict) -> list[str]:
    """AKS's VMSS node names: ``aks-<pool>-<8 digits>-vmss<6 digits>``."""
    name = pool["name"]
    vmss = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10**8
    return [f"aks-{name}-{vmss:08d}-vmss{i:06d}" for i in range(pool["properties"]["count"])]


def node_labels(pool: dict) -> dict[str, str]:
    """Labels AKS puts on every node of ``pool`` (its own, then the pool's nodeLabels)."""
    props = pool["properties"]
    labels = {
        "kubernetes.azure.com/agentpool": pool["name"],
        "agentpool": pool["name"],
        "kubernetes.azure.com/mode": props.get("mode", "User").lower(),
        "kubernetes.azure.com/os-sku": props.get("osSKU", "Ubuntu"),
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": props["vmSize"],
    }
    if props.get("scaleSetPriority") == "Spot":
        labels["kubernetes.azure.com/scalesetpriority"] = "spot"
    labels.update(props.get("nodeLabels") or {})
    return labels


def node_taints(pool: dict) -> list[dict[str, str]]:
    """``nodeTaints`` (``key=value:Effect``) as Node taints."""
    out = []
    for taint in pool["properties"].get("nodeTaints") or []:
        kv, effect = taint.rsplit(":", 1)
        key, _, value = kv.partition("=")
        out.append({"key": key, "value": value, "effect": effect})
    return out


def gpu_shape(vm_size: str) -> dict[str, Any]:
    """GPU count, product and memory of a VM size (kaiflow's catalog); none for an unknown size."""
    try:
        sku = presets.get_sku(vm_size)
    except presets.UnknownSku:
        return {"gpu_count": 0}
    return {
        "gpu_count": sku.gpu_count,
        "gpu_product": f"NVIDIA-{sku.gpu_model.replace(' ', '-')}",
        "gpu_memory_mib": int(sku.gpu_memory_gib * 1024),
    }


def attach_kube(arm: server.FakeArm, kube: Any) -> None:
    """Wire ``arm``'s pool hooks to ``kube`` (anything with FakeKube's ``add_node``/``remove_node``)."""

    def ready(pool: dict) -> None:
        for name in node_names(pool):
            kube.add_node(name, labels=node_labels(pool), taints=node_taints(pool),
                          instance_type=pool["properties"]["vmSize"], ready=True, **gpu_shape(pool["properties"]["vmSize"]))

    def deleted(pool: dict) -> None:
        for name in node_names(pool):
            kube.remove_node(name)

    arm.on_pool_ready = ready
    arm.on_pool_deleted = deleted
