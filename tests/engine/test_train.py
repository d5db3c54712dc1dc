"""Training the embedded model: a standard model directory, a card, and exact resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from distillguard.engine.train import TrainConfig, train_model  # noqa: E402


def test_tiny_training_writes_a_hugging_face_directory_with_a_card(tiny_model_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tiny_model_dir / name).is_file(), name
    card = json.loads((tiny_model_dir / "card.json").read_text())
    assert card["parameters"] > 0
    assert card["validation_perplexity"] > 1
    assert card["corpus"]["sha256"].startswith("sha256:")
    assert card["reproduce"].startswith("distillguard model train")
    assert not (tiny_model_dir / "checkpoint").exists()


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    config = TrainConfig.tiny()
    reference = train_model(tmp_path / "straight", config, progress=False)

    class Interrupt(Exception):
        pass

    def stop_at_step_six(step: int, loss: float) -> None:
        if step == 5:  # after the checkpoint written at step 4
            raise Interrupt

    with pytest.raises(Interrupt):
        train_model(tmp_path / "resumed", config, progress=False, on_step=stop_at_step_six)
    assert (tmp_path / "resumed" / "checkpoint" / "state.pt").is_file()
    resumed = train_model(tmp_path / "resumed", config, progress=False)
    assert resumed.validation_perplexity == pytest.approx(reference.validation_perplexity, rel=1e-6)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in straight.items():
        assert torch.equal(tensor, again[name]), name


class _Planted:
    """Unpickling this touches `marker`: the stand-in for code a hostile pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_resuming_never_runs_code_planted_in_a_checkpoint(tmp_path: Path) -> None:
    from distillguard.errors import ConfigError

    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "model" / "checkpoint" / "state.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"config": {}, "model": _Planted(marker)}, checkpoint)
    with pytest.raises(ConfigError, match="remove it or pass --no-resume"):
        train_model(tmp_path / "model", TrainConfig.tiny(), progress=False)
    assert not marker.exists()
