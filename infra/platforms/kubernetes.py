"""The ``kubernetes`` and ``aks`` platforms: a workspace as a Workspace CR, GPU nodes from a node
source, a tuning Job, an evaluation Job and a StatefulSet behind a Service.

    node source (infra.kube.nodes)   Karpenter NodeClaims, your own labelled nodes, or an AKS pool
    infra.kube.crstatus              the Workspace CR (owner of it all) and its status, mirrored
    infra.kube.jobs                  tuning and evaluation Jobs, what their pods reported
    infra.kube.inference             StatefulSet + Service, readiness, rollback
    infra.kube.views                 what get/describe/logs show, and delete

``aks`` is this class with :class:`infra.kube.nodes.AksPools` as its node source; nothing here
asks which source it has. Each step applies its objects with server-side apply, waits on them with
watches, and reports through the sink it is given — the record, mirrored onto the Workspace CR
(:meth:`KubernetesPlatform.reporter`), so ``kaiflow get`` and ``kubectl get workspace`` agree.
Capacity failures (quota, SKU unavailable) and Job failures are not transient, so Prefect does not
retry them into a storm; API hiccups are.

Where a workspace's state lives between flow runs:
- the Workspace CR: spec and status; owner of everything namespaced the workspace creates;
- ``<name>-tuning-result`` ConfigMap: the cache key and the digest-pinned adapter image of the
  last successful tuning Job, so an identical re-apply reuses it (the Job itself goes after a TTL);
- the workspace's record (``infra.records``): namespace, provisioner, nodes and the placement
  pods need (``.cluster``), the endpoint and what it serves.

The registry is called here only, never from the Job code: to resolve the output tag when a
tuning pod reported no digest, and to move the output tag to a promoted candidate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from infra import datasets, images, records, registry
from infra.kube import client as kclient
from infra.kube import crstatus, inference, jobs, manifests, nodes, views
from infra.platforms import base
from workspace import errors, spec, status
from workspace import plan as plan_mod
from workspace import settings as settings_mod

log = logging.getLogger(__name__)
SERVING, CANDIDATE = "serving", "candidate"  # the adapter names an evaluation compares


class KubernetesPlatform:
    """A cluster reached through kubeconfig or in-cluster config; GPU nodes from ``source``."""

    runs_inferencesets = True  # children are Workspace resources (infra.kube.inferenceset)
    runs_in_image = True  # every pod runs KAIFLOW_IMAGE

    def __init__(self, name: str, source: nodes.NodeSource, settings: settings_mod.Settings) -> None:
        self.name = name
        self.source = source
        self.settings = settings

    # ------------------------------------------------------------------ shared
    def _kube(self) -> kclient.Kube:
        return kclient.connect(self.settings)

    def reporter(self, ws: spec.Workspace) -> crstatus.CrMirror:
        def record() -> records.WorkspaceRecord:
            return records.load(ws.name) or records.WorkspaceRecord(name=ws.name)

        return crstatus.CrMirror(records.RecordSink(ws.name), ws, kube=self._kube,
                                 conditions=lambda: record().conditions,
                                 worker_nodes=lambda: list((record().cluster or records.ClusterState()).nodes))

    def plan(self, ws: spec.Workspace, config_maps: dict[str, dict[str, str]] | None = None) -> plan_mod.WorkspacePlan:
        return plan_mod.plan_workspace(ws, self.name, config_maps=config_maps)

    def sku(self, ws: spec.Workspace) -> str:
        return ws.instance_type or "local"

    def _placement(self, ws: spec.Workspace) -> nodes.Placement:
        record = records.load(ws.name)
        placement = record.cluster.placement if record and record.cluster else records.Placement()
        return nodes.Placement(dict(placement.node_selector), list(placement.tolerations))

    # ------------------------------------------------------------------ provision
    def provision(self, ws: spec.Workspace, report: status.Reporter,
                  config_maps: dict[str, dict[str, str]] | None = None) -> base.Provisioned:
        p = self.plan(ws, config_maps)
        kube = self._kube()
        ns = kube.namespace_for(ws)
        try:
            crstatus.ensure(kube, ws)
        except errors.KaiflowError as exc:
            report.condition(status.RESOURCE_READY, False, exc.reason, str(exc))
            raise
        if not p.fits:
            msg = "; ".join(p.problems())
            report.condition(status.RESOURCE_READY, False, errors.SizingError.reason, msg)
            raise errors.SizingError(f"workspace {ws.name}: {msg}")
        try:  # the image every pod runs: refused before any node is bought if its registry lacks it
            log.info("%s", images.resolve(self.settings.image).line())
        except errors.KaiflowError as exc:
            report.condition(status.RESOURCE_READY, False, exc.reason, str(exc))
            raise
        # where the nodes come from is known before they exist, so a teardown after a failed
        # provision still releases what was asked for
        _remember_cluster(ws.name, namespace=ns, provisioner=self.source.name)
        try:
            got = self.source.ensure(kube, ws, p, ns, self.settings)
        except errors.KaiflowError as exc:
            report.condition(status.RESOURCE_READY, False, exc.reason, str(exc))
            raise
        _remember_cluster(ws.name, nodes=list(got.names),
                          placement=records.Placement(node_selector=dict(got.placement.node_selector),
                                                      tolerations=list(got.placement.tolerations)))
        report.condition(status.RESOURCE_READY, True, self.source.ready_reason,
                         f"{len(got.names)} node(s) ready with {got.gpus}+ nvidia.com/gpu: {', '.join(got.names)}")
        record = records.load(ws.name)
        crstatus.write_status(kube, ws, record.conditions if record else [], got.names)
        return base.Provisioned(instance=p.instance_type, provisioner=self.source.name, namespace=ns,
                                nodes=list(got.names),
                                parts=[base.PartSummary(part=x.part, model=x.model, summary=x.summary) for x in p.parts])

    # ------------------------------------------------------------------ dataset
    def fetch_dataset(self, ws: spec.Workspace, report: status.Reporter) -> base.Dataset:
        """The tuning pod pulls the data itself; the flow pulls it too, only to fingerprint it
        (conditional requests make a re-pull of unchanged data cheap). Where the flow cannot see the
        data — a volumeSource only pods mount, or a URL/image the cluster reaches but the machine
        running the flow does not — the fingerprint is the source spec itself, said in a warning
        and an event: then changed content behind an unchanged URL is not noticed, and re-applying
        does not retrain."""
        dest = self.settings.home_dir / "datasets" / ws.name
        inp = _tuning(ws).input
        if inp.volume_source and not inp.volume_source.model_dump(by_alias=True).get("hostPath"):
            return _unseen(ws, "tuning.input.volumeSource is mounted by the tuning pod", report)
        try:
            fp = datasets.pull(inp, dest, retry=datasets.RetryPolicy(attempts=2))
        except errors.DatasetError as exc:
            if not exc.transient:  # 404, HTML, unknown format: the pod would fail the same way
                raise
            return _unseen(ws, f"unreachable from the flow: {exc.message}", report)
        log.info("dataset %s: %d file(s), digest %s", dest, len(fp.files), fp.digest[:19])
        report.event("DatasetPulled", f"digest {fp.digest[:19]}")
        return base.Dataset(dir=str(dest), digest=fp.digest, verified=True)

    # ------------------------------------------------------------------ tuning
    def tune(self, ws: spec.Workspace, dataset: base.Dataset, config_maps: dict[str, dict[str, str]],
             cache_key: str, report: status.Reporter, *, candidate: bool = False) -> base.Tuned:
        """A Job on the workspace's GPU nodes, labelled with ``cache_key``; its pod pushes the
        adapter image. ``candidate``: the Job pushes to a candidate tag beside
        ``tuning.output.image`` (``manifests.candidate_reference``), which keeps its tag until
        promotion; this needs an output image, and data the flow could fingerprint."""
        output_image = None
        if candidate:
            output_image = manifests.candidate_reference(self._retrainable_output(ws, dataset), cache_key)
        run = jobs.run_tuning(self._kube(), ws, self.plan(ws), cache_key=cache_key, config_maps=config_maps,
                              placement=self._placement(ws), settings=self.settings, report=report,
                              resolve_tag=_tag_resolver(_tuning(ws).output.image_push_secret), output_image=output_image)
        return base.Tuned(cache_key=cache_key, reused=run.reused, reference=run.reference, digest=run.digest, job=run.job)

    def _retrainable_output(self, ws: spec.Workspace, dataset: base.Dataset) -> str:
        """``tuning.output.image``, which a retrain candidate is pushed beside; refused when there
        is none, or when the flow could not read the data (it cannot tell whether it changed)."""
        name, image = ws.name, _tuning(ws).output.image
        if not image:
            raise errors.SpecError(
                f"tuning.output.image: retraining {name} on {self.name} pushes the candidate beside the output "
                "image and moves its tag on promotion; tuning.output.volumeSource cannot be retrained with "
                "an evaluation gate (use `kaiflow apply`)")
        if not dataset.verified:
            raise errors.ProvisioningError(
                f"retrain {name}: the flow could not read tuning.input, so it cannot tell whether the "
                "data changed since the serving adapter was trained; make the data reachable from "
                "where the flow runs", reason="DatasetNotVerified")
        return image

    def publish(self, ws: spec.Workspace, tuned: base.Tuned, report: status.Reporter) -> base.Image:
        """The tuning Job's pod pushed the image already: it, pinned by the digest it reported."""
        if tuned.image is None:
            raise errors.TuningError(f"tuning of {ws.name} reported no adapter image; see `kaiflow logs {ws.name} --tuning`")
        return tuned.image

    # ------------------------------------------------------------------ retrain: evaluation, promotion
    def evaluate(self, ws: spec.Workspace, dataset: base.Dataset, config_maps: dict[str, dict[str, str]],
                 serving_image: str, candidate: base.Tuned, report: status.Reporter) -> base.Scores:
        """An evaluation Job beside the tuning Job: it pulls the data and both adapter images by
        digest and leaves its scores in its termination message."""
        adapters = {SERVING: serving_image, CANDIDATE: candidate.reference or ""}
        scores = jobs.run_evaluation(self._kube(), ws, self.plan(ws), cache_key=candidate.cache_key,
                                     adapters=adapters, config_maps=config_maps, placement=self._placement(ws),
                                     settings=self.settings, report=report)
        return base.Scores.model_validate(scores)

    def promote(self, ws: spec.Workspace, candidate: base.Tuned, report: status.Reporter) -> base.Image:
        """Move ``tuning.output.image``'s tag to the candidate's digest: the candidate's manifest
        PUT under the output tag (its blobs are in the same repository already: nothing is uploaded
        again), from where the flow runs, with the flow's copy of ``imagePushSecret``."""
        out = _tuning(ws).output
        if not candidate.reference or not out.image:
            raise errors.SpecError(f"retrain {ws.name}: promotion moves tuning.output.image to the candidate's image; "
                                   "both are needed")
        creds = registry.credentials.for_secret(out.image_push_secret)
        pinned = registry.copy(candidate.reference, out.image, source_credentials=creds, dest_credentials=creds)
        digest = pinned.rsplit("@", 1)[1]
        if digest != candidate.reference.rsplit("@", 1)[-1]:
            raise errors.RegistryError(f"moving {out.image} to {candidate.reference} gave digest {digest}: "
                                       "the registry changed the manifest; nothing was deployed")
        return base.Image(reference=pinned, digest=digest)

    # ------------------------------------------------------------------ inference
    def deploy(self, ws: spec.Workspace, image: base.Image | None, config_maps: dict[str, dict[str, str]],
               report: status.Reporter) -> base.Endpoint:
        served = inference.deploy(self._kube(), ws, self.plan(ws, config_maps), fresh_reference=image.reference if image else None,
                                  config_maps=config_maps, placement=self._placement(ws), settings=self.settings,
                                  report=report)
        records.update(ws.name, endpoint=served.endpoint,
                       server=records.Server.model_validate({
                           "endpoint": served.endpoint, "adapters": served.adapters,
                           "model": ws.inference.preset.name if ws.inference and ws.inference.preset else None}))
        report.condition(status.INFERENCE_READY, True, "InferenceServiceReady",
                         f"{served.replicas} pod(s) ready; Service {served.service} port 80"
                         + (f" (cluster IP {served.cluster_ip})" if served.cluster_ip else ""))
        return base.Endpoint(endpoint=served.endpoint, adapters=served.adapters, service=served.service,
                             statefulset=served.statefulset, cluster_ip=served.cluster_ip)

    # ------------------------------------------------------------------ delete, logs, describe
    def teardown(self, record: records.WorkspaceRecord) -> base.Teardown:
        """Delete everything the workspace created: StatefulSet, Services, Jobs (and their pods),
        ConfigMaps; then its nodes (NodeClaims, the AKS pool: the node source it was provisioned
        with); then the CR."""
        ws = _workspace_of(record)
        kube = self._kube()
        ns = kube.namespace_for(ws)
        deleted = views.delete_objects(kube, ws)
        deleted.update(self._source_of(record).release(kube, ws, ns, self.settings))
        deleted["Workspace"] = [ws.name] if crstatus.delete(kube, ws) else []
        return base.Teardown(cluster=deleted)

    def _source_of(self, record: records.WorkspaceRecord) -> nodes.NodeSource:
        """The node source the workspace was provisioned with (this one, unless the record says
        the provisioner setting was another then)."""
        recorded = record.cluster.provisioner if record.cluster else None
        if not recorded or recorded == self.source.name:
            return self.source
        from infra import platforms

        settings = self.settings.model_copy(update={"provisioner": recorded})
        return platforms.get(self.name, settings).source  # type: ignore[attr-defined]

    def logs(self, record: records.WorkspaceRecord, part: str) -> str:
        return views.logs(self._kube(), _workspace_of(record), part)

    def describe(self, record: records.WorkspaceRecord) -> dict[str, Any]:
        """``record`` as its Workspace CR has it now, for ``kaiflow get``/``describe``: ``instance``,
        ``conditions`` and ``created`` from the CR (the columns of ``kubectl get workspace``), plus
        ``cluster``: ``{"namespace", "found", "worker_nodes"}`` or ``{"error"}``. A CR that is gone,
        or an API that cannot be reached, leaves the record's values in place (``get`` still lists
        the workspace, saying why)."""
        out = record.model_dump(mode="json", exclude_none=True)
        try:
            ws = _workspace_of(record)
            kube = self._kube()
            ns = kube.namespace_for(ws)
            view = views.workspace_view(kube, ws)
        except errors.KaiflowError as exc:
            out["cluster"] = {"error": str(exc)}
            return out
        if view is None:
            out["cluster"] = {"namespace": ns, "found": False, "worker_nodes": []}
            return out
        out.update(instance=view["instance"], conditions=view["conditions"], created=view["created"] or record.created,
                   cluster={"namespace": ns, "found": True, "worker_nodes": view["worker_nodes"]})
        return out


