"""`distillguard accounts`: the harvest monitor's view, read from a running gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass

import click

from distillguard.cli.options import State

__all__ = ["accounts"]


@dataclass
class _AccountsState:
    """What the subcommands get: the global options and the gateway's URL."""

    parent: State
    url: str


@click.group(invoke_without_command=True)
@click.option(
    "--url",
    envvar="DISTILLGUARD_URL",
    default="http://127.0.0.1:8001",
    show_default=True,
    help="The running gateway's admin listener (or $DISTILLGUARD_URL).",
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
    from distillguard.gateway.admin_client import AdminClient

    rows = AdminClient.from_env(url).accounts(tier)
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
    from distillguard.gateway.admin_client import AdminClient

    rows = AdminClient.from_env(state.url).rings()
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
    from distillguard.gateway.admin_client import AdminClient

    AdminClient.from_env(state.url).set_tier(key_id, tier)
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
