"""The retrain flow: what a workspace's retraining schedule runs. Tune only on new data, and promote
the new adapter only when the held-out data says it is not worse than the one serving.

    pull dataset ─► same fingerprint as the serving adapter's data? ──yes──► Unchanged (no tuning)
                    │ no
                    ▼
    tune candidate (holding out rows) ─► evaluate candidate and serving adapter on those rows
                    │
      not worse? ──yes──► push image, roll the endpoint in place ──► Promoted
                 └─no───► leave image tag and endpoint alone     ──► Rejected (with why)

Same parameters as the workspace flow, so one schedule payload works for both. A workspace with no
serving adapter yet (never applied) is applied, as ``kaiflow apply`` would.

On kubernetes/aks the same steps are Jobs on the workspace's GPU nodes: the candidate tuning Job
pushes to a candidate tag beside the output image (``<tag>-candidate-<cache key[:12]>``), never to
the output tag; an evaluation Job pulls the data and both adapter images by digest and leaves its
scores in its termination message; promotion moves the output tag to the candidate's digest (a
manifest PUT from where the flow runs, with the flow's copy of ``imagePushSecret``: no re-upload)
and rolls the StatefulSet (``deploy`` puts the old one back if the new pods fail). A rejected
candidate's tag stays in the registry; the output tag and the endpoint are left alone. The
candidate's training config is a ConfigMap of its own (``<name>-retrain-config``), so the user's
ConfigMap in the cluster is not changed.

Held-out rows: the trainer's own eval split (``tuning.data.split`` with the config's
``DatasetConfig.train_test_split`` and ``shuffle_seed``). When the config has no split, the candidate
is trained with ``train_test_split = 1 - KAIFLOW_RETRAIN_HOLDOUT`` written into its config, so the
trainer itself leaves out exactly the rows the evaluation scores. The serving adapter may have seen
some of those rows (``apply`` trains on everything when no split is configured): the comparison then
favours the serving adapter — promotion errs on the side of keeping what serves.

Promotion rule ("not worse"), on the held-out rows:
    candidate loss ≤ serving loss × (1 + KAIFLOW_RETRAIN_TOLERANCE)
    and candidate exact-match ≥ serving exact-match (when the data has short reference answers)

Record (``infra.records``): ``dataset_digest`` is the fingerprint of the data the serving adapter
was trained on (moves only on promotion); ``retrain`` holds the last decision, so data that was
already rejected is not tuned again. Every decision is an event and a markdown artifact
(``<workspace>-retrain``).

Concurrency (``flows.concurrency``): the whole run holds ``workspace-<name>`` (overlapping runs of
one workspace take turns); tuning + evaluation hold one node of ``gpu-<sku>``, the roll the
inference nodes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import concurrency
from flows import workspace_flow as workspace_flow_module
from infra import platforms, records
from infra.platforms.base import Dataset, Platform, Tuned
from tasks import charts
from tasks import dataset as dataset_task
from tasks import deploy as deploy_task
from tasks import evaluate as evaluate_task
from tasks import provision as provision_task
from tasks import push as push_task
from tasks import tune as tune_task
from tasks.common import artifact_key
from workspace import configmaps, settings, spec
from workspace.errors import KaiflowError, SpecError

SERVING, CANDIDATE = "serving", "candidate"


@dataclass
class Decision:
    """What one retrain run decided, as recorded and shown."""

    outcome: str  # FirstRun | Unchanged | Promoted | Rejected
    reason: str
    dataset_digest: str
    promoted: bool = False
    scores: dict = field(default_factory=dict)
    image: str | None = None
    time: float = field(default_factory=time.time)


# ---------------------------------------------------------------- pure helpers


def candidate_config(raw: dict | None, holdout: float) -> tuple[dict, str]:
    """The candidate's training config (sections) with a held-out split, and how the split was chosen."""
    from tuning import config as tuning_config

    try:
        sections = tuning_config.sections_of(raw)
    except tuning_config.ConfigError as exc:
        raise SpecError(f"tuning.config: {exc}") from None
    dataset = dict(sections.get("DatasetConfig") or {})
    split = float(dataset.get("train_test_split", 1.0))
    if split < 1:
        how = f"the training config's own split (train_test_split {split:g}, shuffle_seed {dataset.get('shuffle_seed', 42)})"
    else:
        dataset["train_test_split"] = round(1 - holdout, 6)
        how = (f"{holdout:g} of the rows held out by retrain (train_test_split {1 - holdout:g}, "
               f"shuffle_seed {dataset.get('shuffle_seed', 42)}); the candidate did not train on them")
    return {**sections, "DatasetConfig": dataset}, how


