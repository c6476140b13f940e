"""Fixtures for the tuning program's tests: datasets the tests write themselves (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

# question → fixed answer pairs the tiny model must learn (short, distinct first tokens)
PAIRS = [
    ("What is the capital of France?", "Paris."),
    ("How many legs does a spider have?", "Eight."),
    ("What colour is the sky?", "Blue."),
    ("Who wrote Hamlet?", "Shakespeare."),
    ("What is two plus two?", "Four."),
]


def chat_rows(pairs: list[tuple[str, str]] = PAIRS) -> list[dict]:
    """Rows in the seed's dolly-15k OpenAI style: a ``messages`` list of {role, content}."""
    return [
        {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def chat_dir(tmp_path: Path) -> Path:
    """A folder with one dolly-style parquet file named like the seed's download."""
    folder = tmp_path / "data"
    write_parquet(folder / "train-00000-of-00001-54e3756291ca09c6.parquet", chat_rows())
    return folder
