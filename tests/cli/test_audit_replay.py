"""`distillguard audit replay`: records the database refused are retried, never lost, and a
forged dead-letter line is never replayed."""

from __future__ import annotations

from pathlib import Path

from distillguard.gateway.server import journal_directory
from distillguard.keys import init_master_secret
from distillguard.keys.derive import chain_keys, journal_key
from distillguard.store import connect
from distillguard.store.chain import verify_chain
from distillguard.store.deadletter import DEAD_LETTER, DeadLetter
from distillguard.store.usage import read_usage

from ..store.test_journal import record
from .conftest import run


def _dead_letter(home: Path) -> DeadLetter:
    master, _ = init_master_secret(home)
    connect(home).close()
    directory = journal_directory(home, None) / DEAD_LETTER
    return DeadLetter(directory, "123-abcd", journal_key(master))


def test_audit_replay_appends_the_dead_letters_to_the_chain(tmp_path: Path) -> None:
    dead = _dead_letter(tmp_path)
    dead.write([record(1), record(2)])
    code, out, _ = run(tmp_path, "audit", "replay")
    assert code == 0, out
    assert "2 records appended" in out
    connection = connect(tmp_path)
    assert [row.request_id for row in read_usage(connection)] == ["req_j0001", "req_j0002"]
    chain = verify_chain(connection, chain_keys(init_master_secret(tmp_path)[0]))
    assert chain.ok and chain.records == 2
    assert not dead.path.exists()
    assert run(tmp_path, "audit", "replay")[0] == 0  # nothing left: nothing to do


def test_audit_replay_refuses_a_forged_line_and_says_so(tmp_path: Path) -> None:
    dead = _dead_letter(tmp_path)
    dead.write([record(1)])
    dead.path.write_bytes(dead.path.read_bytes().replace(b"acme", b"evil"))
    code, out, err = run(tmp_path, "audit", "replay")
    assert code == 1
    assert "0 records appended" in out and "MAC does not verify" in err
    assert read_usage(connect(tmp_path)) == [] and dead.path.exists()
