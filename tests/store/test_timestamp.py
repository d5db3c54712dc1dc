"""RFC 3161 timestamps of checkpoints, against a stand-in TSA on 127.0.0.1: a stamped
checkpoint verifies with the TSA's time; a swapped or foreign token fails, naming the
checkpoint; a TSA that fails costs the timestamp, never the checkpoint."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from distillguard.errors import AuditChainError, ConfigError
from distillguard.keys.secret import MasterSecret
from distillguard.store import connect
from distillguard.store.anchoring import Anchorer
from distillguard.store.audit import AuditLog
from distillguard.store.checkpoint import read_anchor
from distillguard.store.integrity import (
    Anchored,
    LogVerification,
    anchor_checkpoint,
    current_chain_key,
    verify_log,
)
from distillguard.store.timestamp import (
    TSA_CERT_ENV,
    TSA_ENV,
    TimestampAuthority,
    TsaTrust,
    check_timestamp,
    load_tsa_trust,
)
from distillguard.store.usage import UsageRecord

from .tsa_standin import Authority, StandIn, make_authority, running_tsa


@pytest.fixture
def master() -> MasterSecret:
    return MasterSecret(secrets.token_bytes(32), "test")


@pytest.fixture
def tsa() -> Iterator[StandIn]:
    with running_tsa() as standin:
        yield standin


def trust_of(authority: Authority, directory: Path) -> TsaTrust:
    return load_tsa_trust(authority.write_ca(directory / f"ca-{id(authority)}.pem"))


def record(index: int) -> UsageRecord:
    return UsageRecord(
        f"req_{index}", "2026-11-30T00:00:00Z", "acme", "k", "m", "completions", 200, "ok", 3, 5,
        1.0, None, None, {"n": 1}, f"prompt {index}", f'["output {index}"]',
    )  # fmt: skip


def write(home: Path, master: MasterSecret, first: int, count: int) -> None:
    log = AuditLog(lambda: connect(home), chain_key=current_chain_key(master))
    for index in range(first, first + count):
        log.append(record(index))
    log.close()


def anchor(home: Path, master: MasterSecret, tsa: TimestampAuthority | None) -> Anchored:
    with connect(home) as connection:
        return anchor_checkpoint(connection, master, home / "anchor.jsonl", tsa)


def verify(home: Path, master: MasterSecret, trust: TsaTrust | None) -> LogVerification:
    with connect(home) as connection:
        return verify_log(connection, master, home / "anchor.jsonl", trust)


def test_a_timestamped_checkpoint_verifies_with_the_tsa_time(
    tmp_path: Path, master: MasterSecret, tsa: StandIn
) -> None:
    trust = trust_of(tsa.authority, tmp_path)
    write(tmp_path, master, 0, 3)
    anchored = anchor(tmp_path, master, TimestampAuthority(tsa.url, trust))
    assert anchored.timestamp is not None and anchored.timestamp_failure is None
    assert anchored.timestamp.authority == "CN=Stand-in TSA"
    (stored,) = read_anchor(tmp_path / "anchor.jsonl")
    assert stored.timestamp_token == anchored.timestamp.token
    result = verify(tmp_path, master, trust)
    assert result.ok, result.failure()
    assert result.checkpoints.timestamped == 1
    assert result.checkpoints.last_timestamp is not None
    assert result.checkpoints.last_timestamp.signature_checked
    summary = result.summary()
    assert "1 of 1 checkpoints timestamped (signatures checked" in summary
    assert anchored.timestamp.gen_time in summary
    unchecked = verify(tmp_path, master, None)
    assert unchecked.ok and "TSA signatures not: no TSA certificate given" in unchecked.summary()


def test_a_token_over_another_checkpoint_fails_naming_it(
    tmp_path: Path, master: MasterSecret, tsa: StandIn
) -> None:
    authority = TimestampAuthority(tsa.url)
    write(tmp_path, master, 0, 2)
    first = anchor(tmp_path, master, authority).checkpoint
    write(tmp_path, master, 2, 2)
    second = anchor(tmp_path, master, authority).checkpoint
    path = tmp_path / "anchor.jsonl"
    swapped = path.read_text().replace(first.timestamp_token, "FIRST")
    swapped = swapped.replace(second.timestamp_token, first.timestamp_token)
    path.write_text(swapped.replace("FIRST", second.timestamp_token))
    # the imprint is checked with or without the TSA's certificate
    failure = verify(tmp_path, master, None).failure() or ""
    assert failure.startswith(f"anchored checkpoint 1 (seq {first.seq}")
    assert "timestamp token stamps another message" in failure


@pytest.mark.parametrize("forgery", ["another TSA", "our certificate, another key"])
def test_a_token_signed_by_another_key_fails(
    tmp_path: Path, master: MasterSecret, forgery: str
) -> None:
    ours = make_authority("Our TSA")
    signer = make_authority("Their TSA")
    if forgery == "our certificate, another key":  # our TSA's certificate in the token
        signer = Authority(ours.ca, ours.tsa, signer.tsa_key)
    write(tmp_path, master, 0, 2)
    with running_tsa(signer) as forger:
        anchor(tmp_path, master, TimestampAuthority(forger.url))
    failure = verify(tmp_path, master, trust_of(ours, tmp_path)).failure() or ""
    assert "checkpoint 1" in failure
    assert "timestamp token is not signed by a TSA the given certificates vouch for" in failure


def test_a_token_that_is_not_one_fails(tmp_path: Path, master: MasterSecret) -> None:
    write(tmp_path, master, 0, 1)
    checkpoint = anchor(tmp_path, master, None).checkpoint
    path = tmp_path / "anchor.jsonl"
    line = json.loads(path.read_text())
    path.write_text(json.dumps(line | {"timestamp_token": base64.b64encode(b"junk").decode()}))
    assert "not an RFC 3161 timestamp token" in (verify(tmp_path, master, None).failure() or "")
    with pytest.raises(AuditChainError, match="not an RFC 3161"):
        check_timestamp("not base64!", checkpoint.payload(), None)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("error", "answered HTTP 500"),
        ("reject", "refused the request"),
        ("other-imprint", "stamps another message"),
        ("unreachable", "could not be reached"),
    ],
)
def test_a_failing_tsa_never_loses_the_checkpoint(
    tmp_path: Path, master: MasterSecret, tsa: StandIn, mode: str, said: str
) -> None:
    tsa.mode = mode
    url = tsa.url if mode != "unreachable" else f"http://127.0.0.1:{_closed_port()}/tsa"
    with_password = url.replace("http://", "http://operator:hunter2@")
    write(tmp_path, master, 0, 2)
    anchored = anchor(tmp_path, master, TimestampAuthority(with_password, timeout=5))
    assert anchored.timestamp is None
    failure = anchored.timestamp_failure or ""
    assert said in failure and "\n" not in failure
    assert "hunter2" not in failure and "operator:***@127.0.0.1" in failure
    (stored,) = read_anchor(tmp_path / "anchor.jsonl")
    assert stored == anchored.checkpoint and stored.timestamp_token == ""
    result = verify(tmp_path, master, None)
    assert result.ok and result.checkpoints.checked == 1
    assert "no checkpoint timestamped by a TSA" in result.summary()


def test_an_answer_from_a_tsa_the_ca_does_not_vouch_for_is_not_kept(
    tmp_path: Path, master: MasterSecret, tsa: StandIn
) -> None:
    write(tmp_path, master, 0, 1)
    expected = TimestampAuthority(tsa.url, trust_of(make_authority("Expected"), tmp_path))
    anchored = anchor(tmp_path, master, expected)
    assert anchored.timestamp is None
    assert "not signed by a TSA the given certificates vouch for" in (
        anchored.timestamp_failure or ""
    )
    assert read_anchor(tmp_path / "anchor.jsonl")[0].timestamp_token == ""


def test_the_anchorer_timestamps_with_the_tsa_from_the_environment(
    tmp_path: Path,
    master: MasterSecret,
    tsa: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(TSA_ENV, tsa.url)
    monkeypatch.setenv(TSA_CERT_ENV, str(tsa.authority.write_ca(tmp_path / "ca.pem")))
    write(tmp_path, master, 0, 2)
    anchorer = Anchorer(lambda: connect(tmp_path), master, tmp_path / "anchor.jsonl", interval=3600)
    anchorer.close()
    assert anchorer.tsa is not None and anchorer.tsa.trust is not None
    assert read_anchor(tmp_path / "anchor.jsonl")[-1].timestamp_token
    tsa.mode = "error"
    write(tmp_path, master, 2, 1)
    anchorer = Anchorer(lambda: connect(tmp_path), master, tmp_path / "anchor.jsonl", interval=3600)
    with caplog.at_level(logging.WARNING, logger="distillguard.audit"):
        anchorer.close()
    (warning,) = caplog.records
    assert "anchored without a timestamp" in warning.getMessage() and not warning.exc_info
    result = verify(tmp_path, master, load_tsa_trust(tmp_path / "ca.pem"))
    assert result.ok and result.checkpoints.checked == 2 and result.checkpoints.timestamped == 1


def test_the_tsa_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        TimestampAuthority("file:///etc/passwd")
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(make_authority().tsa.public_bytes(Encoding.PEM))
    with pytest.raises(ConfigError, match="no self-signed"):
        load_tsa_trust(leaf)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM or DER"):
        load_tsa_trust(garbage)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tsa_trust(tmp_path / "missing.pem")
