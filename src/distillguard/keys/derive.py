"""Per-tenant watermark keys derived from the master secret with HKDF-SHA256 (RFC 5869)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from distillguard.errors import ConfigError
from distillguard.keys.secret import MasterSecret
from distillguard.watermark.key import WatermarkKey

__all__ = [
    "CHAIN_KEY_VERSION",
    "KEY_BYTES",
    "TenantKey",
    "chain_keys",
    "checkpoint_seed",
    "derive_provider_key",
    "derive_tenant_key",
    "hkdf_sha256",
    "journal_key",
    "key_id_for",
    "monitor_identity_key",
]

KEY_BYTES = 32
_SALT = b"distillguard/tenant-watermark-key/v1"
_CHAIN_SALT = b"distillguard/audit-chain-key/v1"
_CHECKPOINT_SALT = b"distillguard/checkpoint-signing-key/v1"
_JOURNAL_SALT = b"distillguard/audit-journal-key/v1"
_IDENTITY_SALT = b"distillguard/monitor-identity-key/v1"
CHAIN_KEY_VERSION = 1  # the version new audit records are linked with


def hkdf_sha256(input_key: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF with SHA-256: extract then expand (RFC 5869, sec. 2.2 and 2.3)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 output length must be in 1..8160 bytes")
    pseudo_random_key = hmac.new(salt or b"\0" * 32, input_key, hashlib.sha256).digest()
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac.new(
            pseudo_random_key, block + info + bytes([counter]), hashlib.sha256
        ).digest()
        output += block
        counter += 1
    return output[:length]


def key_id_for(material: bytes) -> str:
    """Public identifier of a key: a one-way hash of it, safe to log and print."""
    return "wk_" + hashlib.sha256(b"distillguard/key-id/v1\0" + material).hexdigest()[:24]


@dataclass(frozen=True)
class TenantKey:
    """A tenant's derived watermark key. `material` never appears in repr."""

    tenant: str
    version: int
    key_id: str
    material: bytes = field(repr=False)

    def watermark_key(self) -> WatermarkKey:
        return WatermarkKey(key_id=self.key_id, secret=self.material, tenant=self.tenant)


def derive_tenant_key(master: MasterSecret, tenant: str, version: int = 1) -> TenantKey:
    """HKDF-SHA256(master, info = tenant id and key version) -> 256-bit tenant key."""
    if not tenant or "\0" in tenant:
        raise ConfigError("a tenant id must be a non-empty string without NUL characters")
    if version < 1:
        raise ConfigError("key versions start at 1")
    info = b"tenant\0" + tenant.encode() + b"\0version\0" + str(version).encode()
    material = hkdf_sha256(master.material, _SALT, info, KEY_BYTES)
    return TenantKey(tenant=tenant, version=version, key_id=key_id_for(material), material=material)


def chain_keys(master: MasterSecret, versions: int = CHAIN_KEY_VERSION) -> dict[int, bytes]:
    """The audit chain's HMAC keys, versions 1..`versions`, derived from the master secret."""
    return {
        version: hkdf_sha256(master.material, _CHAIN_SALT, f"chain\0{version}".encode(), KEY_BYTES)
        for version in range(1, versions + 1)
    }


def checkpoint_seed(master: MasterSecret) -> bytes:
    """The 32-byte seed of the Ed25519 key that signs audit checkpoints."""
    return hkdf_sha256(master.material, _CHECKPOINT_SALT, b"ed25519", KEY_BYTES)


def journal_key(master: MasterSecret) -> bytes:
    """The HMAC key of the audit journal's lines (`store/journal.py`)."""
    return hkdf_sha256(master.material, _JOURNAL_SALT, b"journal", KEY_BYTES)


def monitor_identity_key(master: MasterSecret) -> bytes:
    """The HMAC key that hashes what identifies a person (client address, network, user agent,
    organisation) before the harvest monitor sees it (`monitor.identity`). Derived, so that
    tokens match across replicas and restarts, and cannot be reversed by anyone without the
    master secret (an IPv4 address alone has only 2^32 values to try)."""
    return hkdf_sha256(master.material, _IDENTITY_SALT, b"identity", KEY_BYTES)


_PROVIDER_SALT = b"distillguard/provider-watermark-key/v1"
PROVIDER_LAYER = "provider-layer"  # the label the provider layer's key carries in reports


def derive_provider_key(master: MasterSecret, version: int = 1) -> TenantKey:
    """The provider layer's watermark key: one for every account (`SchemeConfig.layering`).

    Its own salt, so that no tenant id derives it; labelled `PROVIDER_LAYER` in reports."""
    if version < 1:
        raise ConfigError("key versions start at 1")
    info = b"provider\0version\0" + str(version).encode()
    material = hkdf_sha256(master.material, _PROVIDER_SALT, info, KEY_BYTES)
    return TenantKey(
        tenant=PROVIDER_LAYER, version=version, key_id=key_id_for(material), material=material
    )
