"""The Job lifecycle: the tuning Job (which pushes the adapter image from its pod) and retrain's
evaluation Job (which leaves its scores in its termination message).

A tuning Job is named and labelled after its cache key. Its result — the digest-pinned image its
push-adapter container reported — is kept in the ``<name>-tuning-result`` ConfigMap (a retrain
candidate's in ``<name>-candidate-result``), so an identical re-apply reuses it without a Job
(the Job itself goes after its TTL). Jobs of older inputs still running are deleted; a failed Job
of the same inputs is replaced. A failure says which container failed and the last line of its
termination message.

No registry call happens here: what a pod reported is read from its termination message; when
there is none (a pod gone after the Job's TTL, an old image), the caller's ``resolve_tag`` says
what the tag points at now. Progress goes to the ``report`` sink given (JobStarted, events);
nothing here reads or writes the workspace's record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from infra.kube import apply as kapply
from infra.kube import client as kclient
from infra.kube import crstatus, manifests, nodes, objects
from workspace import errors, spec, status
from workspace import plan as plan_mod
from workspace import settings as settings_mod

log = logging.getLogger(__name__)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods (Kubernetes 1.27+)


@dataclass(frozen=True)
class TuningRun:
    """What a tuning Job (or the result an identical one left) pushed."""

    reference: str
    digest: str
    job: str | None
    reused: bool


def run_tuning(kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, *, cache_key: str,
               config_maps: dict[str, dict[str, str]], placement: nodes.Placement, settings: settings_mod.Settings,
               report: status.Reporter, resolve_tag: Callable[[str], str | None],
               output_image: str | None = None) -> TuningRun:
    """Run (or reuse) the tuning Job for ``cache_key`` (JobStarted); returns the image it pushed.
    ``output_image``: a retrain candidate's reference (``manifests.candidate_reference``): the Job
    pushes there, not to ``tuning.output.image``, and its result is kept apart
    (``<name>-candidate-result``), so ``kaiflow apply`` never reuses a candidate.
    ``resolve_tag``: the pinned reference a tag points at now (None: unknown), for a Job whose
    pod reported nothing."""
    ns = kube.namespace_for(ws)
    tuning = _tuning(ws)
    result_name = manifests.candidate_result_name(ws.name) if output_image else manifests.tuning_result_name(ws.name)
    previous = kapply.get(kube, "v1", "ConfigMap", result_name, ns)
    data = (previous or {}).get("data") or {}
    if data.get("cacheKey") == cache_key and data.get("reference") and (not output_image or data.get("image") == output_image):
        log.info("tuning result for this data and config exists (%s): no Job", data["reference"])
        return TuningRun(data["reference"], data["digest"], data.get("job"), reused=True)
    owner = crstatus.owner(kube, ws)
    job = manifests.tuning_job(ws, plan, ns, settings.image, cache_key=cache_key, owner=owner,
                               node_selector=placement.node_selector, extra_tolerations=placement.tolerations,
                               output_image=output_image, allow_private_urls=settings.allow_private_urls)
    name = job["metadata"]["name"]
    for cm in manifests.file_config_maps(ws, config_maps, ns, owner):
        kapply.apply(kube, cm)
    _remove_stale_jobs(kube, ws, ns, keep=name)
    existing = kapply.get(kube, "batch/v1", "Job", name, ns)
    if existing is not None and job_state(existing)[0] == "failed":
        kapply.delete(kube, "batch/v1", "Job", name, ns)  # same inputs, failed before: run again
        _wait_gone(kube, "batch/v1", "Job", name, ns, settings.kube_wait_timeout_s)
    kapply.apply(kube, job)
    report.condition(status.JOB_STARTED, True, "TuningJobStarted",
                     f"Job {ns}/{name} running {tuning.method} on {tuning.preset.name}")
    report.event("TuningStarted", f"Job {name}")
    by_key = {manifests.CACHE_KEY_LABEL: cache_key[:63]}
    state, reason, message = kapply.wait_for(kube, "batch/v1", "Job", ns, by_key, lambda: _finished(kube, name, ns),
                                             timeout_s=settings.kube_wait_timeout_s,
                                             describe=lambda: f"tuning Job {ns}/{name} did not finish")
    if state == "failed":
        detail = pod_failure(kube, ns, by_key) or message
        msg = f"tuning Job {ns}/{name} failed: {reason}: {detail}; see `kaiflow logs {ws.name} --tuning`"
        report.condition(status.JOB_STARTED, False, "TuningFailed", msg)
        raise errors.TuningError(msg)
    if output_image:
        reference = pushed_reference(kube, ns, ws, {JOB_NAME_LABEL: name}, output_image, resolve_tag)
    else:
        reference = pushed_reference(kube, ns, ws, by_key, tuning.output.image, resolve_tag)
    digest = reference.rsplit("@", 1)[1] if "@" in reference else ""
    kapply.apply(kube, manifests.config_map(ws, result_name,
                                            {"cacheKey": cache_key, "reference": reference, "digest": digest, "job": name,
                                             **({"image": output_image} if output_image else {})},
                                            ns, owner))
    report.condition(status.JOB_STARTED, True, "TuningCompleted", f"Job {name} pushed {reference}")
    report.event("TuningCompleted", reference)
    return TuningRun(reference, digest, name, reused=False)


def _tuning(ws: spec.Workspace) -> spec.TuningSpec:
    if ws.tuning is None:
        raise errors.SpecError(f"workspace {ws.name} has no tuning section: there is no Job to run")
    return ws.tuning


def job_state(job: dict) -> tuple[str, str, str]:
    """(``succeeded`` | ``failed`` | ``running``, reason, message) of a Job."""
    for type_, state in (("Complete", "succeeded"), ("Failed", "failed")):
        c = objects.condition_of(job, type_)
        if c and c.get("status") == "True":
            return state, c.get("reason") or type_, c.get("message") or ""
    st = job.get("status") or {}
    if st.get("failed") and not st.get("active"):
        return "failed", "Failed", f"{st['failed']} pod(s) failed"
    return "running", "", ""


def _finished(kube: kclient.Kube, name: str, ns: str, what: str = "tuning") -> tuple[str, str, str] | None:
    job = kapply.get(kube, "batch/v1", "Job", name, ns)
    if job is None:
        raise errors.TuningError(f"{what} Job {ns}/{name} was deleted while running; re-apply the workspace")
    state = job_state(job)
    return state if state[0] != "running" else None


def _remove_stale_jobs(kube: kclient.Kube, ws: spec.Workspace, ns: str, keep: str) -> None:
    items, _ = kapply.list_objects(kube, "batch/v1", "Job", ns, manifests.selector(ws, "tuning"))
    for job in items:
        if job["metadata"]["name"] != keep and job_state(job)[0] == "running":
            kapply.delete(kube, "batch/v1", "Job", job["metadata"]["name"], ns)
            log.info("deleted tuning Job %s: its inputs changed", job["metadata"]["name"])


def _wait_gone(kube: kclient.Kube, av: str, kind: str, name: str, ns: str, timeout_s: float) -> None:
    kapply.wait_for(kube, av, kind, ns, None, lambda: True if kapply.get(kube, av, kind, name, ns) is None else None,
                    timeout_s=timeout_s, describe=lambda: f"{kind} {ns}/{name} still exists")


# --------------------------------------------------------------------------- what pods reported
def pod_failure(kube: kclient.Kube, ns: str, labels: dict[str, str]) -> str:
    """The first failed container of the newest pod: name, reason and its termination message."""
    for pod in reversed(objects.pods(kube, ns, labels)):
        for cs in objects.container_statuses(pod):
            term = (cs.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode", 0) != 0:
                text = (term.get("message") or "").strip().splitlines()
                return f"container {cs['name']} {term.get('reason') or 'Error'} (exit {term.get('exitCode')})" + \
                    (f": {text[-1]}" if text else "")
    return ""


def termination_messages(kube: kclient.Kube, ns: str, labels: dict[str, str], container: str, *,
                         missing_exit_ok: bool = False) -> Iterator[tuple[str, str]]:
    """(pod name, termination message) of ``container`` where it exited 0, in the pods with
    ``labels``, newest first (``missing_exit_ok``: a terminated state without an exit code counts)."""
    for pod in reversed(objects.pods(kube, ns, labels)):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == container and term.get("exitCode", 0 if missing_exit_ok else 1) == 0:
                yield pod["metadata"]["name"], term.get("message") or ""


def pushed_reference(kube: kclient.Kube, ns: str, ws: spec.Workspace, pod_labels: dict[str, str],
                     image: str | None, resolve_tag: Callable[[str], str | None]) -> str:
    """The digest-pinned image the Job pushed: preferably what its push-adapter container wrote to
    its termination message (the digest it pushed, whatever the tag points at by now); else
    ``resolve_tag(image)`` (a pod gone after the Job's TTL, or an old image). Logs which.
    ``pod_labels``: the Job's pods; ``image``: where it pushed."""
    for pod_name, message in termination_messages(kube, ns, pod_labels, "push-adapter", missing_exit_ok=True):
        reference = termination_reference(message)
        if reference:
            log.info("pushed adapter %s: read from the termination message of pod %s", reference, pod_name)
            return reference
    if image:  # no (parsable) termination message: what the tag points at now
        pinned = resolve_tag(image)
        if pinned:
            log.warning("pushed adapter %s: no termination message from the push-adapter container; resolved the "
                        "tag %s in the registry instead (it may have moved since the Job pushed)", pinned, image)
            return pinned
    raise errors.TuningError(
        f"tuning Job for {ws.name} succeeded but its push-adapter container reported no image in its termination "
        f"message and {image or 'the output'} could not be resolved; check `kaiflow logs {ws.name} --tuning`")


def termination_reference(message: str) -> str:
    """The pinned image in a push-adapter termination message: ``infra.pod``'s JSON
    (``{"reference": "...@sha256:..."}``) or a bare ``image@sha256:<64 hex>`` line; '' otherwise."""
    text = message.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    candidate = str(parsed.get("reference") or "") if isinstance(parsed, dict) else (text.splitlines() or [""])[-1]
    name, sep, digest = candidate.partition("@sha256:")
    if sep and name and len(digest) == 64 and all(ch in "0123456789abcdef" for ch in digest):
        return candidate
    return ""


# --------------------------------------------------------------------------- evaluation
def run_evaluation(kube: kclient.Kube, ws: spec.Workspace, plan: plan_mod.WorkspacePlan, *, cache_key: str,
                   adapters: dict[str, str], config_maps: dict[str, dict[str, str]], placement: nodes.Placement,
                   settings: settings_mod.Settings, report: status.Reporter) -> dict:
    """Score ``adapters`` (name -> digest-pinned image) on the held-out rows in an evaluation Job
    (``manifests.evaluation_job``; ``ws.tuning.config`` names the candidate's training config) and
    return the scores its evaluate container left in its termination message
    (``{"rows", "shape", "exact_match_applicable", "adapters": {name: {"loss", "exact_match", ...}}}``).
    A Job of the same inputs left by an earlier run is replaced: its pod, and so its scores, may be gone."""
    ns = kube.namespace_for(ws)
    config = _tuning(ws).config
    if not config:
        raise errors.SpecError(f"evaluation of {ws.name}: tuning.config must name the candidate's training config "
                               "(its held-out split)")
    owner = crstatus.owner(kube, ws)
    name = manifests.evaluation_job_name(ws.name, cache_key, "|".join(f"{k}={v}" for k, v in sorted(adapters.items())))
    job = manifests.evaluation_job(ws, plan, ns, settings.image, name=name, cache_key=cache_key, adapters=adapters,
                                   config=config, owner=owner, node_selector=placement.node_selector,
                                   extra_tolerations=placement.tolerations,
                                   allow_private_urls=settings.allow_private_urls)
    for cm in manifests.file_config_maps(ws, config_maps, ns, owner):
        kapply.apply(kube, cm)
    if kapply.get(kube, "batch/v1", "Job", name, ns) is not None:
        kapply.delete(kube, "batch/v1", "Job", name, ns)
        _wait_gone(kube, "batch/v1", "Job", name, ns, settings.kube_wait_timeout_s)
    kapply.apply(kube, job)
    report.event("EvaluationStarted", f"Job {name}: {', '.join(adapters)} on the held-out rows")
    state, reason, message = kapply.wait_for(
        kube, "batch/v1", "Job", ns, {manifests.CACHE_KEY_LABEL: cache_key[:63]},
        lambda: _finished(kube, name, ns, "evaluation"), timeout_s=settings.kube_wait_timeout_s,
        describe=lambda: f"evaluation Job {ns}/{name} did not finish")
    if state == "failed":
        detail = pod_failure(kube, ns, {JOB_NAME_LABEL: name}) or message
        raise errors.TuningError(f"evaluation Job {ns}/{name} failed: {reason}: {detail}; nothing was promoted; see "
                                 f"`kaiflow logs {ws.name} --tuning` (the newest tuning or evaluation pod)",
                                 reason="EvaluationFailed")
    scores = _evaluation_scores(kube, ns, name, list(adapters))
    report.event("EvaluationCompleted", f"Job {name}: " + ", ".join(
        f"{n} loss {a['loss']:.4f}" for n, a in scores["adapters"].items()))
    return scores


def _evaluation_scores(kube: kclient.Kube, ns: str, name: str, expected: list[str]) -> dict:
    """The scores summary in the termination message of the evaluate container of Job ``name``."""
    for pod_name, message in termination_messages(kube, ns, {JOB_NAME_LABEL: name}, "evaluate"):
        try:
            scores = json.loads(message)
            if all(isinstance(scores["adapters"][n]["loss"], (int, float)) for n in expected):
                log.info("evaluation scores read from the termination message of pod %s", pod_name)
                return scores
        except (ValueError, KeyError, TypeError):
            pass
    raise errors.TuningError(f"evaluation Job {ns}/{name} succeeded but its evaluate container left no scores for "
                             f"{', '.join(expected)} in its termination message; nothing was promoted",
                             reason="EvaluationFailed")
