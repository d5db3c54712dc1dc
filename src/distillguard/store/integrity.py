"""The audit log's integrity as one verdict: the keyed chain, and the anchored checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
)

__all__ = ["LogVerification", "anchor_checkpoint", "current_chain_key", "verify_log"]


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
        parts = [
            f"{chain.records} records ({chain.keyed} keyed, {chain.unkeyed} unkeyed, "
            f"{chain.purges} purge events)"
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
        return "; ".join(parts)


def verify_log(connection: Connection, master: MasterSecret, anchor: Path) -> LogVerification:
    public_key = public_key_hex(checkpoint_seed(master))
    tags = [row[0] for row in connection.execute("SELECT DISTINCT chain FROM audit").fetchall()]
    versions = [int(tag[5:]) for tag in tags if tag.startswith("hmac-") and tag[5:].isdigit()]
    chain = verify_chain(connection, chain_keys(master, max([CHAIN_KEY_VERSION, *versions])))
    checkpoints = verify_checkpoints(connection, read_anchor(anchor), public_key)
    return LogVerification(chain, checkpoints, public_key)


def anchor_checkpoint(connection: Connection, master: MasterSecret, anchor: Path) -> Checkpoint:
    """Sign a checkpoint of the chain's current head and append it to the anchor."""
    checkpoint = make_checkpoint(connection, checkpoint_seed(master))
    append_anchor(anchor, checkpoint)
    return checkpoint
