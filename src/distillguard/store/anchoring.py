"""Checkpoints on a schedule: what `serve` runs beside the audit writer.

With a TSA (given, or named by $DISTILLGUARD_ANCHOR_TSA and $DISTILLGUARD_ANCHOR_TSA_CERT),
each checkpoint is timestamped as it is anchored; a TSA that fails is logged in one line and
the checkpoint anchored without its timestamp.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from distillguard.keys.secret import MasterSecret
from distillguard.store.base import Connection
from distillguard.store.integrity import anchor_checkpoint
from distillguard.store.timestamp import TimestampAuthority, timestamp_authority_from_env

__all__ = ["Anchorer"]

log = logging.getLogger("distillguard.audit")


class Anchorer:
    """Anchors a checkpoint every `interval` seconds when the chain has grown, and once more
    when closed (after the audit log has flushed), so that a stopped gateway leaves its newest
    records anchored: deleting them afterwards fails verification."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        master: MasterSecret,
        path: Path,
        *,
        interval: float = 60.0,
        tsa: TimestampAuthority | None = None,
    ) -> None:
        self._connect = connect
        self._master = master
        self.path = path
        self.tsa = tsa if tsa is not None else timestamp_authority_from_env()
        self._interval = interval
        self._anchored_records = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distillguard-anchor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.anchor_if_grown()

    def anchor_if_grown(self) -> None:
        try:
            connection = self._connect()
            try:
                records = int(connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
                if records != self._anchored_records:
                    anchored = anchor_checkpoint(connection, self._master, self.path, self.tsa)
                    if anchored.timestamp_failure is not None:
                        log.warning(
                            "checkpoint at record %d anchored without a timestamp: %s",
                            anchored.checkpoint.seq,
                            anchored.timestamp_failure,
                        )
                    self._anchored_records = records
            finally:
                connection.close()
        except Exception:  # a database or disk that is away now: the next round retries
            log.exception("could not anchor an audit checkpoint to %s", self.path)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.anchor_if_grown()
