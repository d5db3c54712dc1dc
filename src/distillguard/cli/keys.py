"""`distillguard keys`: the master secret, tenants' watermark keys and API keys."""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import click

from distillguard.cli.options import State, bound_scheme, scheme_config, scheme_options

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Manage the master secret and per-tenant watermark keys."""


@keys.command("init")
@click.pass_obj
def keys_init(state: State) -> None:
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
    state: State,
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

    config, _ = bound_scheme(
        scheme_config(scheme, gamma, delta, context_width, seeding), tokenizer_path
    )
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
    "--tier",
    default="normal",
    show_default=True,
    help="Policy tier: normal, watch, throttle or block; any other name is refused.",
)
@click.option(
    "--org",
    default=None,
    help="The organisation the key is for. Stored only as a keyed hash (under the master "
    "secret), which the harvest monitor compares across keys; the name is never stored.",
)
@click.option(
    "--meta",
    "meta",
    multiple=True,
    metavar="NAME=VALUE",
    help="Account metadata, repeatable: signup_program=WORD (e.g. education, startup), "
    "stored and shown in clear.",
)
@click.pass_obj
def keys_create(
    state: State,
    tenant: str,
    rpm: int,
    tpm: int,
    daily_tokens: int | None,
    concurrency: int,
    tier: str,
    org: str | None,
    meta: tuple[str, ...],
) -> None:
    """Create an API key for a tenant and print it once (only its salted hash is stored).

    The key's creation time, its organisation (--org, as a keyed hash) and sign-up program
    (--meta signup_program=...) reach the harvest monitor with each of its requests.
    """
    from distillguard.gateway.apikeys import account_metadata, create_api_key, org_token
    from distillguard.gateway.policy import check_tier_name
    from distillguard.keys import load_master_secret

    check_tier_name(tier)  # before the database is touched
    metadata = account_metadata(meta)
    token = org_token(load_master_secret(state.home), org) if org is not None else ""
    with closing(state.connect()) as connection:
        secret, record = create_api_key(
            connection,
            tenant,
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            concurrency=concurrency,
            tier=tier,
            org_token=token,
            signup_program=metadata.get("signup_program", ""),
        )
    click.echo(f"key id  {record.key_id}\ntenant  {record.tenant}\napi key {secret}")
    click.echo("(the API key is shown once; store it now)", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def keys_list(state: State, as_json: bool) -> None:
    """List API keys (ids, tenants, limits; never the keys)."""
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
def keys_revoke(state: State, key_id: str) -> None:
    """Revoke an API key by its id; a running gateway refuses it within 5 seconds."""
    from distillguard.gateway.apikeys import revoke_api_key

    with closing(state.connect()) as connection:
        record = revoke_api_key(connection, key_id)
    click.echo(f"revoked {record.key_id} ({record.tenant}) at {record.revoked_at}")
