"""API keys: created once, shown once, stored as salted hashes, checked in constant time.

A key reads ``dg-<key id>-<secret>``. The key id (12 hex characters) is public and indexes the
row; the secret (256 random bits, base64url) is stored only as SHA-256(salt || secret) with a
per-key random salt. Authentication recomputes the hash and compares with
`hmac.compare_digest`; an unknown key id is hashed against a dummy salt all the same, so the
time taken does not tell which part was wrong.

A key carries its account's metadata for the harvest monitor: the organisation it was created
for, kept only as a keyed-hash token (`org_token`: HMAC under the monitor's identity key, the
token the monitor compares; the name itself is never stored), its sign-up program (a short
word such as "education", in clear) and its creation time.

A key's tier must be one the policy knows: creating a key with any other is refused, and a
stored key whose tier is unknown (written by hand, or by an older version) fails to
authenticate, saying why; it never falls back to some tier's privileges.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import cast

from distillguard.errors import (
    AuthenticationError,
    ConfigError,
    KeyNotFoundError,
    ServiceUnavailableError,
)
from distillguard.gateway.policy import TIER_RANK, check_tier_name
from distillguard.keys.derive import monitor_identity_key
from distillguard.keys.secret import MasterSecret
from distillguard.monitor.identity import IdentityKind, identity_token
from distillguard.store.base import Connection

__all__ = [
    "ACCOUNT_META_KEYS",
    "ApiKey",
    "KeyStore",
    "account_metadata",
    "create_api_key",
    "list_api_keys",
    "org_token",
    "revoke_api_key",
]

# what `--meta k=v` may set: words from a small vocabulary, stored and shown in clear. Free
# text (a name, an e-mail address) has no place here: what identifies someone is hashed.
ACCOUNT_META_KEYS = ("signup_program",)
_META_VALUE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_COLUMNS = (
    "key_id, tenant, rpm, tpm, daily_tokens, concurrency, tier, created_at, revoked_at, "
    "org_token, signup_program"
)

_PREFIX = "dg"
_DUMMY_SALT = b"\0" * 16
_CACHE_SECONDS = 5.0  # a revocation made elsewhere takes effect within this
_CACHE_ENTRIES = 100_000  # key ids cached (known or not) at most


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    rpm: int
    tpm: int
    daily_tokens: int | None
    concurrency: int
    tier: str
    created_at: str
    revoked_at: str | None
    org_token: str = ""  # the organisation's keyed-hash token ("" = none given)
    signup_program: str = ""  # e.g. "education", "startup" ("" = none given)

    @property
    def created_seconds(self) -> float | None:
        """`created_at` in seconds since the epoch (None when it cannot be read)."""
        return _epoch_seconds(self.created_at)


@lru_cache(maxsize=65_536)  # per request, for the monitor's event: parse each key's once
def _epoch_seconds(timestamp: str) -> float | None:
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


def org_token(master: MasterSecret, org: str) -> str:
    """The token an organisation is stored and monitored as: HMAC under the monitor's
    identity key (`keys.derive.monitor_identity_key`) of its name, case and spacing folded
    ("Acme  Labs" and "acme labs" are one organisation)."""
    name = " ".join(org.split()).casefold()
    if not name:
        raise ConfigError("an organisation needs a name (got an empty --org)")
    return identity_token(monitor_identity_key(master), IdentityKind.ORG, name)


def account_metadata(pairs: Iterable[str]) -> dict[str, str]:
    """`k=v` strings (`keys create --meta`) as a dict, each key one of ACCOUNT_META_KEYS and
    each value a short lowercase word; ConfigError, saying which, otherwise."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not equals or not name:
            raise ConfigError(
                f"--meta {pair!r}: expected NAME=VALUE, as in signup_program=education"
            )
        if name not in ACCOUNT_META_KEYS:
            raise ConfigError(
                f"--meta {name!r}: unknown key; known: {', '.join(ACCOUNT_META_KEYS)}"
            )
        if not _META_VALUE.fullmatch(value):
            raise ConfigError(
                f"--meta {name}={value!r}: a value is a word of at most 32 lowercase letters, "
                "digits, '_', '.' or '-'"
            )
        metadata[name] = value
    return metadata


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def create_api_key(
    connection: Connection,
    tenant: str,
    *,
    rpm: int,
    tpm: int,
    daily_tokens: int | None = None,
    concurrency: int = 8,
    tier: str = "normal",
    org_token: str = "",
    signup_program: str = "",
) -> tuple[str, ApiKey]:
    """Create a key for `tenant`; returns (the key to hand out once, its stored record).

    `org_token` is the organisation's token (`org_token()`), never its name; `signup_program`
    a word from `account_metadata`."""
    if not tenant:
        raise ConfigError("a key needs a tenant")
    if rpm < 1 or tpm < 1 or concurrency < 1 or (daily_tokens is not None and daily_tokens < 1):
        raise ConfigError("rpm, tpm, concurrency and daily tokens must be positive")
    check_tier_name(tier)
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    salt = secrets.token_bytes(16)
    if signup_program and not _META_VALUE.fullmatch(signup_program):
        raise ConfigError(f"sign-up program {signup_program!r} is not a short lowercase word")
    record = ApiKey(
        key_id,
        tenant,
        rpm,
        tpm,
        daily_tokens,
        concurrency,
        tier,
        _now(),
        None,
        org_token,
        signup_program,
    )
    with connection:
        connection.execute(
            "INSERT INTO api_keys (key_id, tenant, salt, secret_hash, rpm, tpm, daily_tokens, "
            "concurrency, tier, created_at, org_token, signup_program) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                tenant,
                salt,
                _hash(salt, secret),
                rpm,
                tpm,
                daily_tokens,
                concurrency,
                tier,
                record.created_at,
                org_token,
                signup_program,
            ),
        )
    return f"{_PREFIX}-{key_id}-{secret}", record


