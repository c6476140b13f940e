"""What each platform declares of itself in the contract (``infra.platforms.base.Platform``)."""

from __future__ import annotations

import pytest

from infra import platforms


@pytest.mark.parametrize("name,runs", [("local", False), ("kubernetes", True), ("aks", True)])
def test_each_platform_says_whether_it_runs_inferencesets(name: str, runs: bool) -> None:
    platform = platforms.get(name)
    assert platform.name == name
    assert platform.runs_inferencesets is runs


@pytest.mark.parametrize("name,in_image", [("local", False), ("kubernetes", True), ("aks", True)])
def test_each_platform_says_whether_its_steps_run_in_kaiflows_image(name: str, in_image: bool) -> None:
    assert platforms.get(name).runs_in_image is in_image


def test_every_named_platform_is_covered() -> None:
    assert set(platforms.NAMES) == {"local", "kubernetes", "aks"}, "a new platform: add it to the case above"