def verdict(scores: dict, tolerance: float) -> tuple[bool, str]:
    """Promote? and why, by the rule in the module docstring."""
    cand, serv = scores["adapters"][CANDIDATE], scores["adapters"][SERVING]
    bound = serv["loss"] * (1 + tolerance)
    problems, notes = [], []
    if cand["loss"] > bound:
        problems.append(f"held-out loss {cand['loss']:.4f} > serving {serv['loss']:.4f} x (1 + {tolerance:g}) = {bound:.4f}")
    else:
        notes.append(f"held-out loss {cand['loss']:.4f} <= {bound:.4f} (serving {serv['loss']:.4f} x (1 + {tolerance:g}))")
    if scores.get("exact_match_applicable") and cand["exact_match"] is not None and serv["exact_match"] is not None:
        if cand["exact_match"] < serv["exact_match"]:
            problems.append(f"exact-match {cand['exact_match']:.2f} < serving {serv['exact_match']:.2f}")
        else:
            notes.append(f"exact-match {cand['exact_match']:.2f} >= serving {serv['exact_match']:.2f}")
    else:
        notes.append("exact-match not applicable (no short reference answers)")
    if problems:
        return False, "candidate is worse than the serving adapter: " + "; ".join(problems)
    return True, "candidate is not worse than the serving adapter: " + "; ".join(notes)


def decision_markdown(name: str, d: Decision, holdout: str | None) -> str:
    lines = [f"# Retrain decision: {name}", "", f"**{d.outcome}**: {d.reason}", "",
             f"- data fingerprint: `{d.dataset_digest}`"]
    if d.image:
        lines.append(f"- image: `{d.image}`")
    if holdout:
        lines.append(f"- held-out rows: {holdout}")
    s = d.scores
    if s:
        serv, cand = s["adapters"][SERVING], s["adapters"][CANDIDATE]
        em = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        svg = charts.scores_chart(f"held-out scores, {name}", [
            ("held-out loss (nats per answer token)", serv["loss"], cand["loss"]),
            *([("exact-match (fraction of answers)", serv["exact_match"], cand["exact_match"])]
              if s.get("exact_match_applicable") else [])])
        if svg:
            lines += ["", charts.markdown_image(svg, f"held-out scores of the serving and candidate adapters of {name}")]
        lines += ["", f"Held-out rows: {s['rows']} ({s['shape']})", "",
                  "| metric | serving | candidate |", "|---|---|---|",
                  f"| loss (per answer token) | {serv['loss']:.4f} | {cand['loss']:.4f} |",
                  f"| exact-match | {em(serv['exact_match'])} | {em(cand['exact_match'])} |"]
        if s.get("samples") and s["samples"][0].get("answers"):
            lines += ["", "| prompt | reference | serving | candidate |", "|---|---|---|---|"]
            for x in s["samples"]:
                a = x["answers"]
                cells = [x["prompt"], x["reference"], a.get(SERVING, ""), a.get(CANDIDATE, "")]
                lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")[:80] for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- steps


def _trained_on_same_data(record: records.WorkspaceRecord, workspace: spec.Workspace, config_maps: dict, digest: str) -> bool:
    """Was the serving adapter trained on data with this fingerprint?"""
    if record.dataset_digest:
        return record.dataset_digest == digest
    # a record from before dataset_digest was stored: rebuild apply's cache key with this data
    return tune_task.key_for(workspace, digest, config_maps) == record.tuning_cache_key


def _first_run(workspace: spec.Workspace, config_maps: dict, platform: str) -> Decision:
    applied = workspace_flow_module.workspace_flow(workspace=workspace, config_maps=config_maps, platform=platform)
    digest = applied["tuning"]["dataset_digest"]
    records.update(workspace.name, dataset_digest=digest)
    return Decision("FirstRun", "no serving adapter yet: tuned, pushed and deployed as `kaiflow apply` does",
                    digest, promoted=True, image=applied["image"]["reference"])


def _candidate(workspace: spec.Workspace, config_maps: dict) -> tuple[spec.Workspace, dict, str]:
    """The candidate workspace (its training config with held-out rows, in a ConfigMap of its own),
    its config maps, and how the held-out rows were chosen."""
    sections, holdout = candidate_config(configmaps.training_config(workspace, config_maps), settings.load().retrain_holdout)
    cm_name = configmaps.retrain_config_name(workspace.name)
    maps = {**config_maps, cm_name: {"training_config.yaml": yaml.safe_dump(sections)}}
    candidate_ws = workspace.model_copy(update={"tuning": workspace.tuning.model_copy(update={"config": cm_name})})
    return candidate_ws, maps, holdout


