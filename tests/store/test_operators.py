"""Operators: passwords kept as scrypt hashes, roles ordered, disabled operators refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from distillguard.errors import InputError, KeyNotFoundError
from distillguard.store import Connection
from distillguard.store.operators import (
    check_password,
    create_operator,
    disable_operator,
    hash_password,
    list_operators,
    role_allows,
    set_password,
)

PASSWORD = "correct horse battery"


def test_a_password_is_kept_only_as_a_tagged_salted_hash(
    opener: Callable[[], Connection],
) -> None:
    connection = opener()
    create_operator(connection, "ada", "operator", PASSWORD)
    stored = connection.execute("SELECT password_hash FROM operators").fetchone()[0]
    assert stored.startswith("scrypt$16384$8$1$")
    assert PASSWORD not in stored
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # a fresh salt each time


def test_only_the_right_password_of_an_active_operator_signs_in(
    opener: Callable[[], Connection],
) -> None:
    connection = opener()
    create_operator(connection, "ada", "admin", PASSWORD)
    operator = check_password(connection, "ada", PASSWORD)
    assert operator is not None and operator.role == "admin"
    assert check_password(connection, "ada", PASSWORD + "!") is None
    assert check_password(connection, "nobody", PASSWORD) is None
    disable_operator(connection, "ada")
    assert check_password(connection, "ada", PASSWORD) is None
    assert not list_operators(connection)[0].active


def test_a_new_password_replaces_the_old(opener: Callable[[], Connection]) -> None:
    connection = opener()
    create_operator(connection, "ada", "viewer", PASSWORD)
    set_password(connection, "ada", "another long password")
    assert check_password(connection, "ada", PASSWORD) is None
    assert check_password(connection, "ada", "another long password") is not None
    with pytest.raises(KeyNotFoundError):
        set_password(connection, "nobody", "another long password")


@pytest.mark.parametrize(
    ("name", "role", "password"),
    [
        ("Ada", "viewer", PASSWORD),  # upper case
        ("ada lovelace", "viewer", PASSWORD),
        ("ada", "root", PASSWORD),
        ("ada", "viewer", "short"),
    ],
)
def test_bad_names_roles_and_short_passwords_are_refused(
    opener: Callable[[], Connection], name: str, role: str, password: str
) -> None:
    with pytest.raises(InputError):
        create_operator(opener(), name, role, password)


def test_a_name_is_created_once(opener: Callable[[], Connection]) -> None:
    connection = opener()
    create_operator(connection, "ada", "viewer", PASSWORD)
    with pytest.raises(InputError, match="exists"):
        create_operator(connection, "ada", "admin", PASSWORD)


def test_roles_are_ordered() -> None:
    assert role_allows("admin", "operator") and role_allows("operator", "viewer")
    assert not role_allows("viewer", "operator") and not role_allows("operator", "admin")
