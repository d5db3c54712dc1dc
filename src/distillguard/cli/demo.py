"""`distillguard demo`: the whole story on the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import click

from distillguard.errors import InputError

__all__ = ["demo"]


@click.command()
@click.option(
    "--out",
    "output",
    type=click.Path(path_type=Path),
    default=Path("distillguard-demo"),
    show_default=True,
    help="Folder for the demo's state, student and report.",
)
@click.option("--queries", type=int, default=3000, show_default=True, help="Harvest requests.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder holding karpathy_char-rnn__input.txt, clean training text "
    "(default: $DISTILLGUARD_DATA).",
)
def demo(output: Path, queries: int, data: Path | None) -> None:
    """The whole story on the embedded model: serve, harvest, flag, distill, audit, report.

    About 10 minutes on 2 cores. Ends by printing where the evidence report is.
    """
    from distillguard.experiments.demo import run_demo

    if queries < 100:
        raise InputError("--queries must be at least 100")
    folder = data or (
        Path(os.environ["DISTILLGUARD_DATA"]) if "DISTILLGUARD_DATA" in os.environ else None
    )
    shakespeare = folder / "karpathy_char-rnn__input.txt" if folder is not None else None
    run_demo(output, queries=queries, shakespeare=shakespeare, say=click.echo)
