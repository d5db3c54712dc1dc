"""A client of a running gateway's admin API (`distillguard.gateway.admin`).

Every request carries the admin token as a bearer token. Anything that keeps an answer from
coming back (the gateway unreachable, a reply without JSON, a refusal) raises ConfigError
with one readable line: to an operator, each means the URL or the token is wrong.
"""

from __future__ import annotations

import os
from typing import Any

from distillguard.errors import ConfigError, require

__all__ = ["ADMIN_TOKEN_ENV", "AdminClient", "admin_token_from_env"]

ADMIN_TOKEN_ENV = "DISTILLGUARD_ADMIN_TOKEN"  # noqa: S105 - a variable name
_MIN_TOKEN_LENGTH = 16


def admin_token_from_env() -> str | None:
    """The admin token in $DISTILLGUARD_ADMIN_TOKEN; None when it is not set."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token is not None and len(token) < _MIN_TOKEN_LENGTH:
        raise ConfigError(f"{ADMIN_TOKEN_ENV} must be at least {_MIN_TOKEN_LENGTH} characters")
    return token


class AdminClient:
    """The admin API of the gateway at `url` (its base, without /v1), as `token`'s holder."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        require("httpx", "gateway")
        self.url = url
        self._token = token
        self._timeout = timeout

    @classmethod
    def from_env(cls, url: str) -> AdminClient:
        """A client with the token in $DISTILLGUARD_ADMIN_TOKEN, which must be set."""
        require("httpx", "gateway")
        token = admin_token_from_env()
        if token is None:
            raise ConfigError(f"set {ADMIN_TOKEN_ENV} to the gateway's admin token")
        return cls(url, token)

    def accounts(self, tier: str | None = None) -> list[dict[str, Any]]:
        """Accounts by risk, each with its tier and reasons; only `tier`'s when given."""
        query = f"?tier={tier}" if tier else ""
        return list(self.request("GET", f"/v1/admin/accounts{query}")["data"])

    def rings(self) -> list[dict[str, Any]]:
        """Groups of accounts that share templates, timing and prompt sources."""
        return list(self.request("GET", "/v1/admin/rings")["data"])

    def set_tier(self, key_id: str, tier: str) -> dict[str, Any]:
        """Pin `key_id`'s tier; the gateway's answer."""
        return self.request("POST", f"/v1/admin/accounts/{key_id}/tier", {"tier": tier})

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON object the gateway answers to `method` `path` (with `body` as JSON)."""
        import httpx

        try:
            response = httpx.request(
                method,
                self.url.rstrip("/") + path,
                json=body,
                headers={"authorization": f"Bearer {self._token}"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot reach the gateway at {self.url}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            raise ConfigError(
                f"the gateway at {self.url} answered {response.status_code} without JSON"
            ) from None
        if response.status_code >= 400:
            message = payload.get("error", {}).get("message", response.text)
            raise ConfigError(f"the gateway refused ({response.status_code}): {message}")
        return dict(payload)
