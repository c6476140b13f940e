"""The platform contract: what every place kaiflow can run a workspace must do, and what it returns.

A platform is where the work of a workspace happens — this machine (``local``), or a Kubernetes
cluster whose GPU nodes come from a node source (Karpenter NodeClaims, your own labelled nodes,
AKS agent pools: ``kubernetes`` and ``aks``). The Prefect tasks (``tasks/``) call these methods
and nothing platform-specific; the flows never branch on the platform. A new platform (a SkyPilot
cluster, a plain SSH GPU box) is one new module implementing :class:`Platform`, registered in
``infra.platforms.get`` — the one place a platform is chosen by name.

Every method reports progress through the ``report`` sink it is given (conditions and events;
``workspace.status.Reporter``), raises ``workspace.errors.KaiflowError`` subclasses whose message
says what to change (``transient=True`` only for faults worth a retry of the whole step), and
returns a small typed result below: references (paths, digests, URLs), never weights. Methods
are idempotent: re-running one with unchanged inputs finds and reuses what exists.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from infra import records
from workspace import plan as plan_mod
from workspace import spec, status


class PartSummary(BaseModel):
    part: str
    model: str
    summary: str


class Provisioned(BaseModel):
    """Hardware for the plan exists and is ready (ResourceReady)."""

    instance: str
    parts: list[PartSummary] = Field(default_factory=list)
    provisioner: str | None = None
    namespace: str | None = None
    nodes: list[str] = Field(default_factory=list)


class Dataset(BaseModel):
    """The tuning data: where it is on this machine (None when only the pods can read it) and its
    fingerprint (content digest; or a digest of the source spec when ``verified`` is False)."""

    dir: str | None
    digest: str
    verified: bool = True


class Image(BaseModel):
    """An adapter image pinned by digest."""

    reference: str
    digest: str

    @classmethod
    def pinned(cls, reference: str) -> Image:
        return cls(reference=reference, digest=reference.rsplit("@", 1)[1] if "@" in reference else "")


class Tuned(BaseModel):
    """A tuned adapter: a folder on this machine (local) or an image a tuning Job pushed (cluster)."""

    cache_key: str
    reused: bool
    steps: int | None = None
    adapter_dir: str | None = None
    reference: str | None = None  # the pushed image, when the platform's tuning pushes it
    digest: str | None = None
    job: str | None = None
    metrics: dict[str, Any] | None = Field(default=None, exclude=True)  # for the loss-curve artifact

    @property
    def image(self) -> Image | None:
        return Image(reference=self.reference, digest=self.digest or "") if self.reference else None


class Scores(BaseModel):
    """Held-out scores per adapter name (``tuning.evaluate``'s summary)."""

    rows: int
    shape: str = ""
    exact_match_applicable: bool = False
    adapters: dict[str, dict[str, Any]]
    samples: list[dict[str, Any]] = Field(default_factory=list)


class Endpoint(BaseModel):
    """The inference endpoint a deploy left serving."""

    endpoint: str
    adapters: list[dict[str, Any]] = Field(default_factory=list)
    pid: int | None = None
    service: str | None = None
    statefulset: str | None = None
    cluster_ip: str | None = None


class Teardown(BaseModel):
    server_stopped: bool = False
    cluster: dict[str, list[str]] = Field(default_factory=dict)


class Platform(Protocol):
    """One implementation per platform; see the module docstring for the shared rules."""

    name: str
    runs_inferencesets: bool
    """Whether ``kaiflow apply`` of an InferenceSet works here: its N child Workspaces are resources a
    cluster keeps (and scales); a platform that serves one process per workspace on one machine has none."""
    runs_in_image: bool
    """Whether the steps run in kaiflow's image (``KAIFLOW_IMAGE``, infra.images): pods on a cluster do;
    the local platform runs them as processes of this machine."""

    def reporter(self, ws: spec.Workspace) -> status.Reporter:
        """The status sink for ``ws``: its record, plus whatever the platform mirrors it to."""

    def plan(self, ws: spec.Workspace, config_maps: dict[str, dict[str, str]] | None = None) -> plan_mod.WorkspacePlan:
        """Size ``ws`` for this platform's hardware (local: this machine; cluster: the instance type);
        ``config_maps``: the inference ConfigMap's max-model-len is the context sized for."""

    def sku(self, ws: spec.Workspace) -> str:
        """The GPU SKU whose quota (the ``gpu-<sku>`` concurrency limit) the workspace's work counts against."""

    def provision(self, ws: spec.Workspace, report: status.Reporter,
                  config_maps: dict[str, dict[str, str]] | None = None) -> Provisioned:
        """Make sure the plan's hardware exists and is ready (ResourceReady); fail fast with the
        reason when the plan does not fit (SizingError) or capacity cannot be had."""

    def fetch_dataset(self, ws: spec.Workspace, report: status.Reporter) -> Dataset:
        """Pull ``ws.tuning.input`` where the flow runs and fingerprint it; on a cluster, data the
        flow cannot read is fingerprinted from its spec (``verified`` False, said as a warning)."""

    def tune(self, ws: spec.Workspace, dataset: Dataset, config_maps: dict[str, dict[str, str]],
             cache_key: str, report: status.Reporter, *, candidate: bool = False) -> Tuned:
        """Train (or reuse the adapter an identical run made, by ``cache_key``) (JobStarted).
        ``candidate``: a retrain candidate, which must not touch what ``ws`` serves or publishes."""

    def publish(self, ws: spec.Workspace, tuned: Tuned, report: status.Reporter) -> Image:
        """The adapter image at ``ws.tuning.output.image``, pinned by digest: pushed from the
        adapter folder, or the image the tuning already pushed."""

    def evaluate(self, ws: spec.Workspace, dataset: Dataset, config_maps: dict[str, dict[str, str]],
                 serving_image: str, candidate: Tuned, report: status.Reporter) -> Scores:
        """Score the serving adapter (its image) and the candidate on the held-out rows of the
        candidate's training config (``ws.tuning.config``), names ``serving`` and ``candidate``."""

    def promote(self, ws: spec.Workspace, candidate: Tuned, report: status.Reporter) -> Image:
        """Make the candidate what ``ws.tuning.output.image`` names (its tag moved or pushed)."""

    def deploy(self, ws: spec.Workspace, image: Image | None, config_maps: dict[str, dict[str, str]],
               report: status.Reporter) -> Endpoint:
        """Serve ``ws.inference`` (with ``image`` as the tuned adapter, when given) and wait until
        it answers (InferenceReady). A failed deploy leaves what served before serving."""

    def teardown(self, record: records.WorkspaceRecord) -> Teardown:
        """Stop and delete what the workspace runs (its server; its cluster objects and nodes)."""

    def logs(self, record: records.WorkspaceRecord, part: str) -> str:
        """The newest log of ``part`` (``inference`` or ``tuning``)."""

    def describe(self, record: records.WorkspaceRecord) -> dict[str, Any]:
        """``record`` as ``get``/``describe`` show it, refreshed from what runs (a cluster's
        Workspace resource; the local server's liveness)."""
