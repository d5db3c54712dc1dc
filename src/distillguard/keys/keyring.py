"""Tenant -> watermark key, for tenants whose key commitment is recorded (under a scheme)."""

from __future__ import annotations

from distillguard.errors import FingerprintMismatchError, KeyNotFoundError
from distillguard.keys.commitment import recorded_commitments
from distillguard.keys.derive import derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.store.base import Connection
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["Keyring", "recorded_tenant_keys"]


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


def recorded_tenant_keys(
    master: MasterSecret,
    connection: Connection,
    tenants: tuple[str, ...],
    key_version: int,
    config: SchemeConfig,
) -> list[WatermarkKey]:
    """The keys of `tenants` (default: every recorded tenant), each recorded under `config`.

    Raises KeyNotFoundError for a tenant with no such key version recorded, and
    FingerprintMismatchError for one keyed under another scheme: detecting under the wrong
    scheme would report noise that looks like a clean result.
    """
    recorded = recorded_commitments(connection)
    names = list(dict.fromkeys(tenants)) or sorted({item.tenant for item in recorded})
    if not names:
        raise KeyNotFoundError(
            "no tenants recorded: pass --tenant or run `distillguard keys tenant`"
        )
    for name in names:
        schemes = {
            item.fingerprint
            for item in recorded
            if item.tenant == name and item.key_version == key_version
        }
        if not schemes:
            raise KeyNotFoundError(
                f"unknown tenant {name!r}: no key version {key_version} recorded for it"
            )
        # A key recorded before it was bound to a tokenizer commits to the scheme parameters
        # only; it is accepted for any vocabulary with those parameters.
        if config.fingerprint not in schemes and config.unbound().fingerprint not in schemes:
            raise FingerprintMismatchError(
                f"tenant {name!r} was keyed under scheme {sorted(schemes)[0]}, not "
                f"{config.fingerprint}: pass the scheme options and tokenizer its key was "
                "recorded with"
            )
    return [derive_tenant_key(master, name, key_version).watermark_key() for name in names]
