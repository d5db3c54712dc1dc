"""What the command modules share: the state the `main` group hands down, and option sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding

if TYPE_CHECKING:
    from distillguard.store.base import Connection

__all__ = [
    "State",
    "bound_scheme",
    "model_option",
    "scheme_config",
    "scheme_options",
    "scheme_parameter_options",
]

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULT = SchemeConfig()


@dataclass
class State:
    """The global options, as `main` resolved them."""

    home: Path
    database: str | None = None  # a postgresql:// URL; None: SQLite in the data directory

    def connect(self) -> Connection:
        from distillguard.store import connect

        return connect(self.home, url=self.database)


def scheme_parameter_options(function: F) -> F:
    """Options that describe a watermark scheme; the defaults are SchemeConfig's."""
    options = [
        click.option(
            "--scheme",
            type=click.Choice([item.value for item in Scheme]),
            default=_DEFAULT.scheme.value,
            show_default=True,
            help="Watermark scheme.",
        ),
        click.option(
            "--gamma",
            type=float,
            default=_DEFAULT.gamma,
            show_default=True,
            help="Green fraction (green_list).",
        ),
        click.option(
            "--delta",
            type=float,
            default=_DEFAULT.delta,
            show_default=True,
            help="Logit bias of green tokens (green_list).",
        ),
        click.option(
            "--context-width",
            type=int,
            default=_DEFAULT.context_width,
            show_default=True,
            help="Tokens that seed the hash.",
        ),
        click.option(
            "--seeding",
            type=click.Choice([item.value for item in Seeding]),
            default=_DEFAULT.seeding.value,
            show_default=True,
            help="left_hash: previous tokens; self_hash: anchored min-hash with the candidate.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def scheme_options(function: F) -> F:
    """The scheme's parameters and the tokenizer it is bound to."""
    function = click.option(
        "--tokenizer",
        "tokenizer_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Model directory or tokenizer.json the scheme is bound to.",
    )(function)
    return scheme_parameter_options(function)


def model_option(function: F) -> F:
    return click.option(
        "--model",
        "model_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Model directory (default: the embedded model).",
    )(function)


def scheme_config(
    scheme: str, gamma: float, delta: float, context_width: int, seeding: str
) -> SchemeConfig:
    """The SchemeConfig that `scheme_parameter_options` describe."""
    return SchemeConfig(
        scheme=Scheme(scheme),
        gamma=gamma,
        delta=delta,
        context_width=context_width,
        seeding=Seeding(seeding),
    )


def bound_scheme(config: SchemeConfig, tokenizer_path: Path | None) -> tuple[SchemeConfig, Any]:
    """`config` bound to the tokenizer at `tokenizer_path`, and that tokenizer (None: unbound)."""
    if tokenizer_path is None:
        return config, None
    from distillguard.watermark.scheme import tokenizer_fingerprint
    from distillguard.watermark.vocab import load_tokenizer

    tokenizer, vocab_size = load_tokenizer(tokenizer_path)
    return config.bind(vocab_size, tokenizer_fingerprint(tokenizer)), tokenizer
