"""Scheduled retraining end to end, the schedule fired by the test (the flow called as a run of the
``retrain`` deployment would call it): the real retrain and workspace flows in-process against a
real Prefect server, data over HTTP, real QLoRA on tiny-phi-3, real evaluation, adapter images in
the OCI layout on disk, and a real inference server reached over HTTP.

    apply (adapter A) → retrain, data unchanged → no tuning, endpoint untouched
    → data that helps (new pairs; every held-out question also taught) → promoted, rolled in place
    → data that hurts (the held-out questions taught wrong answers) → rejected, endpoint unchanged

Why the held-out rows are worked out here: tiny-phi-3 has random weights and cannot generalise, so
"helps" and "hurts" are made by what the training rows teach about the held-out questions. The
positions the trainer holds out depend only on the row count and the seed, so the test asks
``tuning.evaluate.held_out`` (the same split the trainer makes) with a probe file of that size.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flows import concurrency, retrain
from flows.workspace_flow import workspace_flow
from infra import local_process, records
from tests.retrain.conftest import load_workspace, thread
from tests.support.fileserver import write_qa_jsonl as write_rows
from tuning import config as tconfig
from tuning import evaluate
from workspace import settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

P = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "Shakespeare."),
     ("What colour is the sky?", "Blue."), ("Which planet is red?", "Mars.")]
N = [("How many legs does a spider have?", "Eight."), ("What is two plus two?", "Four."),
     ("What do bees make?", "Honey."), ("Which animal barks?", "A dog.")]
COPIES = 3


def held_out_positions(n: int, tmp: Path, config_maps: dict, ws) -> set[int]:
    """Which of ``n`` rows the candidate's trainer (and the evaluation) holds out."""
    import yaml

    sections, _ = retrain.candidate_config(yaml.safe_load(config_maps[ws.tuning.config]["training_config.yaml"]),
                                           settings.load().retrain_holdout)
    dataset_config = tconfig.resolve(sections, model="tiny-phi-3", method="qlora", hardware="cpu")["DatasetConfig"]
    write_rows(tmp / "probe" / "rows.jsonl", [(f"probe {i}", "x") for i in range(n)])
    rows, _ = evaluate.held_out(tmp / "probe", dataset_config, max_rows=n)
    return {int(r["messages"][0]["content"].split()[1]) for r in rows}


