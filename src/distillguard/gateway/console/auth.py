"""Signing operators in: sessions, failed-login limits and CSRF tokens, kept in the database.

Everything here lives in the store, not in a process's memory, so that with several workers
or replicas any of them serves any operator: a session opened on one is valid on all, a
failed login counts everywhere, and signing out ends the session everywhere.

- A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure behind https);
  the database holds only its SHA-256, so a reader of the database cannot sign in. A session
  ends `lifetime` seconds after it opened, or after `idle` seconds without a request.
- Each session has its own CSRF token, sent back with every change of state (a form field or
  the `x-csrf-token` header) and compared in constant time. The login form, which has no
  session yet, carries a token matched against a cookie of its own (double submit).
- Failed logins are counted per client address and per operator name in a sliding window;
  past either limit, logins are refused (429) until the oldest failure ages out, even with
  the right password, so that a password cannot be guessed at speed from one address, nor a
  name from many.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from distillguard.store.base import Connection
from distillguard.store.operators import Operator

__all__ = ["AuthSettings", "LoginLimits", "Session", "Sessions", "same_token"]


@dataclass(frozen=True)
class AuthSettings:
    lifetime: float = 8 * 3600.0  # seconds a session lasts at most
    idle: float = 30 * 60.0  # seconds without a request before a session ends
    failure_window: float = 15 * 60.0  # failed logins count this long...
    failures_per_address: int = 10  # ...and this many from one address refuse it
    failures_per_name: int = 30  # ...and this many on one name, from anywhere
    touch_every: float = 60.0  # a session's last use is written at most this often


@dataclass(frozen=True)
class Session:
    operator: str
    role: str
    csrf: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


class Sessions:
    """Open, read and close sessions in the store."""

    def __init__(
        self, settings: AuthSettings | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or AuthSettings()
        self._clock = clock

    def open(self, connection: Connection, operator: Operator) -> tuple[str, Session]:
        """A new session for `operator`: the cookie's token (shown once) and the session."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self._clock()
        expires_at = now + self.settings.lifetime
        with connection:
            connection.execute(
                "DELETE FROM operator_sessions WHERE expires_at < ? OR last_seen < ?",
                (now, now - self.settings.idle),
            )
            connection.execute(
                "INSERT INTO operator_sessions (token_hash, operator, csrf, created_at, "
                "expires_at, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
                (_digest(token), operator.name, csrf, now, expires_at, now),
            )
        return token, Session(operator.name, operator.role, csrf, expires_at)

    def read(self, connection: Connection, token: str | None) -> Session | None:
        """The live session of `token`, with the operator's current role; None when there is
        none, it expired, or the operator was disabled since."""
        if not token:
            return None
        digest = _digest(token)
        row = connection.execute(
            "SELECT s.operator, o.role, s.csrf, s.expires_at, s.last_seen, o.disabled_at "
            "FROM operator_sessions s JOIN operators o ON o.name = s.operator "
            "WHERE s.token_hash = ?",
            (digest,),
        ).fetchone()
        if row is None:
            return None
        now = self._clock()
        operator, role, csrf, expires_at, last_seen, disabled_at = row
        if disabled_at is not None or now >= expires_at or now - last_seen >= self.settings.idle:
            self.close(connection, token)
            return None
        if now - last_seen >= self.settings.touch_every:
            with connection:
                connection.execute(
                    "UPDATE operator_sessions SET last_seen = ? WHERE token_hash = ?",
                    (now, digest),
                )
        return Session(operator, role, csrf, float(expires_at))

    def close(self, connection: Connection, token: str) -> None:
        with connection:
            connection.execute(
                "DELETE FROM operator_sessions WHERE token_hash = ?", (_digest(token),)
            )


class LoginLimits:
    """Failed logins per address and per name, in the store, over a sliding window."""

    def __init__(
        self, settings: AuthSettings | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or AuthSettings()
        self._clock = clock

    def retry_after(self, connection: Connection, address: str, name: str) -> float:
        """Seconds until a login from `address` as `name` may be tried (0: now)."""
        window = self.settings.failure_window
        horizon = self._clock() - window
        wait = 0.0
        for subject, limit in (
            (f"address:{address}", self.settings.failures_per_address),
            (f"name:{name}", self.settings.failures_per_name),
        ):
            # the failure that must age out before one more attempt fits under the limit
            row = connection.execute(
                "SELECT failed_at FROM login_failures WHERE subject = ? AND failed_at > ? "
                "ORDER BY failed_at DESC LIMIT 1 OFFSET ?",
                (subject, horizon, limit - 1),
            ).fetchone()
            if row is not None:
                wait = max(wait, float(row[0]) + window - self._clock())
        return wait

    def failed(self, connection: Connection, address: str, name: str) -> None:
        now = self._clock()
        with connection:
            connection.execute(
                "DELETE FROM login_failures WHERE failed_at < ?",
                (now - self.settings.failure_window,),
            )
            for subject in (f"address:{address}", f"name:{name}"):
                connection.execute(
                    "INSERT INTO login_failures (subject, failed_at) VALUES (?, ?)",
                    (subject, now),
                )
