"""Tenant -> watermark key, for tenants whose key commitment is recorded."""

from __future__ import annotations

from distillguard.errors import KeyNotFoundError
from distillguard.keys.commitment import recorded_commitments
from distillguard.keys.derive import derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.store.base import Connection
from distillguard.watermark.key import WatermarkKey

__all__ = ["Keyring"]


class Keyring:
    """Derives a tenant's watermark key, but only for a tenant recorded in the store.

    An unknown tenant raises KeyNotFoundError instead of silently getting a fresh key whose
    commitment was never recorded (and which no report could later vouch for).
    """

    def __init__(self, master: MasterSecret, connection: Connection) -> None:
        self._master = master
        self._connection = connection
        self._cache: dict[tuple[str, int], WatermarkKey] = {}

    def __call__(self, tenant: str, version: int = 1) -> WatermarkKey:
        cached = self._cache.get((tenant, version))
        if cached is not None:
            return cached
        recorded = [
            item
            for item in recorded_commitments(self._connection, tenant=tenant)
            if item.key_version == version
        ]
        if not recorded:
            raise KeyNotFoundError(
                f"unknown tenant {tenant!r}: record its key first "
                f"(distillguard keys tenant {tenant})"
            )
        key = derive_tenant_key(self._master, tenant, version).watermark_key()
        self._cache[(tenant, version)] = key
        return key
