"""The `distillguard` command. Each command is a thin call into the library.

Errors a user can cause (a missing secret, an unknown tenant, a file that is not text, a
mismatched scheme) print one line to stderr, its secrets redacted (a URL's password, an API
key), and exit with status 1; nothing else is shown.

One module per command group; `options` holds what they share. The modules import the
library and `options`, never this package: it imports them, to register their commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from distillguard import __version__
from distillguard.cli import (
    accounts,
    audit,
    demo,
    detect,
    generate,
    keys,
    model,
    operators,
    report,
    serve,
)
from distillguard.cli.options import State
from distillguard.config import data_dir
from distillguard.errors import DistillGuardError
from distillguard.redact import redact

__all__ = ["main"]


class _Group(click.Group):
    """Turns library errors into one line on stderr (secrets redacted) and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistillGuardError as exc:
            line = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"error: {redact(line)}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="distillguard")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Data directory (default: $DISTILLGUARD_HOME or ~/.local/share/distillguard).",
)
@click.option(
    "--database",
    envvar="DISTILLGUARD_DATABASE_URL",
    default=None,
    help="PostgreSQL URL (postgresql://...) for keys, usage and the audit log, shared by "
    "replicas [env DISTILLGUARD_DATABASE_URL]. Default: SQLite in the data directory.",
)
@click.pass_context
def main(ctx: click.Context, home: Path | None, database: str | None) -> None:
    """Protect a served language model from unauthorized distillation.

    Per-tenant keyed watermarks woven into sampling, detection with exact p-values, and
    attribution of watermarked text to the tenant who received it.
    """
    ctx.obj = State(home=data_dir(home), database=database or None)


main.add_command(keys.keys)
main.add_command(audit.audit)
main.add_command(report.report)
main.add_command(demo.demo)
main.add_command(accounts.accounts)
main.add_command(operators.operators)
main.add_command(serve.serve)
main.add_command(detect.detect)
main.add_command(model.model)
main.add_command(generate.generate)
