"""What each platform declares of itself in the contract (``infra.platforms.base.Platform``)."""

from __future__ import annotations

import pytest

from infra import platforms


@pytest.mark.parametrize("name,runs", [("local", False), ("kubernetes", True), ("aks", True)])
def test_each_platform_says_whether_it_runs_inferencesets(name: str, runs: bool) -> None:
    platform = platforms.get(name)
    assert platform.name == name
    assert platform.runs_inferencesets is runs


def test_every_named_platform_is_covered() -> None:
    assert set(platforms.NAMES) == {"local", "kubernetes", "aks"}, "a new platform: add it to the case above"
