"""`distillguard detect`: test text for tenants' watermarks and attribute it."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

import click

from distillguard.cli.options import State, bound_scheme, scheme_config, scheme_options
from distillguard.errors import InputError

__all__ = ["detect"]


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="Tenant to test (repeatable). Default: every recorded tenant.",
)
@click.option("--key-version", type=int, default=1, show_default=True, help="Key version to test.")
@scheme_options
@click.option(
    "--fingerprint", default=None, help="Recorded scheme fingerprint the detection must match."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def detect(
    state: State,
    files: tuple[Path, ...],
    tenants: tuple[str, ...],
    key_version: int,
    scheme: str,
    gamma: float,
    delta: float,
    context_width: int,
    seeding: str,
    tokenizer_path: Path | None,
    fingerprint: str | None,
    as_json: bool,
) -> None:
    """Test FILES for tenants' watermarks: a table per document and in total.

    A FILE is plain UTF-8 text (one document) or JSONL (.jsonl) with a "text" field per line.
    With several tenants the total is an attribution: the best tenant and its p-value
    corrected for the number of tenants tested (Holm-Bonferroni).
    """
    from distillguard.watermark.detector import Detector, attribute_detections

    if tokenizer_path is None:
        raise InputError(
            "--tokenizer is required: the model directory or tokenizer.json the text came from"
        )
    config, tokenizer = bound_scheme(
        scheme_config(scheme, gamma, delta, context_width, seeding), tokenizer_path
    )
    texts, sources = _read_documents(files)
    from distillguard.keys import load_master_secret
    from distillguard.keys.keyring import recorded_tenant_keys

    master = load_master_secret(state.home)
    with closing(state.connect()) as connection:
        watermark_keys = recorded_tenant_keys(master, connection, tenants, key_version, config)
    detector = Detector(config)
    report = detector.detect_text(texts, watermark_keys, tokenizer, fingerprint=fingerprint)
    attribution = attribute_detections(report.total) if len(watermark_keys) > 1 else None
    _print_report(report, sources, attribution, as_json)


def _read_documents(files: tuple[Path, ...]) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    sources: list[str] = []
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        if b"\0" in raw:
            raise InputError(f"{path} is not a text file")
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text") from None
        if path.suffix == ".jsonl":
            # "\n" only: splitlines() also splits at U+2028 inside a JSON string
            for number, line in enumerate(content.split("\n"), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise InputError(f"{path}:{number} is not valid JSON") from None
                text = record.get("text") if isinstance(record, dict) else record
                if not isinstance(text, str):
                    raise InputError(f'{path}:{number} has no string "text" field')
                texts.append(text)
                sources.append(f"{path}:{number}")
        else:
            texts.append(content)
            sources.append(str(path))
    if not texts or not any(text.strip() for text in texts):
        raise InputError("nothing to score: the input is empty")
    return texts, sources


def _print_report(report: Any, sources: list[str], attribution: Any, as_json: bool) -> None:
    from distillguard.watermark.detector import log10_to_text

    if as_json:
        payload: dict[str, Any] = {
            "fingerprint": report.fingerprint,
            "documents": [
                {
                    "source": sources[item.index],
                    "tokens": item.tokens,
                    "detections": [d.to_dict() for d in item.detections],
                }
                for item in report.documents
            ],
            "total": [d.to_dict() for d in report.total],
        }
        if attribution is not None:
            payload["attribution"] = {
                "keys_tested": attribution.keys_tested,
                "tenant": attribution.tenant,
                "key_id": attribution.best.key_id,
                "p_value": attribution.best.p_value,
                "log10_p": attribution.best.log10_p,
                "corrected_p_value": attribution.corrected_p_value,
                "corrected_log10_p": attribution.corrected_log10_p,
                "correction": attribution.correction,
            }
        click.echo(json.dumps(payload, indent=2))
        return
    header = (
        f"{'document':<32} {'tenant':<16} {'scored':>7} {'score':>10} {'expected':>10} "
        f"{'p-value':>12}"
    )
    click.echo(f"scheme {report.fingerprint}")
    click.echo(header)
    rows = [(sources[item.index], d) for item in report.documents for d in item.detections]
    rows += [("TOTAL (deduplicated)", d) for d in report.total]
    for source, d in rows:
        name = source if len(source) <= 32 else "..." + source[-29:]
        click.echo(
            f"{name:<32} {d.tenant or d.key_id:<16} {d.scored_tokens:>7} {d.score:>10.2f} "
            f"{d.expected_score:>10.2f} {log10_to_text(d.log10_p):>12}"
        )
    if attribution is not None:
        click.echo(
            f"attribution: {attribution.tenant} (p {log10_to_text(attribution.best.log10_p)}, "
            f"{log10_to_text(attribution.corrected_log10_p)} after Holm-Bonferroni over "
            f"{attribution.keys_tested} tenants)"
        )
