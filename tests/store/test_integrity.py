"""An insider with the database cannot quietly edit the audit trail: each way of trying fails
verification, naming what was done, and an untouched log (purges included) verifies."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import zlib
from pathlib import Path

import pytest

from distillguard.keys.derive import chain_keys
from distillguard.keys.secret import MasterSecret
from distillguard.store import connect
from distillguard.store.audit import AuditLog
from distillguard.store.chain import GENESIS, ChainKey
from distillguard.store.checkpoint import read_anchor
from distillguard.store.integrity import (
    LogVerification,
    anchor_checkpoint,
    current_chain_key,
    verify_log,
)
from distillguard.store.retention import purge_text
from distillguard.store.usage import UsageRecord


def record(index: int, created_at: str = "2026-11-30T00:00:00Z") -> UsageRecord:
    return UsageRecord(
        f"req_{index}", created_at, "acme", "k", "m", "completions", 200, "ok", 3, 5, 1.0,
        None, None, {"n": 1}, f"prompt {index}", f'["output {index}"]',
    )  # fmt: skip


@pytest.fixture
def master() -> MasterSecret:
    return MasterSecret(secrets.token_bytes(32), "test")


def write(home: Path, master: MasterSecret, count: int, key: ChainKey | None = None) -> None:
    log = AuditLog(lambda: connect(home), chain_key=key or current_chain_key(master))
    for index in range(count):
        log.append(record(index))
    log.close()


def verify(home: Path, master: MasterSecret) -> LogVerification:
    with connect(home) as connection:
        return verify_log(connection, master, home / "anchor.jsonl")


def anchor(home: Path, master: MasterSecret) -> None:
    with connect(home) as connection:
        anchor_checkpoint(connection, master, home / "anchor.jsonl")


def tamper(home: Path, *statements: str) -> None:
    with sqlite3.connect(home / "distillguard.db") as connection:
        for statement in statements:
            connection.execute(statement)


def test_an_untouched_log_with_a_purge_verifies(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 5)
    anchor(tmp_path, master)
    with connect(tmp_path) as connection:
        assert purge_text(connection, "2026-12-01T00:00:00Z", current_chain_key(master)) == 5
    result = verify(tmp_path, master)
    assert result.ok, result.failure()
    assert (result.chain.records, result.chain.keyed, result.chain.purges) == (6, 6, 1)
    assert result.checkpoints.checked == 1 and result.checkpoints.unanchored == 1


def test_deleting_the_newest_records_after_a_checkpoint_fails(
    tmp_path: Path, master: MasterSecret
) -> None:
    write(tmp_path, master, 5)
    anchor(tmp_path, master)  # as `serve` does when it stops
    tamper(
        tmp_path,
        "DELETE FROM audit WHERE seq >= 4",
        "DELETE FROM usage WHERE request_id IN ('req_3', 'req_4')",
    )
    result = verify(tmp_path, master)
    assert result.chain.ok  # the rest of the chain is intact: only the anchor can tell
    assert "no longer holds its head record" in (result.failure() or "")


def test_a_usage_row_without_its_audit_record_fails(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 3)
    tamper(
        tmp_path,
        "INSERT INTO usage SELECT 'req_forged', created_at, tenant, key_id, model, endpoint, "
        "status, outcome, prompt_tokens, completion_tokens, latency_ms, watermark_key_id, "
        "fingerprint, parameters, prompt_text, output_text FROM usage WHERE request_id = 'req_0'",
    )
    failure = verify(tmp_path, master).failure() or ""
    assert "req_forged" in failure and "has no audit record" in failure


def test_texts_blanked_outside_any_purge_fail(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 3)
    tamper(
        tmp_path,
        "UPDATE usage SET prompt_text = NULL, output_text = NULL WHERE request_id = 'req_1'",
    )
    assert "blanked outside any purge" in (verify(tmp_path, master).failure() or "")


def test_a_null_output_on_its_own_fails_instead_of_crashing(
    tmp_path: Path, master: MasterSecret
) -> None:
    write(tmp_path, master, 3)
    tamper(tmp_path, "UPDATE usage SET output_text = NULL WHERE request_id = 'req_2'")
    assert "one of its texts was blanked" in (verify(tmp_path, master).failure() or "")


def test_a_chain_recomputed_without_the_key_fails(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 3)
    anchor(tmp_path, master)
    tamper(tmp_path, "UPDATE usage SET prompt_tokens = 99 WHERE request_id = 'req_1'")
    with sqlite3.connect(tmp_path / "distillguard.db") as connection:
        # the insider recomputes the records and relinks them, as the unkeyed chain allowed
        from distillguard.store.chain import record_json
        from distillguard.store.usage import USAGE_COLUMNS

        prev = GENESIS
        for seq, request_id in connection.execute("SELECT seq, request_id FROM audit").fetchall():
            values = connection.execute(
                f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage WHERE request_id = ?",  # noqa: S608
                (request_id,),
            ).fetchone()
            row = dict(zip(USAGE_COLUMNS, values, strict=True))
            for name in ("prompt_text", "output_text"):
                row[name] = zlib.decompress(row[name]).decode()
            text = record_json(row)
            digest = hashlib.sha256(prev.encode() + text.encode()).hexdigest()
            connection.execute(
                "UPDATE audit SET record = ?, prev_hash = ?, record_hash = ?, chain = 'sha256' "
                "WHERE seq = ?",
                (text, prev, digest, seq),
            )
            prev = digest
    result = verify(tmp_path, master)
    assert result.chain.ok and result.chain.unkeyed == 3  # a consistent, unkeyed chain...
    assert "record at its head differs" in (result.failure() or "")  # ...the anchor refutes
    with sqlite3.connect(tmp_path / "distillguard.db") as connection:
        connection.execute("UPDATE audit SET chain = 'hmac-1'")  # claim the key: still no
    assert "hash does not match" in (verify(tmp_path, master).failure() or "")


def test_a_relinked_chain_is_caught_by_the_anchor(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 3)
    anchor(tmp_path, master)
    other = MasterSecret(secrets.token_bytes(32), "insider's own")
    # the whole log rewritten under a key the insider controls
    tamper(tmp_path, "DELETE FROM audit", "DELETE FROM usage")
    write(tmp_path, other, 3)
    result = verify(tmp_path, master)
    assert "hash does not match" in (result.failure() or "")
    assert not result.checkpoints.ok  # and the anchored head is not the database's


def test_verification_spans_a_chain_key_version_change(
    tmp_path: Path, master: MasterSecret
) -> None:
    first, second = (ChainKey(v, m) for v, m in chain_keys(master, 2).items())
    write(tmp_path, master, 2, key=first)
    log = AuditLog(lambda: connect(tmp_path), chain_key=second)
    log.append(record(7))
    log.close()
    result = verify(tmp_path, master)
    assert result.ok, result.failure()
    assert result.chain.keyed == 3


def test_a_forged_checkpoint_signature_fails(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 2)
    anchor(tmp_path, master)
    path = tmp_path / "anchor.jsonl"
    (checkpoint,) = read_anchor(path)
    path.write_text(path.read_text().replace(checkpoint.head_hash, "f" * 64))
    assert "signature does not verify" in (verify(tmp_path, master).failure() or "")


def test_back_filled_key_commitments_fail(tmp_path: Path, master: MasterSecret) -> None:
    from distillguard.keys import derive_tenant_key, record_commitment
    from distillguard.watermark import SchemeConfig

    with connect(tmp_path) as connection:
        record_commitment(connection, derive_tenant_key(master, "acme"), SchemeConfig())
    write(tmp_path, master, 1)
    anchor(tmp_path, master)
    tamper(tmp_path, "UPDATE key_commitments SET created_at = '2020-01-01T00:00:00Z'")
    with connect(tmp_path) as connection:
        record_commitment(connection, derive_tenant_key(master, "globex"), SchemeConfig())
        connection.execute(
            "UPDATE key_commitments SET created_at = '2019-01-01T00:00:00Z' WHERE tenant = ?",
            ("globex",),
        )
    assert "key commitments" in (verify(tmp_path, master).failure() or "")


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE key_commitments SET created_at = '2020-01-01T00:00:00Z'",  # back-dated
        "UPDATE key_commitments SET scheme_json = '{}'",
        "UPDATE key_commitments SET key_id = 'another'",
    ],
)
def test_editing_a_key_commitment_after_a_checkpoint_fails(
    tmp_path: Path, master: MasterSecret, edit: str
) -> None:
    from distillguard.keys import derive_tenant_key, record_commitment
    from distillguard.watermark import SchemeConfig

    with connect(tmp_path) as connection:
        record_commitment(connection, derive_tenant_key(master, "acme"), SchemeConfig())
    write(tmp_path, master, 1)
    anchor(tmp_path, master)
    assert verify(tmp_path, master).ok
    tamper(tmp_path, edit)
    assert "key commitments it anchored were changed" in (verify(tmp_path, master).failure() or "")


def test_a_checkpoint_from_before_full_row_commitment_digests_still_verifies(
    tmp_path: Path, master: MasterSecret
) -> None:
    """Checkpoints written before the digest covered every column hold a bare hex digest of
    the commitment column: they still verify, and still catch a removed commitment."""
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from distillguard.keys import derive_tenant_key, record_commitment
    from distillguard.keys.derive import checkpoint_seed
    from distillguard.store.checkpoint import append_anchor, make_checkpoint
    from distillguard.watermark import SchemeConfig

    key, seed = derive_tenant_key(master, "acme"), checkpoint_seed(master)
    with connect(tmp_path) as connection:
        commitment = record_commitment(connection, key, SchemeConfig())
    write(tmp_path, master, 2)
    with connect(tmp_path) as connection:
        current = make_checkpoint(connection, seed)
    old_digest = hashlib.sha256(commitment.commitment.encode()).hexdigest()
    unsigned = dataclasses.replace(current, commitments_digest=old_digest, signature="")
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(unsigned.payload()).hex()
    append_anchor(tmp_path / "anchor.jsonl", dataclasses.replace(unsigned, signature=signature))
    result = verify(tmp_path, master)
    assert result.ok, result.failure()
    tamper(tmp_path, "DELETE FROM key_commitments")
    assert "key commitments" in (verify(tmp_path, master).failure() or "")


def write_unkeyed(home: Path, indexes: range) -> None:
    """Records as a chain written before chain keys (tag sha256) has them."""
    log = AuditLog(lambda: connect(home), chain_key=None)
    for index in indexes:
        log.append(record(index))
    log.close()


def test_text_purged_before_purge_events_existed_verifies_as_legacy(
    tmp_path: Path, master: MasterSecret
) -> None:
    write_unkeyed(tmp_path, range(4))
    log = AuditLog(lambda: connect(tmp_path), chain_key=current_chain_key(master))
    log.append(record(10))
    log.close()
    # the old purge: text gone, no event in the chain
    tamper(
        tmp_path,
        "UPDATE usage SET prompt_text = NULL, output_text = NULL "
        "WHERE request_id IN ('req_0', 'req_1', 'req_2')",
    )
    result = verify(tmp_path, master)
    assert result.ok, result.failure()
    assert (result.chain.unkeyed, result.chain.keyed, result.chain.legacy_purged) == (4, 1, 3)
    assert "3 legacy records with text purged before purge events were recorded" in (
        result.summary()
    )


@pytest.mark.parametrize("where", ["a keyed record", "an unkeyed record after a purge event"])
def test_text_blanked_outside_the_legacy_part_still_needs_a_purge_event(
    tmp_path: Path, master: MasterSecret, where: str
) -> None:
    write_unkeyed(tmp_path, range(2))
    late = record(7, created_at="2026-12-05T00:00:00Z")
    if where == "a keyed record":
        log = AuditLog(lambda: connect(tmp_path), chain_key=current_chain_key(master))
    else:
        with connect(tmp_path) as connection:
            purge_text(connection, "2026-12-01T00:00:00Z", None)  # an unkeyed purge event
        log = AuditLog(lambda: connect(tmp_path), chain_key=None)
    log.append(late)
    log.close()
    tamper(
        tmp_path,
        "UPDATE usage SET prompt_text = NULL, output_text = NULL WHERE request_id = 'req_7'",
    )
    failure = verify(tmp_path, master).failure() or ""
    assert "req_7" in failure and "blanked outside any purge" in failure
