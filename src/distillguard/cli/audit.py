"""`distillguard audit`: the audit chain, text retention, and audits of suspect models."""

from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from distillguard.cli.options import State, scheme_config, scheme_options
from distillguard.errors import AuditChainError
from distillguard.store.checkpoint import ANCHOR_FILE

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


@audit.command("verify")
@anchor_option
@click.pass_obj
def audit_verify(state: State, anchor: Path | None) -> None:
    """Check the audit log: every record, every usage row, the purges and the checkpoints.

    Recomputes the keyed chain from the usage rows, checks that every usage row has its record
    and that text is missing only where a purge event covers it, then checks each anchored
    checkpoint's signature and that the database still holds its head. Names the first
    failure and exits non-zero. Replicas sharing one database append to one chain, so this
    checks every replica's records in the order they were committed.
    """
    from distillguard.keys import load_master_secret
    from distillguard.store.integrity import verify_log

    master = load_master_secret(state.home)
    with closing(state.connect()) as connection:
        result = verify_log(connection, master, _anchor_path(state, anchor))
    failure = result.failure()
    if failure is not None:
        raise AuditChainError(failure)
    click.echo(f"audit log intact: {result.summary()}")
    click.echo(f"checkpoint public key (Ed25519): {result.public_key}")


@audit.command("anchor")
@anchor_option
@click.pass_obj
def audit_anchor(state: State, anchor: Path | None) -> None:
    """Sign a checkpoint of the audit chain's head now and append it to the anchor.

    Ship the anchor file somewhere the database's owner cannot rewrite. `serve` also writes
    checkpoints on a schedule and when it stops.
    """
    from distillguard.keys import load_master_secret
    from distillguard.store.integrity import anchor_checkpoint

    master = load_master_secret(state.home)
    path = _anchor_path(state, anchor)
    with closing(state.connect()) as connection:
        checkpoint = anchor_checkpoint(connection, master, path)
    click.echo(
        f"checkpoint at record {checkpoint.seq} ({checkpoint.records} records) appended to {path}"
    )
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
    model (the strongest test when the reference is the suspect's base). The suspect's API
    key, if it needs one, is read from DISTILLGUARD_SUSPECT_API_KEY.
    """
    from distillguard.engine.model import EMBEDDED_MODEL_DIR
    from distillguard.forensics.audit import audit_suspect as run_suspect_audit

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
        api_key=os.environ.get("DISTILLGUARD_SUSPECT_API_KEY"),
    )
    if as_json:
        command = shlex.join(["distillguard", *sys.argv[1:]])
        click.echo(json.dumps(result.to_json() | {"command": command}, indent=2))
        return
    click.echo(result.to_text())
