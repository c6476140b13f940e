"""What the local platform tells the user about the rows it trained on (issue 24 item 4)."""

from __future__ import annotations

from infra.platforms import local


class Events:
    """A status.Reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def condition(self, *args, **kwargs) -> None:  # pragma: no cover - not used here
        pass

    def event(self, reason: str, message: str, kind: str = "Normal") -> None:
        self.events.append((reason, message, kind))


def test_left_out_rows_become_a_warning_event_naming_them(caplog):
    report = Events()
    metrics = {"dataset": {"rows": 5, "train_rows": 5, "skipped": 2, "shape": "messages",
                           "skipped_examples": ["/d/chat.jsonl: row 5", "/d/chat.jsonl: row 6"]}}
    with caplog.at_level("WARNING", logger="infra"):
        local.report_dataset_rows(metrics, report)
    [(reason, message, kind)] = report.events
    assert (reason, kind) == ("DatasetRowsSkipped", "Warning")
    assert "trained on 5 of 7 rows" in message and "2 row(s) of no known shape" in message
    assert "/d/chat.jsonl: row 5" in message
    assert any("no known shape" in r.getMessage() for r in caplog.records)


def test_clean_data_is_one_normal_event_with_the_count():
    report = Events()
    local.report_dataset_rows({"dataset": {"rows": 4, "train_rows": 3, "skipped": 0, "shape": "text"}}, report)
    assert report.events == [("DatasetRows", "trained on 3 of 4 rows (text)", "Normal")]
