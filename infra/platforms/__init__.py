"""Where a workspace's work runs, behind one contract (``base.Platform``); this is the one place a
platform is chosen by its name.

    local        this machine: processes, an OCI layout or registry, no cluster   (local.py)
    kubernetes   a cluster; GPU nodes from Karpenter NodeClaims or your own nodes  (kubernetes.py)
    aks          kubernetes, with GPU nodes from an AKS agent pool per workspace   (kubernetes.py)

Platform modules are imported lazily, so the local platform never loads the ``kubernetes`` or
``azure`` SDKs.
"""

from __future__ import annotations

from infra.platforms.base import Platform
from workspace import settings as settings_mod
from workspace.errors import SpecError

NAMES = ("local", "kubernetes", "aks")


def get(name: str | None = None, settings: settings_mod.Settings | None = None) -> Platform:
    """The platform called ``name`` (default: ``KAIFLOW_PLATFORM``)."""
    settings = settings or settings_mod.load()
    name = name or settings.platform
    if name == "local":
        from infra.platforms import local

        return local.LocalPlatform()
    if name in ("kubernetes", "aks"):
        from infra.kube import nodes
        from infra.platforms import kubernetes

        provisioner = provisioner_for(name, settings)
        sources: dict[str, type[nodes.NodeSource]] = {"karpenter": nodes.Karpenter, "byo": nodes.OwnNodes,
                                                      "aks": nodes.AksPools}
        source = sources[provisioner]()
        return kubernetes.KubernetesPlatform(name, source, settings)
    raise SpecError(f"platform '{name}' is not one of {', '.join(NAMES)} (KAIFLOW_PLATFORM or --platform)")


def provisioner_for(name: str | None, settings: settings_mod.Settings) -> str:
    """Where a cluster platform's GPU nodes come from: always AKS agent pools on ``aks``;
    ``KAIFLOW_PROVISIONER`` (karpenter, byo, aks) on ``kubernetes``."""
    return "aks" if (name or settings.platform) == "aks" else settings.provisioner
