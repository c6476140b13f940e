"""`kaiflow apply -f` of an InferenceSet: apply it, make its child Workspaces, serve each of them.

On a cluster (platform kubernetes or aks) the InferenceSet resource is applied, then
``infra.kube.inferenceset.reconcile`` creates or deletes its child Workspaces, then each child that
is not ready yet runs the same ``workspace`` flow a Workspace file runs (in this process, one
after the other), and a last reconcile writes ``readyReplicas``. ``kaiflow controller`` calls the
same reconcile when the set changes (``kubectl scale inferenceset``, KEDA), and serves the children
as it serves any Workspace.

The local platform has no InferenceSet: it runs one server process per workspace on this machine,
and N copies of one model there would only split the same CPU or GPU between them. Apply the
template as a Workspace instead (the error says so).
"""

from __future__ import annotations

import sys
from typing import Any

from workspace.errors import KaiflowError, SpecError


def as_workspaces(children: list[dict]) -> list[Any]:
    """Child Workspace resources as parsed Workspaces (Kaito's admission rules applied), their
    server fields and the controller's annotations left out (``workspace.loader.resource_document``)."""
    from workspace import loader

    return [loader.from_resource(child, admit=True) for child in children]


def check_platform(docs: list[dict], platform: str) -> None:
    """Refuse InferenceSets on a platform that does not run them (``Platform.runs_inferencesets``)."""
    from infra import platforms

    if not platforms.get(platform).runs_inferencesets:
        names = ", ".join(str((d.get("metadata") or {}).get("name")) for d in docs)
        raise SpecError(f"InferenceSet {names}: the {platform} platform does not run InferenceSets (one server process per "
                        "workspace on this machine); apply spec.template as a Workspace, or use --platform kubernetes")


def apply(docs: list[dict], config_maps: dict[str, dict[str, str]], platform: str, *,
          run_workspace: Any, quiet: bool = False) -> int:
    """Apply each InferenceSet in ``docs`` and serve its children; returns how many failed.
    ``run_workspace(ws)`` runs the workspace flow for one child (raises KaiflowError on failure)."""
    from infra.kube import apply as kapply
    from infra.kube import client as kclient
    from infra.kube import inferenceset
    from workspace import settings

    check_platform(docs, platform)
    s = settings.load()
    kube = kclient.connect(s)
    failed = 0
    for doc in docs:
        inferenceset.check(doc)
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": doc["metadata"].get("namespace") or s.namespace or "default"}}
        kapply.apply(kube, doc, field_manager=inferenceset.FIELD_MANAGER)
        result, errors = converge(kube, doc, run_workspace)
        for message in errors:
            print(f"error: {message}", file=sys.stderr)
        failed += len(errors)
        if not quiet:
            print(f"inferenceset {result.name}: {result.ready}/{result.desired} replicas ready "
                  f"({', '.join(w['metadata']['name'] for w in result.children) or 'none'})")
    return failed


def converge(kube: Any, doc: dict, run_workspace: Any) -> tuple[Any, list[str]]:
    """Reconcile the InferenceSet ``doc`` (as it is in the cluster now), serve each child Workspace
    that is not ready, and reconcile again for the status: what ``kaiflow apply`` does after
    applying the set, and what a controller does when it changes. Returns the last reconcile's
    result and one message per child that failed."""
    from infra.kube import inferenceset

    result = inferenceset.reconcile(kube, doc)
    errors = []
    for ws in as_workspaces([w for w in result.children if not _ready(w)]):
        try:
            run_workspace(ws)
        except KaiflowError as exc:
            errors.append(f"InferenceSet {result.name}: workspace {ws.name}: {exc}")
    return inferenceset.reconcile(kube, doc), errors


def _ready(ws: dict) -> bool:
    from infra.kube import objects

    return objects.is_true(ws, "WorkspaceReady")


def dry_run(docs: list[dict], namespace: str) -> tuple[list[dict], list[Any]]:
    """What ``apply --dry-run`` shows of InferenceSets: each set, and the Workspaces its reconcile
    would create first (``spec.replicas`` of them)."""
    from infra.kube import inferenceset

    children = []
    for doc in docs:
        inferenceset.check(doc)
        ns = doc["metadata"].get("namespace") or namespace
        children += [inferenceset.child_workspace(doc, i, ns) for i in range(inferenceset.desired_replicas(doc))]
    return docs, as_workspaces(children)


def render(docs: list[dict], rest: str, fmt: str) -> str:
    """The InferenceSets first, then ``rest`` (what ``manifests.render`` printed), in one output."""
    import json

    import yaml

    if fmt == "json":
        return json.dumps(docs + (json.loads(rest) if rest.strip() else []), indent=2) + "\n"
    text = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
    return text + ("---\n" + rest if rest else "")
