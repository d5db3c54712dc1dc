"""`distillguard report`: the evidence report for an audit."""

from __future__ import annotations

import json
from pathlib import Path

import click

from distillguard.cli.options import State
from distillguard.errors import InputError

__all__ = ["report"]


@click.command()
@click.argument("audit_json", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "output",
    type=click.Path(path_type=Path),
    default=Path("evidence-report.html"),
    show_default=True,
    help="The HTML file to write; its JSON twin goes beside it (.json).",
)
@click.pass_obj
def report(state: State, audit_json: Path, output: Path) -> None:
    """Write the evidence report for an audit (`audit suspect --json` output): a self-contained
    HTML file for counsel, and a JSON twin that validates against the shipped schema.

    It adds the attributed tenant's key commitment, the audit chain's verification and the
    account's usage and tier history from the data directory. Print a PDF with:
    chromium --headless --no-sandbox --disable-gpu --print-to-pdf=report.pdf report.html
    """
    from distillguard.forensics.report import write_report

    try:
        audit_data = json.loads(audit_json.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {audit_json}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{audit_json} is not JSON: pass `audit suspect --json` output") from None
    if not isinstance(audit_data, dict):
        raise InputError(f"{audit_json} is not an audit result")
    html_path, json_path = write_report(audit_data, state.home, output, database=state.database)
    click.echo(f"wrote {html_path} and {json_path}")
