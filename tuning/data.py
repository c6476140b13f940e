"""Dataset files in a folder → one train (and optional eval) dataset in a shape trl understands.

Why normalise here rather than in trl: Kaito users bring many shapes (chat ``messages`` like the
seed's dolly-15k export, ``prompt``/``completion``, instruction tables mapped through
``context_column``/``response_column``, plain ``text``) and trl picks its behaviour from column
names. Mapping every file to exactly one of three canonical shapes first means a file with the
wrong columns fails *before* the model loads, with a message listing what was found.

Canonical shapes (``Shape``):
    messages            one column ``messages``: list of {"role", "content"}
    prompt_completion   ``prompt`` and ``completion`` strings (chat-wrapped later if the tokenizer has a template)
    text                one column ``text``
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
ROLES = ("system", "user", "assistant", "tool")
# metadata that datasets' save_to_disk writes beside its .arrow shards
_NOT_DATA = {"dataset_info.json", "state.json", "dataset_dict.json"}
_INSTRUCTION_PAIRS = (("instruction", "response"), ("instruction", "output"), ("question", "answer"))
_EXTRA_CONTEXT = ("context", "input")


class DatasetError(ValueError):
    """The dataset is missing or has no usable shape; the message names the file and columns."""


@dataclass
class Loaded:
    """The normalised datasets and what they were made from."""

    train: Any  # datasets.Dataset
    eval: Any | None
    shape: str
    files: list[str]
    skipped: int = 0
    """Rows with none of the shape's columns filled (no known shape): left out, counted, reported."""
    skipped_examples: list[str] = field(default_factory=list)


def find_files(path: str | Path, dataset_config: dict[str, Any] | None = None) -> list[Path]:
    """Dataset files under ``path`` (a file or a folder), sorted; raises DatasetError when none."""
    config = dataset_config or {}
    root = Path(path)
    if config.get("dataset_path"):  # Kaito: a path inside the data folder (or an absolute one that exists)
        given = Path(str(config["dataset_path"]))
        root = given if given.is_absolute() and given.exists() else root / str(given).lstrip("/")
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset path does not exist; pass the folder holding the files to --data")
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_data_file(p, config))
    if not files:
        found = sorted(p.name for p in root.rglob("*") if p.is_file())[:10]
        raise DatasetError(
            f"{root}: no dataset file found (looked for {', '.join(sorted(EXTENSIONS))}); files there: {found or 'none'}"
        )
    return files


def _is_data_file(path: Path, config: dict[str, Any]) -> bool:
    return not path.name.startswith(".") and path.name not in _NOT_DATA and _format_of(path, config) is not None


def _format_of(path: Path, config: dict[str, Any]) -> str | None:
    explicit = config.get("dataset_extension")
    if explicit:
        return EXTENSIONS.get("." + str(explicit).lstrip(".").lower())
    name = path.name.lower()
    if path.suffix.lower() in EXTENSIONS:
        return EXTENSIONS[path.suffix.lower()]
    for ext, fmt in EXTENSIONS.items():  # Kaito matches on the name: "x.parquet?download=true"
        if ext.lstrip(".") in name:
            return fmt
    return None


def read_file(path: Path, dataset_config: dict[str, Any] | None = None) -> Any:
    """One dataset file as a ``datasets.Dataset`` (not normalised)."""
    import datasets

    fmt = _format_of(path, dataset_config or {})
    if fmt is None:
        raise DatasetError(f"{path}: unknown file type; use one of {', '.join(sorted(EXTENSIONS))}")
    try:
        if fmt == "arrow":
            return _read_arrow(path)
        loaded = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file for the user
        raise DatasetError(f"{path}: cannot be read as {fmt} ({_short(exc)})") from None
    return loaded


def _read_arrow(path: Path) -> Any:
    import datasets
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
    return datasets.Dataset(table)


