"""tuning.known_keys is a snapshot of the pinned libraries' dataclasses: fail loudly when it goes stale."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from tuning import known_keys


@pytest.mark.slow
def test_snapshot_matches_the_installed_trl_peft_and_transformers():
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    assert set(known_keys.TRAINING_ARGUMENTS) == {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    assert set(known_keys.LORA) == {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    params = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    assert set(known_keys.BITSANDBYTES) == params
