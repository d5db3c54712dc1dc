"""The monitor's inbox: bounded in events and prompt characters, dropping (and counting) the
oldest, never blocking the request path."""

from __future__ import annotations

import threading
import time

import pytest

from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.inbox import EventQueue
from distillguard.monitor.monitor import Monitor

from .test_features import event
from .test_monitor import eager_model


def test_a_full_queue_drops_the_oldest_events_and_counts_them() -> None:
    queue = EventQueue(limit=3)
    for index in range(5):
        queue.put(event(float(index), f"prompt {index}"))
    assert len(queue) == 3 and queue.dropped == 2
    assert [item.prompt for item in queue.take(10, timeout=0)] == [
        "prompt 2",
        "prompt 3",
        "prompt 4",
    ]


def test_prompts_are_bounded_in_characters_too() -> None:
    queue = EventQueue(limit=1000, budget=250)
    for index in range(5):
        queue.put(event(float(index), str(index) * 100))
    assert queue.dropped == 3  # two prompts of 100 characters fit in 250
    huge = event(9.0, "x" * 1000)
    queue.put(huge)  # alone over the budget, the newest still stays
    assert queue.take(10, timeout=0) == [huge] and queue.dropped == 5


def test_take_waits_for_an_event_or_the_close() -> None:
    queue = EventQueue()
    assert queue.take(10, timeout=0.01) == []
    taken: list[int] = []
    waiter = threading.Thread(target=lambda: taken.append(len(queue.take(10))))
    waiter.start()
    queue.put(event(0.0, "hello"))
    waiter.join(timeout=5)
    assert taken == [1]
    closer = threading.Thread(target=lambda: taken.append(len(queue.take(10))))
    closer.start()
    queue.close()
    closer.join(timeout=5)
    assert taken == [1, 0] and not closer.is_alive()


def test_bounds_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        EventQueue(limit=0)


def test_a_monitor_that_falls_behind_keeps_the_newest_events() -> None:
    monitor = Monitor(eager_model(), queue=EventQueue(limit=100))
    for index in range(1000):
        monitor.observe(event(30.0 * index, f"Think step by step about problem {index}."))
    assert monitor.dropped == 900
    assert monitor.drain() == 100
    assert monitor.processed == 100


def test_a_closed_monitor_processes_what_was_queued_first() -> None:
    monitor = Monitor(eager_model())
    monitor.start()
    for index in range(50):
        monitor.observe(event(30.0 * index, f"question {index}"))
    monitor.close()
    assert monitor.processed == 50


def test_a_busy_moment_is_taken_in_one_batch_and_wakes_the_consumer_once() -> None:
    """Waking the monitor's thread per event handed it the GIL once per request; now a put
    wakes it only while it waits, and it lingers to take what the moment brings together."""
    inbox = EventQueue()
    notified: list[int] = []
    real_notify = inbox._ready.notify

    def counting(n: int = 1) -> None:
        notified.append(n)
        real_notify(n)

    inbox._ready.notify = counting  # type: ignore[method-assign]
    taken: list[list[MonitorEvent]] = []
    consumer = threading.Thread(target=lambda: taken.append(inbox.take(100, linger=0.2)))
    consumer.start()
    time.sleep(0.1)  # the consumer waits on the empty inbox
    for index in range(20):
        inbox.put(event(float(index), f"prompt {index}"))
    consumer.join(timeout=5)
    assert [len(batch) for batch in taken] == [20]
    assert len(notified) == 1
