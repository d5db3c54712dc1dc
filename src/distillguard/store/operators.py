"""Operators: the named people who sign in to the console, each with a role and a password.

A password is kept only as a scrypt hash (RFC 7914) with its own random salt and the cost
parameters it was made with, tagged with the algorithm so that a later cost or algorithm can
join without breaking old hashes:

    scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>

Checking a password costs about as much as making one (tens of milliseconds, and 16 MiB),
which is the point: a stolen table cannot be guessed at speed. Unknown names are checked
against a dummy hash, so that the time taken does not tell which names exist.

Roles, each allowing what the one before does: `viewer` reads every page; `operator` also
changes tiers, decides the review queue and starts audits; `admin` also sets budgets.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from distillguard.errors import InputError, KeyNotFoundError
from distillguard.store.base import Connection

__all__ = [
    "ROLES",
    "Operator",
    "check_password",
    "create_operator",
    "disable_operator",
    "find_credentials",
    "find_operator",
    "hash_password",
    "list_operators",
    "password_matches",
    "role_allows",
    "set_password",
]

ROLES = ("viewer", "operator", "admin")  # each allows what the ones before it do
MIN_PASSWORD_LENGTH = 12
_SCRYPT_N = 2**14  # 16 MiB of memory per check with r = 8 (128 * n * r bytes)
_SCRYPT_R = 8
_SCRYPT_P = 1
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    created_at: str
    disabled_at: str | None = None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


def role_allows(role: str, needed: str) -> bool:
    """Whether `role` may do what `needed` may (roles are ordered: viewer < operator < admin)."""
    if role not in ROLES or needed not in ROLES:
        raise ValueError(f"unknown role; roles are {', '.join(ROLES)}")
    return ROLES.index(role) >= ROLES.index(needed)


def hash_password(password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R) -> str:
    """The tagged scrypt hash of `password` under a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, _SCRYPT_P)
    return f"scrypt${n}${r}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=32
    )


def _verify(password: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    digest = _scrypt(password, bytes.fromhex(parts[4]), n, r, p)
    return hmac.compare_digest(digest, bytes.fromhex(parts[5]))


# Checked when the name is unknown, so that unknown and known names take the same time.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARACTERS:
        raise InputError(
            "an operator name is 1 to 64 characters of a-z, 0-9 and . _ - @ (lower case)"
        )
    return name


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def create_operator(connection: Connection, name: str, role: str, password: str) -> Operator:
    """Add an operator; an existing name is refused (use `set_password` to change one)."""
    _check_name(name)
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    _check_new_password(password)
    created_at = _now()
    with connection:
        if find_operator(connection, name) is not None:
            raise InputError(f"operator {name!r} exists already")
        connection.execute(
            "INSERT INTO operators (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
            (name, role, hash_password(password), created_at),
        )
    return Operator(name, role, created_at)


def set_password(connection: Connection, name: str, password: str) -> None:
    _check_new_password(password)
    with connection:
        updated = connection.execute(
            "UPDATE operators SET password_hash = ? WHERE name = ?", (hash_password(password), name)
        )
        if updated.rowcount == 0:
            raise KeyNotFoundError(f"no operator named {name!r}")


def disable_operator(connection: Connection, name: str) -> None:
    """Disable an operator and end their sessions (the row stays: actions keep their name)."""
    with connection:
        updated = connection.execute(
            "UPDATE operators SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL",
            (_now(), name),
        )
        if updated.rowcount == 0 and find_operator(connection, name) is None:
            raise KeyNotFoundError(f"no operator named {name!r}")
        connection.execute("DELETE FROM operator_sessions WHERE operator = ?", (name,))


def find_operator(connection: Connection, name: str) -> Operator | None:
    row = connection.execute(
        "SELECT name, role, created_at, disabled_at FROM operators WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else Operator(row[0], row[1], row[2], row[3])


def list_operators(connection: Connection) -> list[Operator]:
    rows = connection.execute(
        "SELECT name, role, created_at, disabled_at FROM operators ORDER BY name"
    ).fetchall()
    return [Operator(row[0], row[1], row[2], row[3]) for row in rows]


def find_credentials(connection: Connection, name: str) -> tuple[Operator, str] | None:
    """The operator `name` and their stored hash (to check outside a database lock)."""
    row = connection.execute(
        "SELECT name, role, created_at, disabled_at, password_hash FROM operators WHERE name = ?",
        (name,),
    ).fetchone()
    return None if row is None else (Operator(row[0], row[1], row[2], row[3]), str(row[4]))


def password_matches(password: str, credentials: tuple[Operator, str] | None) -> Operator | None:
    """The active operator whose `credentials` `password` matches; None otherwise, in the
    same time whether the name existed or not (a dummy hash is checked instead)."""
    stored = credentials[1] if credentials is not None else _DUMMY_HASH
    matches = _verify(password, stored)
    if credentials is None or not matches or not credentials[0].active:
        return None
    return credentials[0]


def check_password(connection: Connection, name: str, password: str) -> Operator | None:
    """The active operator `name` when `password` is theirs; else None, in the same time."""
    return password_matches(password, find_credentials(connection, name))
