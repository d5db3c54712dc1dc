"""The audit log's integrity as one verdict: the keyed chain, and the anchored checkpoints
(with their timestamps, when a TSA stamped them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillguard.errors import ServiceUnavailableError
from distillguard.keys.derive import CHAIN_KEY_VERSION, chain_keys, checkpoint_seed
from distillguard.keys.secret import MasterSecret
from distillguard.store.base import Connection
from distillguard.store.chain import ChainKey, ChainVerification, verify_chain
from distillguard.store.checkpoint import (
    Checkpoint,
    CheckpointVerification,
    append_anchor,
    make_checkpoint,
    public_key_hex,
    read_anchor,
    verify_checkpoints,
    with_timestamp,
)
from distillguard.store.timestamp import (
    Timestamp,
    TimestampAuthority,
    TsaTrust,
    request_timestamp,
)

__all__ = [
    "Anchored",
    "LogVerification",
    "anchor_checkpoint",
    "current_chain_key",
    "verify_log",
]


def current_chain_key(master: MasterSecret) -> ChainKey:
    """The key new audit records and events are linked with."""
    return ChainKey(CHAIN_KEY_VERSION, chain_keys(master)[CHAIN_KEY_VERSION])


@dataclass(frozen=True)
class LogVerification:
    chain: ChainVerification
    checkpoints: CheckpointVerification
    public_key: str  # the checkpoints' Ed25519 key (hex), for a third party to check them

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.checkpoints.ok

    def failure(self) -> str | None:
        """The first failure, in words (None when everything verifies)."""
        if not self.chain.ok:
            where = (
                f"record {self.chain.first_bad_seq} (request {self.chain.request_id})"
                if self.chain.first_bad_seq is not None
                else f"request {self.chain.request_id}"
            )
            return f"audit chain broken at {where}: {self.chain.reason}"
        if not self.checkpoints.ok:
            return f"anchored {self.checkpoints.reason}"
        return None

    def summary(self) -> str:
        """What was verified, and against which checkpoint."""
        chain = self.chain
        others = chain.events - chain.purges  # operators' actions
        parts = [
            f"{chain.records} records ({chain.keyed} keyed, {chain.unkeyed} unkeyed, "
            f"{chain.purges} purge events" + (f", {others} other events)" if others else ")")
        ]
        last = self.checkpoints.last
        if last is None:
            parts.append("no anchored checkpoint: deleting the newest records would go unseen")
        else:
            parts.append(
                f"{self.checkpoints.checked} checkpoints verified, the last at record {last.seq} "
                f"({last.created_at}, head {last.head_hash[:16]}...)"
            )
            if self.checkpoints.unanchored:
                parts.append(f"{self.checkpoints.unanchored} records not yet anchored")
            parts.append(self._timestamps())
        if chain.legacy_purged:
            parts.append(
                f"{chain.legacy_purged} legacy records with text purged before purge events "
                "were recorded"
            )
        return "; ".join(parts)

    def _timestamps(self) -> str:
        checkpoints = self.checkpoints
        stamp, stamped = checkpoints.last_timestamp, checkpoints.last_timestamped
        if stamp is None or stamped is None:
            return "no checkpoint timestamped by a TSA"
        how = (
            "signatures checked against the TSA certificates given"
            if stamp.signature_checked
            else "imprints checked, TSA signatures not: no TSA certificate given"
        )
        by = f" by {stamp.authority}" if stamp.authority else ""
        return (
            f"{checkpoints.timestamped} of {checkpoints.checked} checkpoints timestamped ({how}), "
            f"the last at record {stamped.seq}{by} at {stamp.gen_time}"
        )


def verify_log(
    connection: Connection,
    master: MasterSecret,
    anchor: Path,
    tsa_trust: TsaTrust | None = None,
) -> LogVerification:
    """Verify the chain and the checkpoints in `anchor`; their timestamp tokens' signatures
    too when `tsa_trust` (the TSA's CA certificate) is given, else only their imprints."""
    public_key = public_key_hex(checkpoint_seed(master))
    tags = [row[0] for row in connection.execute("SELECT DISTINCT chain FROM audit").fetchall()]
    versions = [int(tag[5:]) for tag in tags if tag.startswith("hmac-") and tag[5:].isdigit()]
    chain = verify_chain(connection, chain_keys(master, max([CHAIN_KEY_VERSION, *versions])))
    checkpoints = verify_checkpoints(connection, read_anchor(anchor), public_key, tsa_trust)
    return LogVerification(chain, checkpoints, public_key)


@dataclass(frozen=True)
class Anchored:
    checkpoint: Checkpoint  # as appended to the anchor
    timestamp: Timestamp | None = None  # the TSA's, when one was asked and answered
    timestamp_failure: str | None = None  # why it did not, in one line


def anchor_checkpoint(
    connection: Connection,
    master: MasterSecret,
    anchor: Path,
    tsa: TimestampAuthority | None = None,
) -> Anchored:
    """Sign a checkpoint of the chain's current head, have `tsa` timestamp it when given, and
    append it to the anchor. A TSA that fails costs the timestamp, never the checkpoint: it is
    appended without one, and the failure returned for the caller to report."""
    checkpoint = make_checkpoint(connection, checkpoint_seed(master))
    stamp, failure = None, None
    if tsa is not None:
        try:
            stamp = request_timestamp(tsa, checkpoint.payload())
            checkpoint = with_timestamp(checkpoint, stamp)
        except ServiceUnavailableError as exc:
            failure = str(exc)
    append_anchor(anchor, checkpoint)
    return Anchored(checkpoint, stamp, failure)
