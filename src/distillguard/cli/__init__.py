"""The `distillguard` command. Each command is a thin call into the library.

Errors a user can cause (a missing secret, an unknown tenant, a file that is not text, a
mismatched scheme) print one line to stderr and exit with status 1; nothing else is shown.
"""

from __future__ import annotations

import json
import os
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
    AuditChainError,
    ConfigError,
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
    database: str | None = None  # a postgresql:// URL; None: SQLite in the data directory

    def connect(self) -> Any:
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
    ctx.obj = _State(home=data_dir(home), database=database or None)


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

    config, _ = _bound_scheme(_scheme(scheme, gamma, delta, context_width, seeding), tokenizer_path)
    key = derive_tenant_key(load_master_secret(state.home), tenant, key_version)
    with closing(state.connect()) as connection:
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


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--rpm", type=int, required=True, help="Requests per minute.")
@click.option("--tpm", type=int, required=True, help="Tokens per minute (prompt + max_tokens x n).")
@click.option("--daily-tokens", type=int, default=None, help="Tokens per 24 hours.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Requests in flight.")
@click.option(
    "--tier", default="normal", show_default=True, help="Policy tier (normal, watch, throttle)."
)
@click.pass_obj
def keys_create(
    state: _State,
    tenant: str,
    rpm: int,
    tpm: int,
    daily_tokens: int | None,
    concurrency: int,
    tier: str,
) -> None:
    """Create an API key for a tenant and print it once (only its salted hash is stored)."""
    from distillguard.gateway.apikeys import create_api_key

    with closing(state.connect()) as connection:
        secret, record = create_api_key(
            connection,
            tenant,
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            concurrency=concurrency,
            tier=tier,
        )
    click.echo(f"key id  {record.key_id}\ntenant  {record.tenant}\napi key {secret}")
    click.echo("(the API key is shown once; store it now)", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def keys_list(state: _State, as_json: bool) -> None:
    """List API keys (ids, tenants, limits; never the keys)."""
    from dataclasses import asdict

    from distillguard.gateway.apikeys import list_api_keys

    with closing(state.connect()) as connection:
        records = list_api_keys(connection)
    if as_json:
        click.echo(json.dumps([asdict(record) for record in records], indent=2))
        return
    click.echo(f"{'key id':<14} {'tenant':<16} {'rpm':>6} {'tpm':>9} {'tier':<9} status")
    for record in records:
        status = f"revoked {record.revoked_at}" if record.revoked_at else "active"
        click.echo(
            f"{record.key_id:<14} {record.tenant:<16} {record.rpm:>6} {record.tpm:>9} "
            f"{record.tier:<9} {status}"
        )


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(state: _State, key_id: str) -> None:
    """Revoke an API key by its id; a running gateway refuses it within 5 seconds."""
    from distillguard.gateway.apikeys import revoke_api_key

    with closing(state.connect()) as connection:
        record = revoke_api_key(connection, key_id)
    click.echo(f"revoked {record.key_id} ({record.tenant}) at {record.revoked_at}")


@main.group()
def audit() -> None:
    """Check the tamper-evident audit log."""


@audit.command("verify")
@click.pass_obj
def audit_verify(state: _State) -> None:
    """Recompute the audit chain from the usage rows; name the first bad record.

    Replicas sharing one database append to one chain (each write takes the database's chain
    lock), so this checks every replica's records in the order they were committed.
    """
    from distillguard.store.audit import verify_chain

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
def audit_purge_text(state: _State, older_than_days: float) -> None:
    """Apply a retention policy: drop prompt and output text older than N days.

    Token counts, parameters and the audit chain stay; the chain still verifies, because it
    holds the hashes of the removed text.
    """
    from datetime import UTC, datetime, timedelta

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
    state: _State,
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
    from distillguard.forensics.audit import run_audit

    if (url is None) == (weights is None):
        raise InputError("give either --url (black-box) or --weights (open weights)")
    if url is not None and not suspect_model:
        raise InputError("--suspect-model is required with --url")
    if base_weights is not None and url is None:
        raise InputError("--base is for black-box audits (--url); with --weights use --reference")
    if queries < 1 or contexts < 1 or max_tokens < 1:
        raise InputError("--queries, --contexts and --max-tokens must be positive")
    our_model = tokenizer_path or _embedded_model_dir()
    config, tokenizer = _bound_scheme(
        _scheme(scheme, gamma, delta, context_width, seeding), our_model
    )
    result = run_audit(
        state.home,
        config,
        tokenizer,
        database=state.database,
        url=url,
        suspect_model=suspect_model,
        weights=weights,
        reference=reference,
        base=base_weights,
        our_model=our_model,
        tenant=tenant,
        prompts_file=prompts_file,
        queries=queries,
        max_tokens=max_tokens,
        contexts=contexts,
        api_key=os.environ.get("DISTILLGUARD_SUSPECT_API_KEY"),
    )
    if as_json:
        import shlex

        command = shlex.join(["distillguard", *sys.argv[1:]])
        click.echo(json.dumps(result.to_json() | {"command": command}, indent=2))
        return
    click.echo(result.to_text())


@main.command()
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
def report(state: _State, audit_json: Path, output: Path) -> None:
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


@main.command()
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


def _embedded_model_dir() -> Path:
    from distillguard.engine.model import EMBEDDED_MODEL_DIR

    return Path(EMBEDDED_MODEL_DIR)


@main.group(invoke_without_command=True)
@click.option(
    "--url",
    envvar="DISTILLGUARD_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The running gateway (or $DISTILLGUARD_URL).",
)
@click.option("--tier", default=None, help="Only accounts in this tier.")
@click.option("--all", "show_all", is_flag=True, help="Include accounts in the normal tier.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def accounts(ctx: click.Context, url: str, tier: str | None, show_all: bool, as_json: bool) -> None:
    """What the harvest monitor sees: accounts by risk, with tier and reasons.

    Reads the running gateway's admin API, with the token in $DISTILLGUARD_ADMIN_TOKEN.
    Without --all, accounts in the normal tier are left out.
    """
    ctx.obj = _AccountsState(ctx.obj, url)
    if ctx.invoked_subcommand is not None:
        return
    query = f"?tier={tier}" if tier else ""
    rows = _admin_request(url, "GET", f"/v1/admin/accounts{query}")["data"]
    if not show_all and tier is None:
        rows = [row for row in rows if row["tier"] != "normal"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no accounts above the normal tier" if not show_all else "no accounts yet")
        return
    click.echo(f"{'key id':<14} {'tenant':<16} {'tier':<9} {'score':>6} {'requests':>9} reasons")
    for row in rows:
        ring = f" ring {row['ring']}" if row["ring"] is not None else ""
        tier_shown = row["tier"] + ("*" if row["pinned"] else "")
        click.echo(
            f"{row['account']:<14} {row['tenant']:<16} {tier_shown:<9} "
            f"{row['score']:>6.3f} {row['requests']:>9} {'; '.join(row['reasons'])}{ring}"
        )


@accounts.command("rings")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def accounts_rings(state: _AccountsState, as_json: bool) -> None:
    """Groups of accounts that share templates, timing and prompt sources."""
    rows = _admin_request(state.url, "GET", "/v1/admin/rings")["data"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no rings")
        return
    for row in rows:
        click.echo(
            f"ring {row['ring']}: {len(row['accounts'])} accounts, {row['requests']} requests, "
            f"score {row['score']:.3f}: {'; '.join(row['reasons'])}"
        )
        click.echo("  " + " ".join(row["accounts"]))


@accounts.command("set-tier")
@click.argument("key_id")
@click.argument("tier", type=click.Choice(["normal", "watch", "throttle", "block"]))
@click.pass_obj
def accounts_set_tier(state: _AccountsState, key_id: str, tier: str) -> None:
    """Pin a key's tier (an operator's decision; "normal" clears a false alarm)."""
    _admin_request(state.url, "POST", f"/v1/admin/accounts/{key_id}/tier", {"tier": tier})
    click.echo(f"{key_id}: pinned to {tier}")


@accounts.command("history")
@click.argument("key_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def accounts_history(state: _AccountsState, key_id: str | None, as_json: bool) -> None:
    """Every tier change, with the score and reasons at the time (read from the store)."""
    from distillguard.monitor.history import TierHistory

    changes = TierHistory(state.parent.connect).changes(key_id)
    if as_json:
        click.echo(json.dumps(changes, indent=2))
        return
    for change in changes:
        who = "operator" if change["pinned"] else f"score {change['score']:.3f}"
        click.echo(
            f"{change['changed_at']} {change['key_id']} ({change['tenant']}): "
            f"{change['previous']} -> {change['tier']} after {change['requests']} requests, "
            f"{who}: {'; '.join(change['reasons'])}"  # type: ignore[arg-type]
        )


@dataclass
class _AccountsState:
    parent: _State
    url: str


def _admin_token() -> str | None:
    token = os.environ.get("DISTILLGUARD_ADMIN_TOKEN")
    if token is not None and len(token) < 16:
        raise ConfigError("DISTILLGUARD_ADMIN_TOKEN must be at least 16 characters")
    return token


def _admin_request(
    url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    from distillguard.errors import require

    require("httpx", "gateway")
    import httpx

    token = _admin_token()
    if token is None:
        raise ConfigError("set DISTILLGUARD_ADMIN_TOKEN to the gateway's admin token")
    try:
        response = httpx.request(
            method,
            url.rstrip("/") + path,
            json=body,
            headers={"authorization": f"Bearer {token}"},
            timeout=30.0,
        )
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the gateway at {url}: {exc}") from None
    try:
        payload = response.json()
    except ValueError:
        raise ConfigError(
            f"the gateway at {url} answered {response.status_code} without JSON"
        ) from None
    if response.status_code >= 400:
        message = payload.get("error", {}).get("message", response.text)
        raise ConfigError(f"the gateway refused ({response.status_code}): {message}")
    return dict(payload)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@model_option
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True)
@click.option(
    "--no-store-text", is_flag=True, help="Do not keep prompt and output text in the usage log."
)
@click.option("--tenant-rpm", type=int, default=None, help="Requests per minute per tenant.")
@click.option("--tenant-tpm", type=int, default=None, help="Tokens per minute per tenant.")
@click.option(
    "--upstream",
    default=None,
    help="Proxy this OpenAI-compatible base URL (e.g. http://host:8001/v1) instead of a local "
    "model; its outputs cannot be watermarked. Its key is read from DISTILLGUARD_UPSTREAM_API_KEY.",
)
@click.option("--no-monitor", is_flag=True, help="Do not run the harvest monitor.")
@click.option(
    "--policy",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file: what each tier does and the score thresholds (docs/deployment.md).",
)
@click.option(
    "--risk-model",
    type=click.Path(path_type=Path),
    default=None,
    help="Risk model JSON (benchmarks/monitor.py --write-model). Default: the shipped one.",
)
@click.option(
    "--redis",
    envvar="DISTILLGUARD_REDIS_URL",
    default=None,
    help="Redis URL (redis://host:6379/0) for rate limits and monitor state shared by every "
    "replica [env DISTILLGUARD_REDIS_URL]. Default: in this process's memory.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Gateway processes on this port (more than 1 needs --redis).",
)
@click.option(
    "--limiter-fail-open",
    is_flag=True,
    help="When Redis is unreachable, admit requests uncounted instead of answering 503.",
)
@click.pass_obj
def serve(
    state: _State,
    host: str,
    port: int,
    model_dir: Path | None,
    max_body_bytes: int,
    no_store_text: bool,
    tenant_rpm: int | None,
    tenant_tpm: int | None,
    upstream: str | None,
    no_monitor: bool,
    policy: Path | None,
    risk_model: Path | None,
    redis: str | None,
    workers: int,
    limiter_fail_open: bool,
) -> None:
    """Run the OpenAI-compatible gateway (the embedded model unless --model or --upstream).

    State lives in the data directory (SQLite), or in PostgreSQL with --database. Several
    processes (--workers N, or replicas on other machines) share one PostgreSQL or SQLite
    store and one Redis: limits stay exact across all of them, the audit log stays one chain,
    and the monitor sees all traffic. On first start it creates the master secret
    and a demo API key, printed once. The harvest monitor watches every key and moves harvesters
    up the tiers (watch, throttle, block). The admin API (/v1/admin/...) is on when
    DISTILLGUARD_ADMIN_TOKEN is set; requests to it carry that token as a bearer token.
    """
    from distillguard.errors import require

    require("uvicorn", "gateway")
    import uvicorn

    from distillguard.gateway.server import build_server, prepare_home

    if workers > 1 and not redis:
        raise ConfigError(
            "--workers above 1 needs --redis: limits and the monitor must be shared by the workers"
        )
    options: dict[str, Any] = {
        "home": state.home,
        "model": model_dir,
        "max_body_bytes": max_body_bytes,
        "store_text": not no_store_text,
        "upstream": upstream,
        "upstream_api_key": os.environ.get("DISTILLGUARD_UPSTREAM_API_KEY"),
        "tenant_limits": _tenant_limits(tenant_rpm, tenant_tpm),
        "monitor": not no_monitor,
        "policy": policy,
        "risk_model": risk_model,
        "admin_token": _admin_token(),
        "database": state.database,
        "redis": redis,
        "limiter_fail_open": limiter_fail_open,
    }
    if workers > 1:
        from distillguard.gateway.workers import serve_workers

        demo_key = prepare_home(state.home, state.database)
        if demo_key is not None:
            click.echo(f"demo API key (tenant demo, shown once): {demo_key}")
        click.echo(f"serving on http://{host}:{port}/v1 with {workers} workers", err=True)
        serve_workers(options, host, port, workers)
        return
    server = build_server(**options)
    if server.demo_key is not None:
        click.echo(f"demo API key (tenant demo, shown once): {server.demo_key}")
    names = ", ".join(server.gateway.model_names)
    click.echo(f"serving {names} on http://{host}:{port}/v1", err=True)
    try:
        uvicorn.run(server.gateway.app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        server.close()


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
    with closing(state.connect()) as connection:
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


@main.group()
def model() -> None:
    """Build and describe the embedded model."""


@model.command("train")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("distillguard-model"),
    show_default=True,
    help="Directory to write the Hugging Face model to.",
)
@click.option(
    "--steps", type=int, default=None, help="Training steps (default: the shipped model's)."
)
@click.option("--seed", type=int, default=None, help="Random seed (default: the shipped model's).")
@click.option("--tiny", is_flag=True, help="A configuration that trains in seconds (for tests).")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from a checkpoint in --output.",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."
)
def model_train(
    output: Path, steps: int | None, seed: int | None, tiny: bool, resume: bool, progress: bool
) -> None:
    """Train the embedded model from this Python's standard-library prose.

    Builds the corpus (docstrings and pydoc topics), trains a byte-level BPE tokenizer and a
    small GPT-2, and writes a Hugging Face model directory with a card (card.json) giving its
    validation perplexity. The defaults reproduce the model shipped in the package.
    """
    from dataclasses import replace

    from distillguard.engine.train import TrainConfig, train_model

    config = TrainConfig.tiny() if tiny else TrainConfig()
    if steps is not None:
        config = replace(config, steps=steps)
    if seed is not None:
        config = replace(config, seed=seed)
    result = train_model(output, config, resume=resume, progress=progress)
    click.echo(
        f"trained {result.parameters:,} parameters in {result.seconds / 60:.1f} min; "
        f"validation perplexity {result.validation_perplexity:.2f}; written to {result.output_dir}"
    )


@model.command("info")
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def model_info(model_dir: Path | None, as_json: bool) -> None:
    """Print a model's card: parameters, corpus hash, validation perplexity, how to reproduce it."""
    from distillguard.engine.model import model_card

    card = model_card(model_dir)
    if as_json:
        click.echo(json.dumps(card, indent=2))
        return
    corpus = card.get("corpus", {})
    rows = [
        ("name", card.get("name")),
        ("parameters", f"{card.get('parameters', 0):,}"),
        ("weights", card.get("weights")),
        ("validation perplexity", card.get("validation_perplexity")),
        ("corpus", corpus.get("source")),
        ("corpus sha256", corpus.get("sha256")),
        ("python", corpus.get("python_version")),
        ("train tokens", f"{corpus.get('train_tokens', 0):,}"),
        (
            "trained",
            f"{card.get('trained_at')} in {card.get('train_seconds')} s "
            f"on {card.get('trained_on')}",
        ),
        ("reproduce", card.get("reproduce")),
    ]
    for name, value in rows:
        click.echo(f"{name:<22} {value}")


@main.command()
@click.argument("prompt")
@model_option
@click.option(
    "--tenant",
    default=None,
    help="Tenant whose watermark to weave in (default: demo, recorded on first use).",
)
@click.option("--no-watermark", is_flag=True, help="Generate without a watermark.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable, up to 4).")
@scheme_parameter_options
@click.option(
    "--detect",
    "run_detection",
    is_flag=True,
    help="Also test the completion for the tenant's watermark.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def generate(
    state: _State,
    prompt: str,
    model_dir: Path | None,
    tenant: str | None,
    no_watermark: bool,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: tuple[str, ...],
    scheme: str,
    gamma: float,
    delta: float,
    context_width: int,
    seeding: str,
    run_detection: bool,
    as_json: bool,
) -> None:
    """Print a watermarked completion of PROMPT (and, with --detect, its detection).

    The key is the tenant's; without --tenant the "demo" tenant is used, and the master secret
    and its key commitment are created on first use.
    """
    from distillguard.engine.engine import Engine
    from distillguard.engine.params import GenerationRequest, SamplingParams
    from distillguard.keys import (
        Keyring,
        derive_tenant_key,
        init_master_secret,
        load_master_secret,
        record_commitment,
    )
    from distillguard.watermark.detector import Detector, log10_to_text

    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
    )
    config = _scheme(scheme, gamma, delta, context_width, seeding)
    with closing(state.connect()) as connection, Engine(model_dir, scheme=config) as engine:
        key = None
        if not no_watermark:
            if tenant is None:
                tenant = "demo"
                master, _ = init_master_secret(state.home)
                record_commitment(connection, derive_tenant_key(master, tenant), engine.scheme)
            else:
                master = load_master_secret(state.home)
            key = Keyring(master, connection)(tenant)
            record_commitment(connection, derive_tenant_key(master, tenant), engine.scheme)
        prepared = engine.prepare(GenerationRequest(prompt, params, watermark_key=key))
        completion = engine.generate_sync(prepared)
        choice = completion.choices[0]
        detection = None
        if run_detection and key is not None:
            document = [*prepared.prompt_ids, *choice.token_ids]
            report = Detector(engine.scheme).detect(
                [document], [key], prompt_lengths=[prepared.prompt_tokens]
            )
            detection = report.total[0]
    if as_json:
        payload: dict[str, Any] = {
            "text": choice.text,
            "finish_reason": choice.finish_reason,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "tenant": tenant if key is not None else None,
            "watermark_key_id": completion.watermark_key_id,
            "fingerprint": completion.fingerprint,
        }
        if detection is not None:
            payload["detection"] = detection.to_dict()
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(choice.text)
    if key is None:
        click.echo("(not watermarked)", err=True)
    elif detection is not None:
        click.echo(
            f"watermark of {tenant} ({key.key_id}): {detection.scored_tokens} tokens scored, "
            f"{detection.score:.0f} green (expected {detection.expected_score:.1f}), "
            f"p = {log10_to_text(detection.log10_p)}",
            err=True,
        )


def _tenant_limits(rpm: int | None, tpm: int | None) -> Any:
    if rpm is None and tpm is None:
        return None
    from distillguard.gateway.ratelimit import Limits

    return Limits(rpm if rpm is not None else 10**9, tpm if tpm is not None else 10**12)


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
