"""`distillguard model`: training a model and describing one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from distillguard.cli import main


def test_model_train_and_info(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    output = tmp_path / "model"
    result = CliRunner().invoke(
        main, ["model", "train", "--tiny", "--output", str(output), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "validation perplexity" in result.stdout
    info = CliRunner().invoke(main, ["model", "info", "--model", str(output), "--json"])
    assert json.loads(info.stdout)["parameters"] > 0


def test_model_info_describes_the_embedded_model() -> None:
    from distillguard.engine.model import EMBEDDED_MODEL_DIR

    if not (EMBEDDED_MODEL_DIR / "card.json").is_file():
        pytest.fail("the embedded model is not shipped in the package")
    result = CliRunner().invoke(main, ["model", "info"])
    assert result.exit_code == 0
    assert "validation perplexity" in result.stdout
    assert "sha256:" in result.stdout