def ask(endpoint: str, question: str) -> str:
    r = httpx.post(f"{endpoint}/chat", json={"messages": [{"role": "user", "content": question}],
                                             "generate_kwargs": {"max_length": 64}}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["Result"].strip()


def tunings(name: str) -> int:
    return sum(e.reason == "TuningStarted" for e in records.load(name).events)


def decision_artifact(name: str) -> str:
    from prefect.artifacts import Artifact
    from tasks.common import artifact_key

    found = Artifact.get(artifact_key(name, "retrain"))
    return found.data if found else ""


def test_unchanged_helpful_and_harmful_data(retrain_env, tmp_path, monkeypatch):
    name = "rt-gate"
    data = retrain_env.root / name / "qa.jsonl"
    ws, cms = load_workspace(name, retrain_env.url_for(f"{name}/qa.jsonl"), inference=True)
    helps = [pair for pair in P + N for _ in range(COPIES)]
    held = held_out_positions(len(helps), tmp_path, cms, ws)
    held_q = {helps[i][0] for i in held}
    taught_q = {helps[i][0] for i in range(len(helps)) if i not in held}
    # preconditions of the data design, checked rather than assumed
    assert held_q <= taught_q, "every held-out question must also be taught in the 'helps' data"
    assert held_q & {q for q, _ in N}, "some held-out question must be one the first adapter never saw"

    # apply: adapter A, served
    write_rows(data, P)
    workspace_flow(workspace=ws, config_maps=cms, platform="local")
    rec = records.load(name)
    endpoint, pid, image_a = rec.endpoint, rec.server.pid, rec.adapter_image
    try:
        assert [ask(endpoint, q) for q, _ in P] == [a for _, a in P]
        assert ask(endpoint, N[0][0]) != N[0][1]

        # unchanged data: no tuning, nothing touched
        adapters = sorted(p.name for p in (settings.load().home_dir / "adapters").iterdir())
        before = tunings(name)
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="local")
        assert out["outcome"] == "Unchanged" and not out["promoted"]
        rec = records.load(name)
        assert tunings(name) == before and sorted(p.name for p in (settings.load().home_dir / "adapters").iterdir()) == adapters
        assert rec.adapter_image == image_a and rec.server.pid == pid
        assert "**Unchanged**" in decision_artifact(name)

        # data that helps: promoted, rolled into the same server; the verdict used KAIFLOW_RETRAIN_TOLERANCE
        write_rows(data, helps)
        monkeypatch.setenv("KAIFLOW_RETRAIN_TOLERANCE", "0.07")
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="local")
        monkeypatch.delenv("KAIFLOW_RETRAIN_TOLERANCE")
        assert out["outcome"] == "Promoted", out["reason"]
        assert "x (1 + 0.07))" in out["reason"], out["reason"]  # the variable reached the verdict
        cand, serv = out["scores"]["adapters"]["candidate"], out["scores"]["adapters"]["serving"]
        assert cand["exact_match"] >= serv["exact_match"] and cand["loss"] < serv["loss"]
        assert out["scores"]["rows"] == len(held)
        rec = records.load(name)
        image_b = rec.adapter_image
        assert image_b != image_a and rec.server.pid == pid and rec.dataset_digest == out["dataset_digest"]
        assert rec.events[-1].reason == "RetrainPromoted"
        assert any(e.reason == "AdapterRolled" for e in rec.events)
        served_b = {q: ask(endpoint, q) for q, _ in P + N}
        assert served_b[N[0][0]] == N[0][1]  # the served answer changed to what the new data taught
        assert "**Promoted**" in decision_artifact(name)

        # data that hurts: the held-out questions are taught wrong answers everywhere but the held-out rows
        wrong = {q: P[(i + 1) % len(P)][1] if i < len(P) else N[(i - len(P) + 1) % len(N)][1]
                 for i, (q, _) in enumerate(P + N)}
        hurts = [(q, a if i in held or q not in held_q else wrong[q]) for i, (q, a) in enumerate(helps)]
        write_rows(data, hurts)
        before = tunings(name)
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="local")
        assert out["outcome"] == "Rejected", out["reason"]
        assert tunings(name) == before + 1  # a candidate was tuned, and thrown away
        assert "exact-match" in out["reason"] and "endpoint and image tag were left alone" in out["reason"]
        rec = records.load(name)
        assert rec.adapter_image == image_b and rec.server.pid == pid
        assert rec.dataset_digest != out["dataset_digest"] and rec.events[-1].reason == "RetrainRejected"
        assert {q: ask(endpoint, q) for q, _ in P + N} == served_b
        md = decision_artifact(name)
        assert "**Rejected**" in md and "| exact-match |" in md and "held out by retrain" in md

        # the same harmful data again: not tuned a second time
        out = retrain.retrain_flow(workspace=ws, config_maps=cms, platform="local")
        assert out["outcome"] == "Unchanged" and "already evaluated" in out["reason"] and tunings(name) == before + 1
    finally:
        local_process.stop(records.load(name).server.pid, "-m serving")


def test_overlapping_retrains_of_one_workspace_take_turns(retrain_env):
    name = "rt-serial"
    write_rows(retrain_env.root / name / "qa.jsonl", P)
    ws, cms = load_workspace(name, retrain_env.url_for(f"{name}/qa.jsonl"), inference=False)
    results, errors = [], []

    def run():
        try:
            results.append(retrain.retrain_flow(workspace=ws, config_maps=cms, platform="local"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [thread(run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    first, second = sorted(results, key=lambda r: r["slot_held"][0])
    assert first["slot_held"][1] <= second["slot_held"][0]  # one after the other
    # the second saw what the first did: it found the adapter the first run made, and tuned nothing
    assert (first["outcome"], second["outcome"]) == ("FirstRun", "Unchanged")
    assert records.load(name).adapter_image == first["image"]
    assert concurrency.slot_state(concurrency.workspace_limit_name(name)) == {"limit": 1, "active_slots": 0}
