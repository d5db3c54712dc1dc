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
    help="The HTML file to write; its JSON twin goes beside it (.json). A .json name is "
    "refused, and so is one whose twin would overwrite AUDIT_JSON.",
)
@click.pass_obj
def report(state: State, audit_json: Path, output: Path) -> None:
    """Write the evidence report for an audit (`audit suspect --json` output): a self-contained
    HTML file for counsel, and a JSON twin that validates against the shipped schema.

    It adds the attributed tenant's key commitment, the audit chain's verification and the
    account's usage and tier history from the data directory. Print a PDF with:
    chromium --headless --no-sandbox --disable-gpu --print-to-pdf=report.pdf report.html
    """
    from distillguard.forensics.report import report_paths, write_report

    html_path, json_path = report_paths(output)
    if audit_json.resolve() in (html_path.resolve(), json_path.resolve()):
        raise InputError(
            f"--out {html_path} would write the report (or its JSON twin {json_path.name}) over "
            f"the audit {audit_json}: choose another name"
        )
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