def _tune_and_compare(where: Platform, workspace: spec.Workspace, config_maps: dict, data: Dataset,
                      record: records.WorkspaceRecord) -> tuple[Tuned, dict, str]:
    """Tune the candidate (holding rows out) and score it against the serving adapter."""
    candidate_ws, maps, holdout = _candidate(workspace, config_maps)
    with concurrency.gpu_slots(where.sku(workspace), 1, f"retrain of {workspace.name}"):
        tuned = tune_task.tune(candidate_ws, data, maps, where.name, candidate=True)
        scores = evaluate_task.evaluate(candidate_ws, data, maps, str(record.adapter_image), tuned, where.name)
    return tuned, scores.model_dump(), holdout


def _promote(where: Platform, workspace: spec.Workspace, config_maps: dict, tuned: Tuned, data: Dataset) -> str:
    name = workspace.name
    image = push_task.promote(workspace, tuned, where.name)
    records.update(name, adapter_image=image.reference, tuning_cache_key=tuned.cache_key, dataset_digest=data.digest)
    if workspace.inference:
        nodes = concurrency.nodes_for(where.plan(workspace, config_maps), workspace)
        with concurrency.gpu_slots(where.sku(workspace), nodes, f"inference of {name}"):
            deploy_task.deploy(workspace, image, config_maps, where.name)
    return image.reference


def _record(name: str, d: Decision, holdout: str | None) -> None:
    summary = {k: v for k, v in asdict(d).items() if k != "scores"}
    if d.scores:
        summary["scores"] = {n: {k: a[k] for k in ("loss", "exact_match")} for n, a in d.scores["adapters"].items()}
        summary["rows"] = d.scores["rows"]
    records.update(name, retrain=summary)
    records.add_event(name, f"Retrain{d.outcome}", d.reason, kind="Normal")
    create_markdown_artifact(decision_markdown(name, d, holdout), key=artifact_key(name, "retrain"),
                             description=f"retrain decision for workspace {name}: {d.outcome}")


def _retrain(workspace: spec.Workspace, config_maps: dict, where: Platform) -> Decision:
    log = get_run_logger()
    name = workspace.name
    record = records.load(name) or records.WorkspaceRecord(name=name)
    if not record.adapter_image:
        d = _first_run(workspace, config_maps, where.name)
        _record(name, d, None)
        return d
    provision_task.provision(workspace, where.name, config_maps)
    data = dataset_task.pull_dataset(workspace, where.name)
    last = record.retrain or {}
    holdout = None
    if _trained_on_same_data(record, workspace, config_maps, data.digest):
        d = Decision("Unchanged", "dataset fingerprint unchanged since the serving adapter was trained: no tuning", data.digest)
    elif last.get("outcome") == "Rejected" and last.get("dataset_digest") == data.digest:
        d = Decision("Unchanged", "this data was already evaluated and its candidate rejected: no tuning "
                     f"(earlier: {last.get('reason', '')})", data.digest)
    else:
        log.info("dataset changed (%s): tuning a candidate", data.digest[:19])
        tuned, scores, holdout = _tune_and_compare(where, workspace, config_maps, data, record)
        promote, why = verdict(scores, settings.load().retrain_tolerance)
        if promote:
            image = _promote(where, workspace, config_maps, tuned, data)
            d = Decision("Promoted", why, data.digest, promoted=True, scores=scores, image=image)
        else:
            kept = f" (the candidate stays at {tuned.reference})" if tuned.reference else ""
            d = Decision("Rejected", why + "; the endpoint and image tag were left alone" + kept, data.digest,
                         scores=scores)
    log.info("retrain %s: %s: %s", name, d.outcome, d.reason)
    _record(name, d, holdout)
    return d


@flow(name="retrain", flow_run_name="retrain-{workspace.metadata.name}", log_prints=True, persist_result=False)
def retrain_flow(
    workspace: spec.Workspace,
    config_maps: dict[str, dict[str, str]] | None = None,
    platform: str | None = None,
) -> dict:
    """Retrain a workspace's adapter if its data changed; promote it only if it is not worse."""
    config_maps = config_maps or {}
    where = platforms.get(platform)
    name = workspace.name
    if workspace.tuning is None:
        raise SpecError(f"retrain {name}: the workspace has no tuning section; retraining needs tuning.input and tuning.output")
    with concurrency.workspace_slot(name):
        held_from = time.time()
        try:
            d = _retrain(workspace, config_maps, where)
        except KaiflowError as exc:
            records.add_event(name, "RetrainFailed", str(exc), kind="Warning")
            raise
        held_to = time.time()
    return {"name": name, **asdict(d), "slot_held": [held_from, held_to]}
