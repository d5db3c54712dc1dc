"""The monitor's inbox: a bounded queue between the request path and the monitor's thread.

The request path must never wait for the monitor, nor let it grow without bound when the
monitor falls behind (each event carries its prompt, up to the gateway's body limit). So
`put` never blocks: when the queue holds `limit` events, or their prompts `budget` characters,
it drops the oldest events and counts them (`dropped`, shown in the gateway's `/metrics`). The
newest traffic is the one to judge.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from distillguard.monitor.events import MonitorEvent

__all__ = ["EventQueue"]


class EventQueue:
    """A thread-safe FIFO of monitor events, bounded in count and in prompt characters."""

    def __init__(self, limit: int = 10_000, budget: int = 64 << 20) -> None:
        if limit < 1 or budget < 1:
            raise ValueError("an event queue holds at least one event and one character")
        self.limit = limit
        self.budget = budget
        self.dropped = 0  # events dropped, oldest first, to keep within the bounds
        self._events: deque[MonitorEvent] = deque()
        self._characters = 0
        self._closed = False
        self._ready = threading.Condition()
        self._waiting = False  # a `take` waits: only then does `put` wake it

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: MonitorEvent) -> None:
        """Queue the event, never waiting; drop the oldest events while over a bound (the
        newest stays, even alone over the character budget)."""
        with self._ready:
            self._events.append(event)
            self._characters += len(event.prompt)
            while len(self._events) > 1 and (
                len(self._events) > self.limit or self._characters > self.budget
            ):
                self._characters -= len(self._events.popleft().prompt)
                self.dropped += 1
            if self._waiting:  # a wakeup per event would hand the GIL over per request
                self._waiting = False  # signalled: later puts need not signal again
                self._ready.notify()

    def take(
        self, most: int, timeout: float | None = None, linger: float = 0.0
    ) -> list[MonitorEvent]:
        """Up to `most` events, oldest first, waiting at most `timeout` seconds (None: until
        one comes or the queue is closed) for the first; [] when none came. When it had to
        wait, it lingers `linger` seconds after the first comes, so that the events of a busy
        moment are taken together (one wakeup of the consumer, not one per event)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        with self._ready:
            while not self._events and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                waited = True
                self._waiting = True
                try:
                    self._ready.wait(remaining)
                finally:
                    self._waiting = False
        if waited and linger > 0 and not self._closed:
            time.sleep(linger)
        with self._ready:
            batch: list[MonitorEvent] = []
            while self._events and len(batch) < most:
                event = self._events.popleft()
                self._characters -= len(event.prompt)
                batch.append(event)
            return batch

    def close(self) -> None:
        """Wake every waiting `take`: from now on it returns what is left, then []."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def reopen(self) -> None:
        with self._ready:
            self._closed = False
