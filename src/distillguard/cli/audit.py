"""`distillguard audit`: the audit chain, text retention, and audits of suspect models."""

from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from distillguard.cli.options import State, scheme_config, scheme_options
from distillguard.errors import AuditChainError

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """Check the tamper-evident audit log."""


@audit.command("verify")
@click.pass_obj
def audit_verify(state: State) -> None:
    """Recompute the audit chain from the usage rows; name the first bad record.

    Replicas sharing one database append to one chain (each write takes the database's chain
    lock), so this checks every replica's records in the order they were committed.
    """
    from distillguard.store.chain import verify_chain

    with closing(state.connect()) as connection:
        result = verify_chain(connection)
    if result.ok:
        click.echo(f"audit chain intact: {result.records} records")
        return
    raise AuditChainError(
        f"audit chain broken at record {result.first_bad_seq} (request {result.request_id}): "
        f"{result.reason}"
    )


@audit.command("purge-text")
@click.option("--older-than-days", type=float, required=True, help="Remove text older than this.")
@click.pass_obj
def audit_purge_text(state: State, older_than_days: float) -> None:
    """Apply a retention policy: drop prompt and output text older than N days.

    Token counts, parameters and the audit chain stay; the chain still verifies, because it
    holds the hashes of the removed text.
    """
    from distillguard.store.usage import purge_text

    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    stamp = cutoff.isoformat(timespec="microseconds").replace("+00:00", "Z")
    with closing(state.connect()) as connection:
        removed = purge_text(connection, stamp)
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
