"""The resource types the fake serves: built-in kinds plus the kinds of installed CRDs.

Discovery documents, URL routing and validation all read this one table, so a kind is either
served everywhere (list, watch, discovery, `kube.get`) or nowhere (404 until its CRD exists).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str                       # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()          # "status", "log"
    schema: dict[str, Any] | None = None        # openAPIV3Schema (custom resources only)
    categories: tuple[str, ...] = ()
    # the scale subresource: (specReplicasPath, statusReplicasPath, labelSelectorPath), as in a CRD
    scale_paths: tuple[str, ...] = ()
    printer_columns: tuple[Any, ...] = ()       # a CRD version's additionalPrinterColumns (dicts)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def custom(self) -> bool:
        return self.schema is not None

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are stored once per group/plural, whatever version they are read at."""
        return (self.group, self.plural)

    def discovery_entry(self) -> list[dict[str, Any]]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        entry: dict[str, Any] = {"name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
                                 "kind": self.kind, "verbs": verbs}
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        for sub in self.subresources:
            sub_verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            sub_kind = "Pod" if sub == "log" else self.kind
            sub_entry: dict[str, Any] = {"name": f"{self.plural}/{sub}", "singularName": "",
                                         "namespaced": self.namespaced, "kind": sub_kind, "verbs": sub_verbs}
            if sub == "scale":    # kubectl scale learns the Scale kind's group/version from here
                sub_entry.update(group="autoscaling", version="v1", kind="Scale")
            entries.append(sub_entry)
        return entries

    def aggregated_entry(self) -> dict[str, Any]:
        """This resource in an aggregated discovery document (apidiscovery.k8s.io/v2 APIResourceDiscovery)."""
        return _aggregated_entry(self)


def _aggregated_entry(rtype: ResourceType) -> dict[str, Any]:
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    entry: dict[str, Any] = {"resource": rtype.plural, "singularResource": rtype.singular, "verbs": verbs,
                             "scope": "Namespaced" if rtype.namespaced else "Cluster",
                             "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}}
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    subs = []
    for sub in rtype.subresources:
        kind = {"log": {"group": "", "version": "v1", "kind": "Pod"},
                "scale": {"group": "autoscaling", "version": "v1", "kind": "Scale"}}.get(
            sub, {"group": rtype.group, "version": rtype.version, "kind": rtype.kind})
        subs.append({"subresource": sub, "responseKind": kind,
                     "verbs": ["get"] if sub == "log" else ["get", "patch", "update"]})
    if subs:
        entry["subresources"] = subs
    return entry


def _t(group: str, version: str, plural: str, kind: str, namespaced: bool = True,
       short: tuple[str, ...] = (), subs: tuple[str, ...] = ()) -> ResourceType:
    scale = (".spec.replicas", ".status.replicas", "") if "scale" in subs else ()
    categories = ("all",) if plural in _ALL else ()
    return ResourceType(group, version, plural, kind, namespaced, short, subs, categories=categories, scale_paths=scale)


_ALL = {"pods", "services", "statefulsets", "deployments", "jobs"}   # the built-in category `kubectl get all` reads


BUILTINS: tuple[ResourceType, ...] = (
    _t("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    _t("", "v1", "nodes", "Node", False, ("no",), ("status",)),
    _t("", "v1", "pods", "Pod", True, ("po",), ("status", "log")),
    _t("", "v1", "services", "Service", True, ("svc",), ("status",)),
    _t("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _t("", "v1", "secrets", "Secret", True),
    _t("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    _t("", "v1", "events", "Event", True, ("ev",)),
    _t("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), ("status",)),
    _t("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), ("status", "scale")),
    _t("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status", "scale")),
    _t("batch", "v1", "jobs", "Job", True, (), ("status",)),
    _t("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _t("coordination.k8s.io", "v1", "leases", "Lease", True),  # the workspace controller's leader election
    _t("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False, ("crd", "crds"),
       ("status",)),
)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition object."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        declared = version.get("subresources") or {}
        subs = tuple(sub for sub in ("status", "scale") if sub in declared)
        scale = declared.get("scale") or {}
        scale_paths = (scale.get("specReplicasPath", ""), scale.get("statusReplicasPath", ""),
                       scale.get("labelSelectorPath", "")) if "scale" in declared else ()
        schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object",
                                                                            "x-kubernetes-preserve-unknown-fields": True}
        out.append(ResourceType(spec["group"], version["name"], names["plural"], names["kind"],
                                spec.get("scope", "Namespaced") == "Namespaced",
                                tuple(names.get("shortNames") or ()), subs, schema,
                                tuple(names.get("categories") or ()), scale_paths,
                                tuple(version.get("additionalPrinterColumns") or ())))
    return out


def crd_storage_version(crd: dict[str, Any]) -> str:
    return next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
