"""The `distillguard` command. Each command is a thin call into the library.

Errors a user can cause (a missing secret, an unknown tenant, a file that is not text, a
mismatched scheme) print one line to stderr and exit with status 1; nothing else is shown.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from distillguard import __version__
from distillguard.config import data_dir
from distillguard.errors import (
    DistillGuardError,
    FingerprintMismatchError,
    InputError,
    KeyNotFoundError,
)
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULT = SchemeConfig()


@dataclass
class _State:
    home: Path


def scheme_options(function: F) -> F:
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
        click.option(
            "--tokenizer",
            "tokenizer_path",
            type=click.Path(path_type=Path),
            default=None,
            help="Model directory or tokenizer.json the scheme is bound to.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _scheme(
    scheme: str, gamma: float, delta: float, context_width: int, seeding: str
) -> SchemeConfig:
    return SchemeConfig(
        scheme=Scheme(scheme),
        gamma=gamma,
        delta=delta,
        context_width=context_width,
        seeding=Seeding(seeding),
    )


def _bound_scheme(config: SchemeConfig, tokenizer_path: Path | None) -> tuple[SchemeConfig, Any]:
    if tokenizer_path is None:
        return config, None
    from distillguard.watermark.scheme import tokenizer_fingerprint
    from distillguard.watermark.vocab import load_tokenizer

    tokenizer, vocab_size = load_tokenizer(tokenizer_path)
    return config.bind(vocab_size, tokenizer_fingerprint(tokenizer)), tokenizer


class _Group(click.Group):
    """Turns library errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistillGuardError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="distillguard")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Data directory (default: $DISTILLGUARD_HOME or ~/.local/share/distillguard).",
)
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """Protect a served language model from unauthorized distillation.

    Per-tenant keyed watermarks woven into sampling, detection with exact p-values, and
    attribution of watermarked text to the tenant who received it.
    """
    ctx.obj = _State(home=data_dir(home))


@main.group()
def keys() -> None:
    """Manage the master secret and per-tenant watermark keys."""


@keys.command("init")
@click.pass_obj
def keys_init(state: _State) -> None:
    """Create the master secret (file mode 0600) unless one exists.

    Set DISTILLGUARD_MASTER_SECRET (64+ hex characters) to keep it in a secret store instead.
    """
    from distillguard.keys import init_master_secret

    secret, created = init_master_secret(state.home)
    verb = "created" if created else "already present"
    click.echo(f"master secret {verb}: {secret.source}")


@keys.command("tenant")
@click.argument("tenant")
@click.option(
    "--key-version",
    type=int,
    default=1,
    show_default=True,
    help="Key version (rotate by bumping it).",
)
@scheme_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def keys_tenant(
    state: _State,
    tenant: str,
    key_version: int,
    scheme: str,
    gamma: float,
    delta: float,
    context_width: int,
    seeding: str,
    tokenizer_path: Path | None,
    as_json: bool,
) -> None:
    """Derive TENANT's watermark key and record its commitment; print the key id, never the key.

    The commitment (SHA-256 over key material, scheme fingerprint and creation time) is recorded
    the first time and shown unchanged afterwards.
    """
    from distillguard.keys import derive_tenant_key, load_master_secret, record_commitment
    from distillguard.store import connect

    config, _ = _bound_scheme(_scheme(scheme, gamma, delta, context_width, seeding), tokenizer_path)
    key = derive_tenant_key(load_master_secret(state.home), tenant, key_version)
    with closing(connect(state.home)) as connection:
        record = record_commitment(connection, key, config)
    fields = {
        "tenant": record.tenant,
        "key_version": record.key_version,
        "key_id": record.key_id,
        "fingerprint": record.fingerprint,
        "commitment": record.commitment,
        "created_at": record.created_at,
    }
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    for name, value in fields.items():
        click.echo(f"{name:<12} {value}")


@main.command()
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
    state: _State,
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
    from distillguard.keys import derive_tenant_key, load_master_secret, recorded_commitments
    from distillguard.store import connect
    from distillguard.watermark.detector import Detector, attribute_detections

    if tokenizer_path is None:
        raise InputError(
            "--tokenizer is required: the model directory or tokenizer.json the text came from"
        )
    config, tokenizer = _bound_scheme(
        _scheme(scheme, gamma, delta, context_width, seeding), tokenizer_path
    )
    texts, sources = _read_documents(files)
    master = load_master_secret(state.home)
    with closing(connect(state.home)) as connection:
        recorded = recorded_commitments(connection)
    names = list(dict.fromkeys(tenants)) or sorted({item.tenant for item in recorded})
    if not names:
        raise KeyNotFoundError(
            "no tenants recorded: pass --tenant or run `distillguard keys tenant`"
        )
    for name in names:
        schemes = {
            item.fingerprint
            for item in recorded
            if item.tenant == name and item.key_version == key_version
        }
        if not schemes:
            raise KeyNotFoundError(
                f"unknown tenant {name!r}: no key version {key_version} recorded for it"
            )
        # A key recorded before it was bound to a tokenizer commits to the scheme parameters
        # only; it is accepted for any vocabulary with those parameters.
        if config.fingerprint not in schemes and config.unbound().fingerprint not in schemes:
            raise FingerprintMismatchError(
                f"tenant {name!r} was keyed under scheme {sorted(schemes)[0]}, not "
                f"{config.fingerprint}: pass the scheme options and tokenizer its key was "
                "recorded with"
            )
    watermark_keys = [
        derive_tenant_key(master, name, key_version).watermark_key() for name in names
    ]
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
            for number, line in enumerate(content.splitlines(), start=1):
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
