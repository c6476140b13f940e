"""The parts of retraining that are plain functions: the promotion rule, the held-out split the
candidate trains without, the decision shown in the UI, the GPU quota setting, and how the
evaluation program turns a row into the prompt the server sees and the answer it is scored on."""

from __future__ import annotations

import pytest

from flows import concurrency, retrain
from tests.support.fileserver import write_qa_jsonl as write_rows
from tuning import data as tdata
from tuning import evaluate
from workspace.errors import SpecError


def scores(cand_loss, serv_loss, cand_em=None, serv_em=None):
    em = cand_em is not None
    return {"rows": 4, "shape": "messages", "exact_match_applicable": em, "samples": [],
            "adapters": {"candidate": {"loss": cand_loss, "exact_match": cand_em},
                         "serving": {"loss": serv_loss, "exact_match": serv_em}}}


def test_candidate_within_tolerance_and_as_exact_is_promoted():
    ok, why = retrain.verdict(scores(1.01, 1.0, 0.75, 0.75), tolerance=0.02)
    assert ok and "not worse" in why and "exact-match 0.75 >= serving 0.75" in why


def test_candidate_with_higher_loss_is_rejected_saying_by_how_much():
    ok, why = retrain.verdict(scores(1.05, 1.0), tolerance=0.02)
    assert not ok and "held-out loss 1.0500 > serving 1.0000 x (1 + 0.02) = 1.0200" in why


def test_candidate_with_lower_exact_match_is_rejected_even_with_lower_loss():
    ok, why = retrain.verdict(scores(0.5, 1.0, 0.25, 0.5), tolerance=0.02)
    assert not ok and "exact-match 0.25 < serving 0.50" in why and "loss" not in why.split(":", 1)[1]


def test_without_short_answers_only_loss_counts():
    ok, why = retrain.verdict(scores(0.9, 1.0), tolerance=0.0)
    assert ok and "exact-match not applicable" in why


def test_config_without_split_gets_the_retrain_holdout_written_in():
    raw = {"training_config": {"TrainingArguments": {"max_steps": 5}}}
    sections, how = retrain.candidate_config(raw, 0.25)
    assert sections["DatasetConfig"] == {"train_test_split": 0.75}
    assert sections["TrainingArguments"] == {"max_steps": 5}
    assert "0.25 of the rows held out by retrain" in how


def test_config_with_its_own_split_is_kept():
    sections, how = retrain.candidate_config({"DatasetConfig": {"train_test_split": 0.9, "shuffle_seed": 7}}, 0.25)
    assert sections["DatasetConfig"] == {"train_test_split": 0.9, "shuffle_seed": 7}
    assert "own split" in how and "shuffle_seed 7" in how


def test_bad_training_config_names_the_section():
    with pytest.raises(SpecError, match="tuning.config: Datasetconfig: unknown section"):
        retrain.candidate_config({"Datasetconfig": {}}, 0.1)


def test_evaluation_scores_exactly_the_rows_the_trainer_held_out(tmp_path):
    rows = [(f"Question {i}?", f"Answer {i}.") for i in range(20)]
    write_rows(tmp_path / "d" / "qa.jsonl", rows)
    config = {"train_test_split": 0.75, "shuffle_dataset": True, "shuffle_seed": 42}
    trainer_side = tdata.load_dataset_dir(tmp_path / "d", config)  # what `python -m tuning` trains / holds out
    held, shape = evaluate.held_out(tmp_path / "d", config, max_rows=100)
    assert shape == "messages" and len(held) == 5
    held_q = {r["messages"][0]["content"] for r in held}
    assert held_q == {r["messages"][0]["content"] for r in trainer_side.eval}
    assert not held_q & {r["messages"][0]["content"] for r in trainer_side.train}


def test_evaluation_refuses_a_config_without_held_out_rows(tmp_path):
    write_rows(tmp_path / "d" / "qa.jsonl", [("a?", "b.")] * 3)
    with pytest.raises(Exception, match="train_test_split: evaluation needs held-out rows"):
        evaluate.held_out(tmp_path / "d", {"train_test_split": 1.0}, max_rows=10)


def test_row_is_split_into_the_servers_prompt_and_the_reference_answer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Hamlet?"},
                        {"role": "assistant", "content": "Shakespeare."}]}
    r = evaluate.encode_row(tok, row, "messages")
    served = tok.apply_chat_template(row["messages"][:2], add_generation_prompt=True, tokenize=False)
    assert r.prompt_ids == tok.encode(served, add_special_tokens=False)  # what the server's chat endpoint builds
    answer = tok.decode(r.answer_ids)
    assert answer.startswith("Shakespeare.") and r.reference == "Shakespeare." and r.prompt == "Who wrote Hamlet?"
    assert tok.eos_token in answer  # the end of the turn is scored too: an adapter must learn to stop


def test_decision_markdown_shows_both_adapters_and_the_reason():
    s = scores(2.5, 0.1, 0.0, 1.0)
    s["samples"] = [{"prompt": "Who wrote Hamlet?", "reference": "Shakespeare.",
                     "answers": {"serving": "Shakespeare.", "candidate": "Paris."}}]
    d = retrain.Decision("Rejected", "candidate is worse", "sha256:abc", scores=s)
    text = retrain.decision_markdown("ws", d, "0.25 of the rows held out by retrain")
    assert "**Rejected**: candidate is worse" in text and "| loss (per answer token) | 0.1000 | 2.5000 |" in text
    assert "| exact-match | 1.00 | 0.00 |" in text and "| Who wrote Hamlet? | Shakespeare. | Shakespeare. | Paris. |" in text


def test_gpu_quota_setting_is_parsed_and_bad_items_named():
    assert concurrency.parse_quota("Standard_NC6s_v3=2, local=1,") == {"Standard_NC6s_v3": 2, "local": 1}
    with pytest.raises(SpecError, match="KAIFLOW_GPU_QUOTA: 'local:1' is not SKU=NODES"):
        concurrency.parse_quota("local:1")
    assert concurrency.limit_name("Standard_NC24ads_A100_v4") == "gpu-Standard_NC24ads_A100_v4"
    assert concurrency.limit_name("a/b") == "gpu-a-b"


def test_candidate_exactly_at_the_bound_is_promoted():
    """The rule says "at most" serving x (1 + tolerance): a candidate exactly at the bound is not
    worse (1.0 x 1.25 is exactly 1.25 in binary floating point, so the bound is hit, not missed)."""
    ok, why = retrain.verdict(scores(1.25, 1.0), tolerance=0.25)
    assert ok and "held-out loss 1.2500 <= 1.2500" in why
    ok, why = retrain.verdict(scores(1.2500001, 1.0), tolerance=0.25)
    assert not ok and "> serving 1.0000 x (1 + 0.25) = 1.2500" in why
