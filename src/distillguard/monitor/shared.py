"""The harvest monitor across several gateway replicas, through Redis.

An account's requests land on whichever replica the load balancer picks, so no replica sees
enough of them to judge. Every replica therefore publishes its monitor events to one Redis
stream, and one replica at a time (the leader, holding a lease key) consumes the stream into
its `Monitor`: all of an account's counters and windows, and the rings across accounts, are
computed in one place from the whole traffic. The leader writes each tier change to a Redis
hash that every replica reads (cached, refreshed every `refresh` seconds), and a snapshot of
the accounts and rings for the admin API on any replica.

    dg:mon:events    stream of event batches (one entry per replica per publish, up to 1,000
                     events) and operators' tier pins, trimmed to `stream_max` entries
    dg:mon:leader    the leader's replica id, with a `lease`-second expiry it keeps renewing
    dg:mon:tiers     hash, account -> "tier" or "tier pinned"; dg:mon:version counts changes
    dg:mon:accounts  JSON snapshot of `Monitor.accounts()`; dg:mon:rings of `Monitor.rings()`

Consumption uses a consumer group with one fixed consumer name, so a replica that takes over
after the leader dies first re-reads what the old leader had read but not acknowledged, then
continues. Its counters start from the stream's unread part; tiers already given are kept
(they are in the hash). Redis being down does not stop serving: events are dropped and
counted (`dropped`), tiers stay as last read, and the rate limits (fail closed by default)
are what holds. Events wait for the publisher in a bounded queue (`monitor/inbox.py`): when
it is full the oldest are dropped, and counted in `dropped` too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

from distillguard.errors import ConfigError
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.inbox import EventQueue
from distillguard.monitor.model import TIERS
from distillguard.monitor.monitor import AccountReport, Monitor, RingReport, TierChange

try:
    import redis
except ImportError as exc:  # pragma: no cover - redis ships with the gateway extra
    raise ConfigError(
        "the shared monitor needs redis: pip install 'distillguard[gateway]'"
    ) from exc

__all__ = ["SharedMonitor"]

log = logging.getLogger("distillguard.monitor")

_GROUP = "distillguard-monitor"
_CONSUMER = "leader"  # one name: a new leader inherits the old one's unacknowledged events
_BATCH = 500  # stream entries read at once
_LINGER = 0.02  # seconds the publisher lets events gather after a quiet spell (inbox.take)
_EVENT_FIELDS = tuple(field.name for field in fields(MonitorEvent))

# Renew the lease only if this replica still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class SharedMonitor:
    """The gateway's monitor hook when replicas share Redis; `monitor` runs while leading."""

    def __init__(
        self,
        monitor: Monitor,
        url: str,
        *,
        prefix: str = "dg:mon:",
        replica: str | None = None,
        lease: float = 5.0,
        refresh: float = 0.25,
        snapshot_every: float = 2.0,
        stream_max: int = 100_000,
        restore: Callable[[], dict[str, tuple[str, bool]]] | None = None,
        outbox: EventQueue | None = None,
    ) -> None:
        self.monitor = monitor
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.leading = False
        self._unpublished = 0  # events that could not be published (Redis unreachable)
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._renew = self._client.register_script(_RENEW)
        self._prefix = prefix
        self._lease_ms = int(lease * 1000)
        self._refresh = refresh
        self._snapshot_every = snapshot_every
        self._stream_max = stream_max
        self._restore = restore
        self._outbox = outbox if outbox is not None else EventQueue()
        self._tiers: dict[str, str] = {}  # read on the request path: one dict get
        self._version: bytes | str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_warning = 0.0
        self._backlog = True  # while leading: re-reading what an earlier leader left unacked
        self._last_snapshot = 0.0
        self._tiers_moved = False
        self._renewed = 0.0
        self._entries_read = 0
        self._on_tier_change = monitor.on_tier_change
        monitor.on_tier_change = self._tier_changed

    # -- the request path ----------------------------------------------------------------------

    def observe(self, event: MonitorEvent) -> None:
        self._outbox.put(event)

    @property
    def dropped(self) -> int:
        """Events lost before the stream: the oldest of a full queue, or unpublishable."""
        return self._outbox.dropped + self._unpublished

    def tier_of(self, account: str) -> str:
        return self._tiers.get(account, "normal")

    # -- the admin API ---------------------------------------------------------------------------

    def set_tier(self, account: str, tier: str) -> None:
        """Pin a tier: in effect on every replica at once; the leader records it."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        pipe = self._client.pipeline()
        pipe.hset(self._key("tiers"), account, f"{tier} pinned")
        pipe.incr(self._key("version"))
        pipe.xadd(self._key("events"), {"pin": account, "tier": tier})
        pipe.execute()
        self._tiers[account] = tier

    def accounts(self) -> list[AccountReport]:
        if self.leading:
            return self.monitor.accounts()
        raw = self._client.get(self._key("accounts"))
        items = json.loads(raw) if raw else []
        return [AccountReport(**item | {"reasons": tuple(item["reasons"])}) for item in items]

    def rings(self) -> list[RingReport]:
        if self.leading:
            return self.monitor.rings()
        raw = self._client.get(self._key("rings"))
        items = json.loads(raw) if raw else []
        return [
            RingReport(
                **item | {"accounts": tuple(item["accounts"]), "reasons": tuple(item["reasons"])}
            )
            for item in items
        ]

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._publish_loop, "publisher"), (self._lead_loop, "leader")):
            thread = threading.Thread(
                target=target, name=f"distillguard-monitor-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._outbox.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self.leading:
            with contextlib.suppress(redis.RedisError):
                self._client.delete(self._key("leader"))
            self.leading = False
        self._client.close()

    def step(self) -> int:
        """One round of both loops in the calling thread (tests drive replicas this way):
        publish what is queued, campaign or renew, consume, refresh tiers."""
        self._publish(self._take_outbox(wait=0.0))
        consumed = self._lead_once(block_ms=None)
        self._refresh_tiers()
        return consumed

    # -- publishing ------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        last_refresh = 0.0
        while not self._stop.is_set():
            batch = self._take_outbox(wait=0.05)
            self._publish(batch)
            now = time.monotonic()
            if now - last_refresh >= self._refresh:
                last_refresh = now
                self._refresh_tiers()
        self._publish(self._take_outbox(wait=0.0))

    def _take_outbox(self, wait: float) -> list[MonitorEvent]:
        return self._outbox.take(1000, timeout=wait, linger=_LINGER if wait else 0.0)

    def _publish(self, batch: list[MonitorEvent]) -> None:
        if not batch:
            return
        # one stream entry per batch: a JSON array of events, each the list of its fields
        rows = [[getattr(event, name) for name in _EVENT_FIELDS] for event in batch]
        try:
            self._client.xadd(
                self._key("events"),
                {"events": json.dumps(rows, separators=(",", ":"))},
                maxlen=self._stream_max,
                approximate=True,
            )
        except redis.RedisError as exc:
            self._unpublished += len(batch)
            self._warn(f"dropped {len(batch)} monitor events", exc)

    def _refresh_tiers(self) -> None:
        try:
            version = self._client.get(self._key("version"))
            if version == self._version:
                return
            raw = self._client.hgetall(self._key("tiers"))
        except redis.RedisError as exc:
            self._warn("cannot refresh tiers", exc)
            return
        self._tiers = {
            _text(account): _text(value).split(" ", 1)[0] for account, value in raw.items()
        }
        self._version = version

    # -- leading ---------------------------------------------------------------------------------

    def _lead_loop(self) -> None:
        while not self._stop.is_set():
            try:
                consumed = self._lead_once(block_ms=200)
            except redis.RedisError as exc:
                self._warn("monitor leader loop", exc)
                consumed = 0
                self._stop.wait(1.0)
            if not self.leading and not consumed:
                self._stop.wait(self._lease_ms / 5000)
            elif self.leading and self._entries_read < _BATCH // 2:
                self._stop.wait(0.05)  # let events gather: fewer, larger reads under load

    def _lead_once(self, block_ms: int | None) -> int:
        """Campaign for (or renew) the lease; while leading, consume one batch of events."""
        leader_key = self._key("leader")
        now = time.monotonic()
        if self.leading:
            # renew at a third of the lease: often enough, and not once per batch
            if now - self._renewed >= self._lease_ms / 3000:
                if not self._renew(keys=[leader_key], args=[self.replica, self._lease_ms]):
                    log.warning("monitor: replica %s lost the leader lease", self.replica)
                    self.leading = False
                    return 0
                self._renewed = now
        elif self._client.set(leader_key, self.replica, nx=True, px=self._lease_ms):
            self._renewed = now
            self._take_office()
        else:
            return 0
        return self._consume(block_ms)

    def _take_office(self) -> None:
        events = self._key("events")
        try:
            self._client.xgroup_create(events, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        tiers: dict[str, tuple[str, bool]] = dict(self._restore() if self._restore else {})
        for account, value in self._client.hgetall(self._key("tiers")).items():
            tier, _, pinned = _text(value).partition(" ")
            tiers[_text(account)] = (tier, pinned == "pinned")
        self.monitor.restore(tiers)
        self._backlog = True  # first re-read what a previous leader left unacknowledged
        self._last_snapshot = 0.0
        self.leading = True
        log.info("monitor: replica %s leads (restored %d tiers)", self.replica, len(tiers))

    def _consume(self, block_ms: int | None) -> int:
        """Read and apply one batch of stream entries; returns the events applied."""
        events = self._key("events")
        start = "0" if self._backlog else ">"
        reply: Any = self._client.xreadgroup(
            _GROUP,
            _CONSUMER,
            {events: start},
            count=_BATCH,
            block=None if self._backlog or block_ms is None else block_ms,
        )
        entries = reply[0][1] if reply else []
        if self._backlog and not entries:
            self._backlog = False
        ids = []
        applied = 0
        for entry_id, data in entries:
            ids.append(entry_id)
            try:  # an entry is a batch of events, or a pin
                applied += self._apply(data)
            except Exception:  # one bad entry must not stop the monitor
                log.exception("monitor: cannot apply stream entry %s", entry_id)
        self._entries_read = len(entries)
        if ids:
            self._client.xack(events, _GROUP, *ids)
        now = time.monotonic()
        if self._tiers_moved or (ids and now - self._last_snapshot >= self._snapshot_every):
            self._last_snapshot, self._tiers_moved = now, False
            self._write_snapshot()
        return applied

    def _apply(self, data: dict[bytes, bytes]) -> int:
        if b"pin" in data:
            self.monitor.set_tier(data[b"pin"].decode(), data[b"tier"].decode())
            return 0
        rows: list[list[Any]] = json.loads(data[b"events"])
        for row in rows:
            self.monitor.process(MonitorEvent(*row))
        return len(rows)

    def _tier_changed(self, change: TierChange) -> None:
        """The leader's monitor moved an account: tell every replica, then record it."""
        value = f"{change.tier} pinned" if change.pinned else change.tier
        pipe = self._client.pipeline()
        pipe.hset(self._key("tiers"), change.account, value)
        pipe.incr(self._key("version"))
        pipe.execute()
        self._tiers[change.account] = change.tier
        self._tiers_moved = True  # the admin API's snapshot is rewritten at once
        if self._on_tier_change is not None:
            self._on_tier_change(change)

    def _write_snapshot(self) -> None:
        accounts = [asdict(report) for report in self.monitor.accounts()]
        rings = [asdict(report) for report in self.monitor.rings()]
        pipe = self._client.pipeline()
        pipe.set(self._key("accounts"), json.dumps(accounts), px=60_000)
        pipe.set(self._key("rings"), json.dumps(rings), px=60_000)
        pipe.execute()

    # -- internals -------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _warn(self, what: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("monitor: %s (Redis unavailable): %s", what, error)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
