"""`distillguard model`: build and describe the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from distillguard.cli.options import model_option

__all__ = ["model"]


@click.group()
def model() -> None:
    """Build and describe the embedded model."""


@model.command("train")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("distillguard-model"),
    show_default=True,
    help="Directory to write the Hugging Face model to.",
)
@click.option(
    "--steps", type=int, default=None, help="Training steps (default: the shipped model's)."
)
@click.option("--seed", type=int, default=None, help="Random seed (default: the shipped model's).")
@click.option("--tiny", is_flag=True, help="A configuration that trains in seconds (for tests).")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from a checkpoint in --output.",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
)
def model_train(
    output: Path, steps: int | None, seed: int | None, tiny: bool, resume: bool, progress: bool
) -> None:
    """Train the embedded model from this Python's standard-library prose.

    Builds the corpus (docstrings and pydoc topics), trains a byte-level BPE tokenizer and a
    small GPT-2, and writes a Hugging Face model directory with a card (card.json) giving its
    validation perplexity. The defaults reproduce the model shipped in the package.
    """
    from dataclasses import replace

    from distillguard.engine.train import TrainConfig, train_model

    config = TrainConfig.tiny() if tiny else TrainConfig()
    if steps is not None:
        config = replace(config, steps=steps)
    if seed is not None:
        config = replace(config, seed=seed)
    result = train_model(output, config, resume=resume, progress=progress)
    click.echo(
        f"trained {result.parameters:,} parameters in {result.seconds / 60:.1f} min; "
        f"validation perplexity {result.validation_perplexity:.2f}; written to {result.output_dir}"
    )


@model.command("info")
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def model_info(model_dir: Path | None, as_json: bool) -> None:
    """Print a model's card: parameters, corpus hash, validation perplexity, how to reproduce it."""
    from distillguard.engine.model import model_card

    card = model_card(model_dir)
    if as_json:
        click.echo(json.dumps(card, indent=2))
        return
    corpus = card.get("corpus", {})
    rows = [
        ("name", card.get("name")),
        ("parameters", f"{card.get('parameters', 0):,}"),
        ("weights", card.get("weights")),
        ("validation perplexity", card.get("validation_perplexity")),
        ("corpus", corpus.get("source")),
        ("corpus sha256", corpus.get("sha256")),
        ("python", corpus.get("python_version")),
        ("train tokens", f"{corpus.get('train_tokens', 0):,}"),
        (
            "trained",
            f"{card.get('trained_at')} in {card.get('train_seconds')} s "
            f"on {card.get('trained_on')}",
        ),
        ("reproduce", card.get("reproduce")),
    ]
    for name, value in rows:
        click.echo(f"{name:<22} {value}")