def detect_shape(columns: list[str], dataset_config: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Which canonical shape these columns map to, and the column for each canonical field.

    Explicit ``messages_column`` / ``context_column`` win; then well-known names. Raises
    DatasetError listing the columns found when nothing fits.
    """
    messages = dataset_config.get("messages_column")
    context = dataset_config.get("context_column")
    response = dataset_config.get("response_column")
    if messages:
        _require(columns, [messages], "DatasetConfig.messages_column")
        return "messages", {"messages": messages}
    if context:
        _require(columns, [context, response or "response"], "DatasetConfig.context_column/response_column")
        return "prompt_completion", {"prompt": context, "completion": response or "response"}
    for name in ("messages", "conversations"):
        if name in columns:
            return "messages", {"messages": name}
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion", {"prompt": "prompt", "completion": "completion"}
    for prompt, completion in _INSTRUCTION_PAIRS:
        if prompt in columns and completion in columns:
            mapping = {"prompt": prompt, "completion": completion}
            extra = next((c for c in _EXTRA_CONTEXT if c in columns), None)
            return "prompt_completion", {**mapping, **({"context": extra} if extra else {})}
    text = response or "text"
    if text in columns:
        return "text", {"text": text}
    raise DatasetError(
        f"no usable columns: found {columns}; expected 'messages' (chat), 'prompt'+'completion', "
        "'instruction'+'response', or 'text' — or set DatasetConfig.messages_column, or "
        "context_column and response_column, to name yours"
    )


def _require(columns: list[str], wanted: list[str], key: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DatasetError(f"{key}: column(s) {missing} not in the dataset; columns found: {columns}")


MAX_SKIPPED_SHARE = 0.5
"""Refuse when this share of rows (or more) has no known shape: it is the wrong file or a wrong mapping."""


def known_rows(dataset: Any, shape: str, mapping: dict[str, str], source: str) -> tuple[Any, int, list[str]]:
    """Rows that hold the shape's columns, the number left out, and where the first few left-out rows are.

    A file whose rows mix shapes (``{"text": ..}`` beside ``{"foo": ..}``) loads with the union of
    the columns; a row with none of the shape's own columns filled fits no known shape. Such rows are
    counted and reported, never trained on in silence; rows that have the columns but bad values are
    still refused by :func:`normalise` (the user meant them, and should fix them).
    """
    own = [column for key, column in mapping.items() if key != "context"]
    empty = [i for i, row in enumerate(dataset.select_columns(own)) if all(_blank(row[c]) for c in own)]
    if not empty:
        return dataset, 0, []
    drop = set(empty)
    kept = dataset.select([i for i in range(len(dataset)) if i not in drop])
    return kept, len(empty), [f"{source}: row {i}" for i in empty[:3]]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)


def normalise(dataset: Any, shape: str, mapping: dict[str, str], source: str) -> Any:
    """The dataset reduced to its canonical columns, with every row checked."""
    if shape == "messages":
        dataset = dataset.select_columns([mapping["messages"]])
        if mapping["messages"] != "messages":
            dataset = dataset.rename_column(mapping["messages"], "messages")
        return dataset.map(_clean_messages, fn_kwargs={"source": source}, with_indices=True)
    if shape == "prompt_completion":
        return dataset.map(
            _join_prompt, fn_kwargs={"mapping": mapping, "source": source}, with_indices=True,
            remove_columns=dataset.column_names,
        )
    dataset = dataset.select_columns([mapping["text"]])
    if mapping["text"] != "text":
        dataset = dataset.rename_column(mapping["text"], "text")
    return dataset.filter(lambda row: bool(row["text"] and str(row["text"]).strip()))


def _clean_messages(row: dict[str, Any], index: int, source: str) -> dict[str, Any]:
    messages = row["messages"]
    if isinstance(messages, str):  # some exports keep the chat as a JSON string
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise DatasetError(f"{source}: row {index}: 'messages' is a string but not JSON") from None
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{source}: row {index}: 'messages' must be a non-empty list of {{role, content}}")
    cleaned = []
    for turn in messages:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DatasetError(f"{source}: row {index}: each message needs 'role' and 'content', got {turn!r:.80}")
        if turn["role"] not in ROLES:
            raise DatasetError(f"{source}: row {index}: unknown role {turn['role']!r}; use one of {', '.join(ROLES)}")
        cleaned.append({"role": str(turn["role"]), "content": str(turn["content"] or "")})
    if not any(turn["role"] == "assistant" for turn in cleaned):
        raise DatasetError(f"{source}: row {index}: no 'assistant' message to learn from")
    return {"messages": cleaned}


def _join_prompt(row: dict[str, Any], index: int, mapping: dict[str, str], source: str) -> dict[str, str]:
    prompt, completion = row[mapping["prompt"]], row[mapping["completion"]]
    if prompt is None or completion is None or not str(completion).strip():
        raise DatasetError(f"{source}: row {index}: empty '{mapping['prompt']}' or '{mapping['completion']}'")
    prompt = str(prompt)
    extra = row.get(mapping.get("context", ""), None)
    if extra and str(extra).strip():
        prompt = f"{prompt}\n\n{extra}"
    return {"prompt": prompt, "completion": str(completion)}


def load_dataset_dir(path: str | Path, dataset_config: dict[str, Any] | None = None) -> Loaded:
    """Every dataset file under ``path``, normalised to one shape, shuffled and split per DatasetConfig."""
    import datasets

    config = dataset_config or {}
    parts, shapes, names = [], set(), []
    skipped, examples = 0, []
    for file in find_files(path, config):
        raw = read_file(file, config)
        try:
            shape, mapping = detect_shape(list(raw.column_names), config)
        except DatasetError as exc:
            raise DatasetError(f"{file}: {exc}") from None
        raw, left_out, where = known_rows(raw, shape, mapping, str(file))
        skipped, examples = skipped + left_out, examples + where
        parts.append(normalise(raw, shape, mapping, str(file)))
        shapes.add(shape)
        names.append(str(file))
    if len(shapes) > 1:
        raise DatasetError(f"{path}: files have different shapes ({', '.join(sorted(shapes))}); keep one shape per folder")
    full = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if len(full) == 0:
        raise DatasetError(f"{path}: the dataset files hold no rows"
                           + (f" of a known shape ({skipped} row(s) fit none, e.g. {examples[0]})" if skipped else ""))
    if skipped and skipped >= MAX_SKIPPED_SHARE * (skipped + len(full)):
        raise DatasetError(
            f"{path}: {skipped} of {skipped + len(full)} rows fit no known shape (first: {', '.join(examples)}); "
            f"every row needs the columns of the file's shape ({shape_columns(shapes)}); fix or remove those rows"
        )
    if config.get("shuffle_dataset", True):
        full = full.shuffle(seed=int(config.get("shuffle_seed", 42)))
    train, evaluation = split(full, float(config.get("train_test_split", 1.0)), int(config.get("shuffle_seed", 42)))
    return Loaded(train=train, eval=evaluation, shape=shapes.pop(), files=names, skipped=skipped,
                  skipped_examples=examples[:3])


def shape_columns(shapes: set[str]) -> str:
    """The columns each shape needs, for messages."""
    need = {"messages": "'messages'", "prompt_completion": "'prompt' and 'completion' (or the mapped pair)",
            "text": "'text'"}
    return "; ".join(f"{s}: {need[s]}" for s in sorted(shapes))


def split(dataset: Any, train_fraction: float, seed: int) -> tuple[Any, Any | None]:
    """Train/eval split; at least one row each side when an eval split is asked for."""
    if train_fraction >= 1:
        return dataset, None
    if len(dataset) < 2:
        raise DatasetError(
            f"DatasetConfig.train_test_split: {train_fraction} needs at least 2 rows, the dataset has {len(dataset)}"
        )
    test_rows = min(len(dataset) - 1, max(1, round(len(dataset) * (1 - train_fraction))))
    parts = dataset.train_test_split(test_size=test_rows, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
