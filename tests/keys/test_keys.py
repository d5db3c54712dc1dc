"""Master secret, HKDF derivation, key ids and commitments."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from distillguard.config import MASTER_SECRET_ENV
from distillguard.errors import ConfigError, SecretError
from distillguard.keys import (
    commit,
    derive_tenant_key,
    hkdf_sha256,
    init_master_secret,
    load_master_secret,
    record_commitment,
    recorded_commitments,
)
from distillguard.keys.commitment import verify_commitment
from distillguard.keys.secret import SECRET_FILE, MasterSecret
from distillguard.store import connect
from distillguard.watermark import SchemeConfig


@pytest.fixture(autouse=True)
def no_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_SECRET_ENV, raising=False)


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_master_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    secret, created = init_master_secret(tmp_path)
    assert created
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = init_master_secret(tmp_path)
    assert not created_again
    assert again.material == secret.material
    assert len(secret.material) == 32


def test_there_is_no_default_secret(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="keys init"):
        load_master_secret(tmp_path)
    assert not (tmp_path / SECRET_FILE).exists()


def test_a_world_readable_secret_is_refused(tmp_path: Path) -> None:
    init_master_secret(tmp_path)
    os.chmod(tmp_path / SECRET_FILE, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_master_secret(tmp_path)


def test_secret_from_environment_is_used_and_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MASTER_SECRET_ENV, "ab" * 32)
    secret = load_master_secret(tmp_path)
    assert secret.material == bytes.fromhex("ab" * 32)
    assert not (tmp_path / SECRET_FILE).exists()
    monkeypatch.setenv(MASTER_SECRET_ENV, "ab" * 8)
    with pytest.raises(SecretError, match="at least 256"):
        load_master_secret(tmp_path)
    monkeypatch.setenv(MASTER_SECRET_ENV, "not hex")
    with pytest.raises(SecretError, match="hex"):
        load_master_secret(tmp_path)


def test_tenant_keys_differ_by_tenant_and_version_and_never_print() -> None:
    master = MasterSecret(bytes(range(32)), "test")
    first = derive_tenant_key(master, "acme", 1)
    assert derive_tenant_key(master, "acme", 1) == first
    others = [derive_tenant_key(master, "acme", 2), derive_tenant_key(master, "globex", 1)]
    assert len({first.material, *(key.material for key in others)}) == 3
    assert len(first.material) * 8 >= 128
    assert first.material.hex() not in repr(first)
    assert first.material.hex() not in first.key_id
    assert first.material.hex() not in repr(first.watermark_key())
    with pytest.raises(ConfigError):
        derive_tenant_key(master, "", 1)


def test_commitment_is_recorded_once_and_verifies(tmp_path: Path) -> None:
    master = MasterSecret(bytes(range(32)), "test")
    key = derive_tenant_key(master, "acme")
    scheme = SchemeConfig().bind(4096, "sha256:tok")
    connection = connect(tmp_path)
    record = record_commitment(connection, key, scheme)
    assert record_commitment(connection, key, scheme) == record
    assert recorded_commitments(connection, tenant="acme") == [record]
    assert verify_commitment(key, record)
    assert not verify_commitment(derive_tenant_key(master, "acme", 2), record)
    # the commitment binds the creation time and the scheme
    assert commit(key, scheme, "2020-01-01T00:00:00Z").commitment != record.commitment
    assert (
        commit(key, SchemeConfig(gamma=0.5).bind(4096), record.created_at).commitment
        != record.commitment
    )
