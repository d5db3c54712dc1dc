"""Assembling and running the gateway: `distillguard serve`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distillguard.engine.engine import Engine
from distillguard.gateway.apikeys import KeyStore, create_api_key, list_api_keys
from distillguard.gateway.app import Gateway
from distillguard.gateway.audit import AuditLog
from distillguard.gateway.ratelimit import Limits
from distillguard.keys import derive_tenant_key, init_master_secret, record_commitment
from distillguard.store import connect
from distillguard.watermark.key import WatermarkKey

__all__ = ["Server", "build_server"]


@dataclass
class Server:
    gateway: Gateway
    engine: Engine
    audit: AuditLog
    connection: sqlite3.Connection
    demo_key: str | None  # the demo API key, when this start created it (shown once)

    def close(self) -> None:
        """Flush the audit log and stop the engine."""
        self.audit.close()
        self.engine.close()
        self.connection.close()


def _watermark_keys(home: Path, engine: Engine) -> Callable[[str], WatermarkKey | None]:
    """Tenant -> its watermark key; the commitment is recorded the first time it is used."""
    master, _ = init_master_secret(home)
    connection = connect(home, shared=True)
    cache: dict[str, WatermarkKey] = {}

    def key_for(tenant: str) -> WatermarkKey | None:
        key = cache.get(tenant)
        if key is None:
            derived = derive_tenant_key(master, tenant)
            record_commitment(connection, derived, engine.scheme)
            key = cache[tenant] = derived.watermark_key()
        return key

    return key_for


def build_server(
    home: Path,
    model: Path | None = None,
    *,
    tenant_limits: Limits | None = None,
    max_body_bytes: int = 1 << 20,
    store_text: bool = True,
    demo_rpm: int = 60,
    demo_tpm: int = 100_000,
) -> Server:
    """The gateway on a model, with state in `home`; creates a demo key if there is none."""
    engine = Engine(model)
    connection = connect(home, shared=True)
    demo_key = None
    if not list_api_keys(connection):
        demo_key, _ = create_api_key(connection, "demo", rpm=demo_rpm, tpm=demo_tpm)
    audit = AuditLog(lambda: _audit_connection(home), store_text=store_text)
    gateway = Gateway(
        engine,
        KeyStore(connection),
        audit,
        _watermark_keys(home, engine),
        tenant_limits=tenant_limits,
        max_body_bytes=max_body_bytes,
        store_text=store_text,
    )
    return Server(gateway, engine, audit, connection, demo_key)


def _audit_connection(home: Path) -> sqlite3.Connection:
    return connect(home)
