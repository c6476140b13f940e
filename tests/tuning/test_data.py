"""tuning.data: every supported file type and column shape becomes one canonical dataset, or a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tuning.conftest import PAIRS, chat_rows, write_parquet
from tuning import data


def test_seed_style_parquet_messages_load_as_chat(chat_dir: Path):
    loaded = data.load_dataset_dir(chat_dir, {"shuffle_dataset": False})
    assert loaded.shape == "messages" and len(loaded.train) == len(PAIRS) and loaded.eval is None
    assert loaded.train[0]["messages"][-1] == {"role": "assistant", "content": PAIRS[0][1]}
    assert loaded.files[0].endswith(".parquet")


def test_jsonl_prompt_completion(tmp_path: Path):
    rows = [{"prompt": q, "completion": a, "id": i} for i, (q, a) in enumerate(PAIRS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = data.load_dataset_dir(tmp_path, {"shuffle_dataset": False})
    assert loaded.shape == "prompt_completion"
    assert loaded.train.column_names == ["prompt", "completion"] and loaded.train[1]["completion"] == PAIRS[1][1]


def test_csv_instruction_table_mapped_through_context_and_response_columns(tmp_path: Path):
    lines = ["question_text,answer_text,category"] + [f'"{q}","{a}",trivia' for q, a in PAIRS]
    (tmp_path / "qa.csv").write_text("\n".join(lines) + "\n")
    config = {"context_column": "question_text", "response_column": "answer_text", "shuffle_dataset": False}
    loaded = data.load_dataset_dir(tmp_path, config)
    assert loaded.shape == "prompt_completion" and loaded.train[0] == {"prompt": PAIRS[0][0], "completion": PAIRS[0][1]}


def test_dolly_original_columns_are_recognised_with_context_appended(tmp_path: Path):
    rows = [{"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"}]
    (tmp_path / "dolly.json").write_text(json.dumps(rows))
    loaded = data.load_dataset_dir(tmp_path)
    assert loaded.train[0] == {"prompt": "Summarise.\n\nA long text.", "completion": "Short."}


def test_arrow_text_and_explicit_messages_column(tmp_path: Path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one line", "two lines", ""]}).save_to_disk(str(tmp_path / "saved"))
    text = data.load_dataset_dir(tmp_path / "saved")
    assert text.shape == "text" and sorted(text.train["text"]) == ["one line", "two lines"]  # empty row dropped
    folder = tmp_path / "chat"
    write_parquet(folder / "c.parquet", [{"dialog": r["messages"], "n": 1} for r in chat_rows()])
    chat = data.load_dataset_dir(folder, {"messages_column": "dialog"})
    assert chat.shape == "messages" and chat.train.column_names == ["messages"]


def test_train_test_split_keeps_at_least_one_eval_row(chat_dir: Path):
    loaded = data.load_dataset_dir(chat_dir, {"train_test_split": 0.9, "shuffle_seed": 1})
    assert (len(loaded.train), len(loaded.eval)) == (4, 1)


def test_file_with_no_known_shape_fails_listing_its_columns(tmp_path: Path):
    write_parquet(tmp_path / "weird.parquet", [{"foo": "a", "bar": "b"}])
    with pytest.raises(data.DatasetError) as caught:
        data.load_dataset_dir(tmp_path)
    message = str(caught.value)
    assert "weird.parquet" in message and "['foo', 'bar']" in message and "messages_column" in message


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"messages": [{"role": "user", "content": "hi"}]}], "no 'assistant' message"),
        ([{"messages": [{"role": "robot", "content": "hi"}]}], "unknown role 'robot'"),
        ([{"messages": [{"speaker": "user", "text": "hi"}]}], "needs 'role' and 'content'"),
    ],
)
def test_malformed_chat_rows_name_the_file_and_row(tmp_path: Path, rows, needle):
    write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(data.DatasetError, match=needle) as caught:
        data.load_dataset_dir(tmp_path)
    assert "bad.parquet: row 0" in str(caught.value)


def test_missing_folder_empty_folder_and_named_column_missing(tmp_path: Path, chat_dir: Path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.load_dataset_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(data.DatasetError, match=r"no dataset file found.*notes.txt"):
        data.load_dataset_dir(tmp_path / "empty")
    with pytest.raises(data.DatasetError, match=r"DatasetConfig.messages_column.*\['chat'\]"):
        data.load_dataset_dir(chat_dir, {"messages_column": "chat"})


def test_unreadable_file_and_mixed_shapes_fail(tmp_path: Path):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(data.DatasetError, match="broken.parquet: cannot be read as parquet"):
        data.load_dataset_dir(tmp_path)
    mixed = tmp_path / "mixed"
    write_parquet(mixed / "a.parquet", chat_rows())
    (mixed / "b.jsonl").write_text(json.dumps({"text": "plain"}) + "\n")
    with pytest.raises(data.DatasetError, match="different shapes"):
        data.load_dataset_dir(mixed)


def test_rows_of_no_known_shape_are_counted_not_dropped_in_silence(tmp_path: Path):
    """Issue 24 item 4: a row that fits no shape is left out *and reported*; the others train."""
    good = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS]
    lines = [json.dumps(r) for r in good] + [json.dumps({"foo": "bar"})]
    (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
    loaded = data.load_dataset_dir(tmp_path, {"shuffle_dataset": False})
    assert len(loaded.train) == len(PAIRS) and loaded.skipped == 1
    assert loaded.skipped_examples == [f"{tmp_path / 'chat.jsonl'}: row {len(PAIRS)}"]


@pytest.mark.parametrize("good_rows", [0, 1])
def test_too_few_rows_of_a_known_shape_are_refused(tmp_path: Path, good_rows: int):
    """One good row beside one unrecognised row trained to loss 0 and said Ready: now refused."""
    rows = [{"text": "a real line" if good_rows else " "}] + [{"foo": "bar"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(data.DatasetError) as caught:
        data.load_dataset_dir(tmp_path)
    message = str(caught.value)
    assert "t.jsonl: row" in message and ("known shape" in message or "fit no known shape" in message)
