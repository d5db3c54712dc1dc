"""The report's audit section carries the TSA's timestamp of the newest stamped checkpoint,
its signature checked when $DISTILLGUARD_ANCHOR_TSA_CERT names the TSA's CA."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from distillguard.config import data_dir
from distillguard.forensics.report import _verify_log
from distillguard.keys import init_master_secret
from distillguard.store import connect
from distillguard.store.checkpoint import ANCHOR_FILE
from distillguard.store.integrity import anchor_checkpoint
from distillguard.store.timestamp import TSA_CERT_ENV, TimestampAuthority

from ..store.tsa_standin import running_tsa


def test_the_audit_section_carries_the_checkpoint_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = init_master_secret(tmp_path)[0]
    with running_tsa() as tsa, closing(connect(tmp_path)) as connection:
        anchored = anchor_checkpoint(
            connection, master, data_dir(tmp_path) / ANCHOR_FILE, TimestampAuthority(tsa.url)
        )
        assert anchored.timestamp is not None
        monkeypatch.delenv(TSA_CERT_ENV, raising=False)
        unchecked = _verify_log(connection, tmp_path)
        monkeypatch.setenv(TSA_CERT_ENV, str(tsa.authority.write_ca(tmp_path / "ca.pem")))
        checked = _verify_log(connection, tmp_path)
    assert unchecked["ok"] and unchecked["timestamp"]["signature_checked"] is False
    assert checked["ok"] and checked["timestamp"] == {
        "seq": 0,
        "gen_time": anchored.timestamp.gen_time,
        "authority": "CN=Stand-in TSA",
        "signature_checked": True,
        "timestamped_checkpoints": 1,
    }
    assert f"at {anchored.timestamp.gen_time}" in checked["verified"]
