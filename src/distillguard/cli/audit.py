"""`distillguard audit`: the audit chain, text retention, and audits of suspect models."""

from __future__ import annotations

import json
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from distillguard.cli.options import State, scheme_config, scheme_options
from distillguard.errors import AuditChainError
from distillguard.store.checkpoint import ANCHOR_FILE
from distillguard.store.timestamp import TSA_CERT_ENV, TSA_ENV

F = TypeVar("F", bound=Any)

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """Check the tamper-evident audit log."""


def anchor_option(function: F) -> F:
    return click.option(
        "--anchor",
        "anchor",
        type=click.Path(path_type=Path),
        envvar="DISTILLGUARD_ANCHOR",
        default=None,
        help="The append-only file of signed checkpoints [env DISTILLGUARD_ANCHOR]. Default: "
        f"{ANCHOR_FILE} in the data directory.",
    )(function)


def tsa_cert_option(function: F) -> F:
    return click.option(
        "--tsa-cert",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar=TSA_CERT_ENV,
        default=None,
        help="PEM (or DER) file with the time-stamping authority's root CA certificate (and any "
        "intermediates): timestamp tokens must be signed by a TSA it vouches for "
        f"[env {TSA_CERT_ENV}].",
    )(function)


@audit.command("verify")
@anchor_option
@tsa_cert_option
@click.pass_obj
def audit_verify(state: State, anchor: Path | None, tsa_cert: Path | None) -> None:
    """Check the audit log: every record, every usage row, the purges and the checkpoints.

    Recomputes the keyed chain from the usage rows, checks that every usage row has its record
    and that text is missing only where a purge event covers it, then checks each anchored
    checkpoint's signature, that the database still holds its head and its key commitments,
    and each RFC 3161 timestamp token's imprint (and, with --tsa-cert, its signature), printing
    the TSA's time. Names the first failure and exits non-zero. Replicas sharing one database
    append to one chain, so this checks every replica's records in the order they were
    committed.
    """
    from distillguard.keys import load_master_secret
    from distillguard.store.integrity import verify_log
    from distillguard.store.timestamp import load_tsa_trust

    master = load_master_secret(state.home)
    trust = load_tsa_trust(tsa_cert) if tsa_cert is not None else None
    with closing(state.connect()) as connection:
        result = verify_log(connection, master, _anchor_path(state, anchor), trust)
    failure = result.failure()
    if failure is not None:
        raise AuditChainError(failure)
    click.echo(f"audit log intact: {result.summary()}")
    click.echo(f"checkpoint public key (Ed25519): {result.public_key}")


@audit.command("anchor")
@anchor_option
@click.option(
    "--tsa",
    "tsa_url",
    envvar=TSA_ENV,
    default=None,
    metavar="URL",
    help="An RFC 3161 time-stamping authority to timestamp the checkpoint [env "
    f"{TSA_ENV}]. If it fails, the checkpoint is anchored without a timestamp.",
)
@tsa_cert_option
@click.pass_obj
def audit_anchor(
    state: State, anchor: Path | None, tsa_url: str | None, tsa_cert: Path | None
) -> None:
    """Sign a checkpoint of the audit chain's head now and append it to the anchor.

    Ship the anchor file somewhere the database's owner cannot rewrite. `serve` also writes
    checkpoints on a schedule and when it stops. With --tsa, a time-stamping authority
    timestamps the checkpoint's signed bytes and its token is stored with it: proof, from
    outside, of when this head existed.
    """
    from distillguard.keys import load_master_secret
    from distillguard.store.integrity import anchor_checkpoint
    from distillguard.store.timestamp import TimestampAuthority, load_tsa_trust

    trust = load_tsa_trust(tsa_cert) if tsa_cert is not None else None
    tsa = TimestampAuthority(tsa_url, trust) if tsa_url else None
    master = load_master_secret(state.home)
    path = _anchor_path(state, anchor)
    with closing(state.connect()) as connection:
        anchored = anchor_checkpoint(connection, master, path, tsa)
    checkpoint = anchored.checkpoint
    click.echo(
        f"checkpoint at record {checkpoint.seq} ({checkpoint.records} records) appended to {path}"
    )
    if anchored.timestamp is not None:
        by = f" by {anchored.timestamp.authority}" if anchored.timestamp.authority else ""
        click.echo(f"timestamped{by} at {anchored.timestamp.gen_time}")
    if anchored.timestamp_failure is not None:
        click.echo(f"not timestamped: {anchored.timestamp_failure}", err=True)
    click.echo(f"checkpoint public key (Ed25519): {checkpoint.public_key}")


def _anchor_path(state: State, anchor: Path | None) -> Path:
    from distillguard.config import data_dir

    return anchor if anchor is not None else data_dir(state.home) / ANCHOR_FILE


@audit.command("purge-text")
@click.option("--older-than-days", type=float, required=True, help="Remove text older than this.")
@click.pass_obj
def audit_purge_text(state: State, older_than_days: float) -> None:
    """Apply a retention policy: drop prompt and output text older than N days.

    Token counts, parameters and the audit chain stay, and the purge is itself recorded in the
    chain; the chain still verifies, because it holds the hashes of the removed text.
    """
    from distillguard.keys import load_master_secret
    from distillguard.store.integrity import current_chain_key
    from distillguard.store.retention import purge_text

    key = current_chain_key(load_master_secret(state.home))
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    stamp = cutoff.isoformat(timespec="microseconds").replace("+00:00", "Z")
    with closing(state.connect()) as connection:
        removed = purge_text(connection, stamp, key)
    click.echo(f"removed the text of {removed} usage rows created before {stamp}")


