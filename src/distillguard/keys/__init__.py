"""Secrets and per-tenant watermark keys.

The master secret is created on first use (a 0600 file in the data directory) or read from
``DISTILLGUARD_MASTER_SECRET``; there is no built-in default. Tenant keys are derived from it
with HKDF-SHA256 over (tenant id, key version). Each key has a public id and, per scheme, a
commitment (SHA-256 over key material, scheme fingerprint and creation time) recorded in the
store, so that a later report can show the key existed before a suspect model did.
"""

from distillguard.keys.commitment import (
    KeyCommitment,
    commit,
    record_commitment,
    recorded_commitments,
)
from distillguard.keys.derive import TenantKey, derive_tenant_key, hkdf_sha256
from distillguard.keys.keyring import Keyring
from distillguard.keys.secret import MasterSecret, init_master_secret, load_master_secret

__all__ = [
    "KeyCommitment",
    "Keyring",
    "MasterSecret",
    "TenantKey",
    "commit",
    "derive_tenant_key",
    "hkdf_sha256",
    "init_master_secret",
    "load_master_secret",
    "record_commitment",
    "recorded_commitments",
]
