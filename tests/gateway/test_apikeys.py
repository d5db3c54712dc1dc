"""API keys and their tiers: a key is created and served only with a tier the policy knows.
While the key store's database is away (issue 16), a key seen before keeps working and a key
never seen gets a 503 in OpenAI's format, never a 500. A key's account metadata is a short
vocabulary in clear and its organisation a keyed token."""

from __future__ import annotations

import asyncio
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.errors import AuthenticationError, ConfigError, ServiceUnavailableError
from distillguard.gateway.apikeys import (
    KeyStore,
    account_metadata,
    create_api_key,
    list_api_keys,
    org_token,
)
from distillguard.keys.secret import MasterSecret
from distillguard.store import connect

from .conftest import Harness


def test_a_key_with_an_unknown_tier_is_never_created(tmp_path: Path) -> None:
    with closing(connect(tmp_path)) as connection:
        with pytest.raises(ConfigError, match="unknown tier 'gold'"):
            create_api_key(connection, "acme", rpm=10, tpm=100, tier="gold")
        assert list_api_keys(connection) == []


def test_a_stored_key_with_an_unknown_tier_does_not_authenticate(tmp_path: Path) -> None:
    # written by hand or by an older version: it fell back to the normal tier's privileges
    with closing(connect(tmp_path)) as connection:
        secret, record = create_api_key(connection, "acme", rpm=10, tpm=100, tier="throttle")
        with connection:
            connection.execute(
                "UPDATE api_keys SET tier = 'gold' WHERE key_id = ?", (record.key_id,)
            )
        with pytest.raises(AuthenticationError, match="tier 'gold'"):
            KeyStore(connection).authenticate(secret)


def test_the_gateway_refuses_a_key_whose_tier_it_does_not_know(harness: Harness) -> None:
    with closing(connect(harness.home)) as connection, connection:
        connection.execute("UPDATE api_keys SET tier = 'unlimited' WHERE tenant = 'acme'")

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            body = {"model": harness.model, "prompt": "The", "max_tokens": 1}
            headers = {"authorization": f"Bearer {harness.keys['acme']}"}
            return await http.post("/v1/completions", json=body, headers=headers)

    response = asyncio.run(send())
    assert response.status_code == 401
    assert "tier 'unlimited'" in response.json()["error"]["message"]


class _Switchable:
    """A connection whose database can be taken away."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.away = False

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if self.away:
            raise ServiceUnavailableError("the database cannot be reached")
        return self.inner.execute(sql, parameters)


def test_a_known_key_survives_the_database_going_away(tmp_path: Path) -> None:
    connection = connect(tmp_path, shared=True)
    known, _ = create_api_key(connection, "acme", rpm=10, tpm=1000)
    unknown, _ = create_api_key(connection, "other", rpm=10, tpm=1000)
    switchable = _Switchable(connection)
    store = KeyStore(switchable)  # type: ignore[arg-type]
    store.authenticate(known)
    store._cache = {k: (-1e9, v[1]) for k, v in store._cache.items()}  # expired: re-read
    switchable.away = True
    assert store.authenticate(known).tenant == "acme"  # the stale entry, while away
    with pytest.raises(ServiceUnavailableError):
        store.authenticate(unknown)
    with pytest.raises(AuthenticationError):  # a wrong secret is still wrong
        store.authenticate(known[:-2] + "xx")


def test_an_unseen_key_while_the_database_is_away_is_a_503(harness: Harness) -> None:
    gateway = harness.gateway
    switchable = _Switchable(gateway.keys._connection)
    gateway.keys._connection = switchable  # type: ignore[assignment]
    switchable.away = True

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {harness.keys['acme']}"},
                json={"model": harness.model, "messages": [{"role": "user", "content": "hi"}]},
            )

    response = asyncio.run(send())
    assert response.status_code == 503  # before: a 500
    assert response.json()["error"]["code"] == "key_store_unavailable"


def test_a_key_store_on_a_thread_bound_sqlite_connection_authenticates(tmp_path: Path) -> None:
    """SQLite opened without `shared` must stay on its thread: its reads stay on the loop
    (before: moved to a thread, every lookup failed and each request got a 503)."""
    connection = connect(tmp_path)  # not shared
    key, _ = create_api_key(connection, "acme", rpm=10, tpm=1000)
    store = KeyStore(connection)
    assert asyncio.run(store.authenticate_async(key)).tenant == "acme"


def test_account_metadata_takes_known_keys_with_short_words() -> None:
    assert account_metadata(["signup_program=Education"]) == {"signup_program": "education"}
    assert account_metadata([]) == {}
    for bad, says in [
        ("signup_program", "expected NAME=VALUE"),
        ("=education", "expected NAME=VALUE"),
        ("email=someone@example.org", "unknown key"),
        ("signup_program=", "a value is a word"),
        ("signup_program=Jane Doe's lab", "a value is a word"),
    ]:
        with pytest.raises(ConfigError, match=says):
            account_metadata([bad])


def test_an_organisation_is_a_keyed_token_folded_for_case_and_spacing() -> None:
    master = MasterSecret(b"m" * 32, "test")
    other = MasterSecret(b"n" * 32, "test")
    token = org_token(master, "Acme  Research")
    assert token == org_token(master, " acme research ") != org_token(master, "Acme")
    assert token != org_token(other, "Acme Research")  # without the secret, no guess is tested
    assert "acme" not in token.lower() and len(token) == 16
    with pytest.raises(ConfigError, match="empty --org"):
        org_token(master, "  ")