@audit.command("replay")
@click.pass_obj
def audit_replay(state: State) -> None:
    """Retry the records the database refused (the dead-letter file beside the journal).

    A record the database refused while it worked (a constraint, a value its types cannot
    store) is kept in <journal>/dead-letter/ rather than lost. What the database now takes is
    appended to the audit chain; what it still refuses stays, and is listed with the reason.
    Exits 1 while any record remains, or when a line's MAC does not verify (a forged line is
    never replayed).
    """
    from distillguard.gateway.server import journal_directory
    from distillguard.keys import load_master_secret
    from distillguard.keys.derive import journal_key
    from distillguard.store.deadletter import replay
    from distillguard.store.integrity import current_chain_key

    master = load_master_secret(state.home)
    with closing(state.connect()) as connection:
        result = replay(
            journal_directory(state.home, state.database),
            journal_key(master),
            connection,
            current_chain_key(master),
        )
    click.echo(
        f"{result.files} dead-letter files: {result.replayed} records appended, "
        f"{result.already} already present, {len(result.refused)} still refused"
    )
    for request_id, reason in result.refused:
        click.echo(f"  {request_id}: {reason}")
    if result.forged_lines:
        click.echo(
            f"{result.forged_lines} lines whose MAC does not verify were not replayed "
            "(forged or edited on disk); their files are kept for inspection",
            err=True,
        )
    if result.refused or result.forged_lines:
        sys.exit(1)


@audit.command("suspect")
@click.option("--url", default=None, help="Black-box: the suspect's OpenAI-compatible base URL.")
@click.option("--suspect-model", default=None, help="Black-box: the model name to ask for.")
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Open weights: the suspect's local Hugging Face model directory.",
)
@click.option(
    "--reference",
    default=None,
    help="Control: a model that never saw our outputs (a URL in black-box mode, a directory "
    "in open-weights mode), audited the same way. In open-weights mode it also anchors the "
    "green-mass-shift test: best the public base the suspect was fine-tuned from.",
)
@click.option(
    "--base",
    "base_weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Black-box: a local copy of the model the suspect was fine-tuned from (our "
    "tokenizer). Adds the focused test: only the tuples our model (the --tokenizer directory, "
    "default the embedded model) explains better than this base are scored.",
)
@click.option(
    "--suspect-api-key",
    envvar="DISTILLGUARD_SUSPECT_API_KEY",
    default=None,
    help="Black-box: the bearer key the suspect's API wants; sent to --url only "
    "[env DISTILLGUARD_SUSPECT_API_KEY, which keeps it out of the process list].",
)
@click.option(
    "--reference-api-key",
    envvar="DISTILLGUARD_REFERENCE_API_KEY",
    default=None,
    help="Black-box: the bearer key of the --reference URL; sent there only, and the "
    "suspect's key never is [env DISTILLGUARD_REFERENCE_API_KEY].",
)
@click.option("--tenant", default=None, help="Use this tenant's logged traffic (default: all).")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Black-box: prompts to send instead of logged ones (text, JSONL or CSV).",
)
@click.option("--queries", type=int, default=2000, show_default=True, help="Black-box budget.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option(
    "--contexts", type=int, default=20_000, show_default=True, help="Open-weights budget."
)
@scheme_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def audit_suspect(
    state: State,
    url: str | None,
    suspect_model: str | None,
    weights: Path | None,
    reference: str | None,
    base_weights: Path | None,
    suspect_api_key: str | None,
    reference_api_key: str | None,
    tenant: str | None,
    prompts_file: Path | None,
    queries: int,
    max_tokens: int,
    contexts: int,
    scheme: str,
    gamma: float,
    delta: float,
    context_width: int,
    seeding: str,
    tokenizer_path: Path | None,
    as_json: bool,
) -> None:
    """Test whether a suspect model learned from our watermarked outputs (radioactivity).

    Black-box (--url, --suspect-model): send it logged prompts (or --prompts), score its
    outputs against every tenant's key; tuples whose context is in the query's prompt are
    dropped. With --base DIR (the suspect's base model), the focused test leads: only tuples
    our model explains better than the base are scored.

    Open weights (--weights DIR): teacher-force the logged outputs through it and test
    whether its top-1 predictions, and its probability mass, favour green tokens; with
    --reference DIR, also whether it moved probability towards green tokens relative to that
    model (the strongest test when the reference is the suspect's base). Suspect and
    reference weights load from safetensors only: a directory holding only pickled weights
    (pytorch_model.bin) is refused, never unpickled.

    Each URL gets its own key (--suspect-api-key, --reference-api-key); the --json output
    records the command line with its secrets (keys, URL passwords) redacted.
    """
    from distillguard.engine.model import EMBEDDED_MODEL_DIR
    from distillguard.forensics.audit import audit_suspect as run_suspect_audit
    from distillguard.redact import redact_command

    result = run_suspect_audit(
        state.home,
        scheme_config(scheme, gamma, delta, context_width, seeding),
        tokenizer_path or EMBEDDED_MODEL_DIR,
        database=state.database,
        url=url,
        suspect_model=suspect_model,
        weights=weights,
        reference=reference,
        base=base_weights,
        tenant=tenant,
        prompts_file=prompts_file,
        queries=queries,
        max_tokens=max_tokens,
        contexts=contexts,
        api_key=suspect_api_key or None,
        reference_api_key=reference_api_key or None,
    )
    if as_json:
        command = redact_command(["distillguard", *sys.argv[1:]])
        click.echo(json.dumps(result.to_json() | {"command": command}, indent=2))
        return
    click.echo(result.to_text())