def list_api_keys(connection: Connection) -> list[ApiKey]:
    rows = connection.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at")  # noqa: S608
    return [ApiKey(*row) for row in rows]


def revoke_api_key(connection: Connection, key_id: str) -> ApiKey:
    with connection:
        cursor = connection.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (_now(), key_id),
        )
    if cursor.rowcount == 0:
        raise KeyNotFoundError(f"no active API key {key_id!r}")
    return next(key for key in list_api_keys(connection) if key.key_id == key_id)


class KeyStore:
    """Authenticates presented keys against the stored hashes (rows cached after first use).

    On the gateway's event loop (`authenticate_async`) the database is read on a thread, at
    most `lookup_timeout` seconds: a hung or restarting database must not freeze every other
    request. While it cannot answer, a key seen before is served from its (stale) cache entry
    and an unseen one gets ServiceUnavailableError (a 503)."""

    def __init__(self, connection: Connection, *, lookup_timeout: float = 0.5) -> None:
        self._connection = connection
        self._lookup_timeout = lookup_timeout
        # a server's database is read on a thread; SQLite's local file on the loop itself
        self._offload = not getattr(connection, "local", False)
        self._cache: dict[str, tuple[float, tuple[bytes, bytes, ApiKey] | None]] = {}

    def authenticate(self, presented: str | None) -> ApiKey:
        key_id, secret = _parse(presented)
        entry = self._fresh(key_id)
        return _verify(self._fetch(key_id) if entry is _STALE else entry, secret)

    async def authenticate_async(self, presented: str | None) -> ApiKey:
        key_id, secret = _parse(presented)
        entry = self._fresh(key_id)
        if entry is _STALE and not self._offload:
            entry = self._fetch(key_id)
        elif entry is _STALE:
            try:
                entry = await asyncio.wait_for(
                    asyncio.to_thread(self._fetch, key_id), self._lookup_timeout
                )
            except TimeoutError:
                entry = self._stale_or_unavailable(key_id, None)
        return _verify(entry, secret)

    def _fresh(self, key_id: str) -> tuple[bytes, bytes, ApiKey] | object | None:
        """The cached entry (None: no such key), or `_STALE` when it must be read again."""
        cached = self._cache.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        return _STALE

    def _fetch(self, key_id: str) -> tuple[bytes, bytes, ApiKey] | None:
        try:
            row = self._connection.execute(
                f"SELECT salt, secret_hash, {_COLUMNS} FROM api_keys WHERE key_id = ?",  # noqa: S608 - fixed names
                (key_id,),
            ).fetchone()
        except Exception as exc:  # the database is away: a key seen before keeps working
            return self._stale_or_unavailable(key_id, exc)
        entry = None if row is None else (bytes(row[0]), bytes(row[1]), ApiKey(*tuple(row)[2:]))
        if len(self._cache) >= _CACHE_ENTRIES and key_id not in self._cache:
            self._cache.pop(next(iter(self._cache)))  # the oldest: bounded under random ids
        self._cache[key_id] = (time.monotonic(), entry)
        return entry

    def _stale_or_unavailable(
        self, key_id: str, error: Exception | None
    ) -> tuple[bytes, bytes, ApiKey] | None:
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached[1]
        raise ServiceUnavailableError(
            "the key store cannot be reached to check this API key; retry shortly"
        ) from error


_STALE = object()


def _parse(presented: str | None) -> tuple[str, str]:
    """(key id, secret) of a presented key, or AuthenticationError."""
    if not presented:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    parts = presented.split("-", 2)
    if len(parts) != 3 or parts[0] != _PREFIX:
        _hash(_DUMMY_SALT, presented)
        raise AuthenticationError("invalid API key")
    return parts[1], parts[2]


def _verify(entry: object, secret: str) -> ApiKey:
    """The key of a stored entry whose hash matches `secret` (in constant time)."""
    if entry is None or not isinstance(entry, tuple):
        hmac.compare_digest(_hash(_DUMMY_SALT, secret), _DUMMY_SALT * 2)
        raise AuthenticationError("invalid API key")
    salt, stored, key = cast(tuple[bytes, bytes, ApiKey], entry)
    if not hmac.compare_digest(_hash(salt, secret), stored) or key.revoked_at is not None:
        raise AuthenticationError("invalid API key")
    if key.tier not in TIER_RANK:
        raise AuthenticationError(
            f"this key's tier {key.tier!r} is not one of {', '.join(TIER_RANK)}; "
            "the provider must set a known tier before it can be used"
        )
    return key
