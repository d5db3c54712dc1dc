"""`distillguard operators`: the people who sign in to the operator console."""

from __future__ import annotations

import json
import sys
from contextlib import closing

import click

from distillguard.cli.options import State
from distillguard.errors import InputError

__all__ = ["operators"]

_ROLES = ("viewer", "operator", "admin")


@click.group()
def operators() -> None:
    """Named operator accounts for the console (served on the admin listener).

    Roles: viewer reads every page; operator also changes tiers, decides the review queue and
    starts audits; admin also sets tenants' monthly token budgets. Passwords are kept as
    scrypt hashes in the database, so every replica sharing it knows every operator.
    """


def _read_password(password_stdin: bool) -> str:
    """The password from one line of stdin, or prompted twice (never an option: it would
    show in the process list and the shell's history)."""
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InputError("--password-stdin: nothing on stdin")
        return line.rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@operators.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(_ROLES),
    default="viewer",
    show_default=True,
    help="What they may do.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@click.pass_obj
def operators_create(state: State, name: str, role: str, password_stdin: bool) -> None:
    """Create operator NAME (lower case letters, digits and . _ - @) with a password of at
    least 12 characters, prompted for unless --password-stdin."""
    from distillguard.store.operators import create_operator

    password = _read_password(password_stdin)
    with closing(state.connect()) as connection:
        operator = create_operator(connection, name, role, password)
    click.echo(f"created operator {operator.name} ({operator.role})")


@operators.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@click.pass_obj
def operators_password(state: State, name: str, password_stdin: bool) -> None:
    """Set a new password for operator NAME (their sessions stay signed in)."""
    from distillguard.store.operators import set_password

    password = _read_password(password_stdin)
    with closing(state.connect()) as connection:
        set_password(connection, name, password)
    click.echo(f"password of {name} changed")


@operators.command("disable")
@click.argument("name")
@click.pass_obj
def operators_disable(state: State, name: str) -> None:
    """Disable operator NAME and sign them out everywhere. Their past actions keep their name."""
    from distillguard.store.operators import disable_operator

    with closing(state.connect()) as connection:
        disable_operator(connection, name)
    click.echo(f"disabled operator {name}; their sessions are ended")


@operators.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def operators_list(state: State, as_json: bool) -> None:
    """List operators, their roles and whether they are active."""
    from distillguard.store.operators import list_operators

    with closing(state.connect()) as connection:
        found = list_operators(connection)
    if as_json:
        click.echo(json.dumps([vars(item) for item in found], indent=2))
        return
    if not found:
        click.echo("no operators yet: distillguard operators create NAME --role admin")
        return
    for item in found:
        status = "active" if item.active else f"disabled {item.disabled_at}"
        click.echo(f"{item.name:<24} {item.role:<9} created {item.created_at}  {status}")
