from __future__ import annotations

import pytest

from distillguard.errors import ConfigError
from distillguard.experiments.sources import PromptSources, fold_of


def test_folds_split_by_content_and_cover_everything() -> None:
    prompts = [f"prompt number {i}" for i in range(1000)]
    folds = [fold_of(p) for p in prompts]
    assert set(folds) == {0, 1}
    assert 400 < folds.count(0) < 600
    assert fold_of("same text") == fold_of("same text")


def test_the_shared_prompt_sets_load_by_role(prompt_sources: PromptSources) -> None:
    assert len(prompt_sources.benign["open-assistant"]) >= 240
    assert len(prompt_sources.benign["awesome-chatgpt"]) > 1000  # TEXT rows only
    assert len(prompt_sources.harvest["gsm8k"]) == 1319
    assert len(prompt_sources.harvest["self-instruct"]) == 175
    benign, harvest = prompt_sources.select(("open-assistant",), ("gsm8k",), fold=0)
    assert all(fold_of(p) == 0 for p in benign + harvest)
    with pytest.raises(ConfigError, match="unknown prompt source"):
        prompt_sources.select(("nope",), ("gsm8k",))