# ---------------------------------------------------------------------- helpers
def _remember_cluster(name: str, **fields: Any) -> None:
    """Set fields of the record's cluster state, keeping the others."""

    def change(record: records.WorkspaceRecord) -> None:
        record.cluster = (record.cluster or records.ClusterState()).model_copy(update=fields)

    records.change(name, change)


def _tuning(ws: spec.Workspace) -> spec.TuningSpec:
    if ws.tuning is None:
        raise errors.SpecError(f"workspace {ws.name} has no tuning section")
    return ws.tuning


def _workspace_of(record: records.WorkspaceRecord) -> spec.Workspace:
    if not record.spec:
        raise errors.KaiflowError(f"workspace {record.name}: its record holds no spec; delete it with kubectl")
    return spec.Workspace.model_validate(record.spec)


def spec_fingerprint(ws: spec.Workspace) -> str:
    """A digest of the data's source spec (URLs, image reference, volume), for data the flow cannot read."""
    src = _tuning(ws).input.model_dump(by_alias=True, exclude_none=True)
    return "spec:sha256:" + hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()


def _unseen(ws: spec.Workspace, why: str, report: status.Reporter) -> base.Dataset:
    digest = spec_fingerprint(ws)
    log.warning("dataset of %s not readable from here (%s): the tuning pod pulls it; fingerprint from the source spec "
                "only (%s), so new content under the same URL will not retrain", ws.name, why, digest[:24])
    report.event("DatasetNotVerified", f"{why}; fingerprint {digest[:24]} from the spec", kind="Warning")
    return base.Dataset(dir=None, digest=digest, verified=False)


def _tag_resolver(push_secret: str | None) -> Callable[[str], str | None]:
    """What a tag points at now in its registry, pinned (None: unknown, said in a warning)."""

    def resolve(image: str) -> str | None:
        try:
            qualified = registry.qualify(image)
            with contextlib.closing(registry.store_for(qualified,
                                                       credentials=registry.credentials.for_secret(push_secret))) as store:
                digest = store.resolve(qualified)
        except errors.KaiflowError as exc:
            log.warning("could not resolve %s in its registry: %s", image, exc)
            return None
        return registry.parse_reference(qualified).pinned(digest) if digest else None

    return resolve
