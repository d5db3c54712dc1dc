"""Rate limits: what a daily refusal costs Redis, and what one key holds (issue 16).

    python benchmarks/limits.py            # table
    python benchmarks/limits.py --json     # one JSON object

1. `redis_refusal_us_300k`: Redis-side time of a request refused by its key's daily token
   budget when the day already holds 300,000 requests (spread evenly over the 24 hours), read
   from SLOWLOG with `slowlog-log-slower-than 0` (the script's own execution time, no network):
   median of 50 refusals. The request carries the key's minute scope and its day scope, as the
   gateway sends them, and needs 100 tokens to leave the window. `redis_refusal_us_300k_worst`:
   the same when most of the day must leave first (the refusal reads every minute of the day).
   `redis_admission_us_300k`: an admission on that key, for comparison.
2. `bytes_per_key_memory`, `bytes_per_key_redis`: what one key holds at 10,000 requests a
   minute with a daily budget: its exact minute log (the last 60 seconds' 10,000 entries) and
   its day's per-minute buckets (1,441). Memory: the deep size of the limiter's structures for
   the key; Redis: `MEMORY USAGE ... SAMPLES 0` of every key under the key's scopes, after the
   requests are settled. The day's minutes before the last are filled at 50 requests each (a
   bucket's size does not depend on its counts), then 10,000 requests in the last minute.

Both limiters run on a test clock (the Redis limiter's `clock`, for tests and this benchmark),
so a day passes in seconds. Uses the Redis at `--redis` (default redis://127.0.0.1:6379/15),
touching only keys under its own random prefix, which it deletes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table
from distillguard.gateway.ratelimit import (
    Admission,
    Limits,
    MemoryRateLimiter,
    Refusal,
    Scope,
    Snapshot,
)
from distillguard.gateway.ratelimit.lua import ADMIT_SHA
from distillguard.gateway.ratelimit.redis import RedisRateLimiter

DAY = 86_400.0
IN_THE_DAY = 300_000
RATE = 10_000  # requests a minute, for the bytes per key
SLOW_DAY_PACE = 50  # requests a minute before the last one, for the bytes per key
TOKENS = 120  # reserved per request; settled to half
REFUSALS = 50


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000.0

    def __call__(self) -> float:
        return self.now


def scopes_of(key: str, daily_tokens: int = 10**12) -> tuple[Scope, ...]:
    """The key's minute scope and its day scope, as the gateway builds them."""
    return (
        Scope(f"key:{key}", Limits(2 * RATE, 10**12)),
        Scope(f"day:{key}", Limits(10**12, daily_tokens), window=DAY),
    )


def day_times(start: float, count: int) -> list[float]:
    return [start + DAY * index / count for index in range(count)]


def busy_times(start: float) -> list[float]:
    """A day at SLOW_DAY_PACE a minute, then RATE requests in its last minute."""
    slow = [
        start + 60.0 * minute + 60.0 * i / SLOW_DAY_PACE
        for minute in range(1440)
        for i in range(SLOW_DAY_PACE)
    ]
    last = start + DAY
    return slow + [last + 60.0 * i / RATE for i in range(RATE)]


# -- Redis --------------------------------------------------------------------------------------


def redis_admit_many(
    limiter: RedisRateLimiter, clock: Clock, scopes: tuple[Scope, ...], times: list[float]
) -> None:
    """Admit a request at each time and settle it to half its reservation, pipelined 1,000 at
    a time (one by one would take minutes): the limiter's own scripts and arguments."""
    for start in range(0, len(times), 1000):
        pipe = limiter._client.pipeline(transaction=False)
        made = []
        for stamp in times[start : start + 1000]:
            clock.now = stamp
            admission_id, keys, arguments = limiter._admit_call(scopes, TOKENS)
            limiter._admit(keys=keys, args=arguments, client=pipe)
            made.append(admission_id)
        for admission_id, reply in zip(made, pipe.execute(), strict=True):
            decision = limiter._decision(scopes, TOKENS, admission_id, reply)
            if not isinstance(decision, Admission):
                raise RuntimeError(f"the benchmark's traffic was refused: {decision}")
            limiter.settle(decision, TOKENS // 2)
        limiter.flush()


def slowlog_us(
    limiter: RedisRateLimiter, prefix: str, attempt: Callable[[], None], count: int
) -> float:
    """Median Redis-side µs of `count` runs of `attempt()` (the admission script on keys under
    `prefix`), from SLOWLOG with every command logged; the settings are restored after. The
    log also holds the commands scripts run, and other clients': only our scripts count."""
    client = limiter._client
    saved = {
        name: str(client.config_get(name)[name])
        for name in ("slowlog-log-slower-than", "slowlog-max-len")
    }
    try:
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)
        client.slowlog_reset()
        for _ in range(count):
            attempt()
        entries = client.slowlog_get(100_000)
    finally:
        for name, value in saved.items():
            client.config_set(name, value)
    ours = [
        entry["duration"]
        for entry in entries
        if ADMIT_SHA.encode() in entry["command"] and prefix.encode() in entry["command"]
    ]
    if len(ours) != count:
        raise RuntimeError(f"SLOWLOG kept {len(ours)} of {count} refusals")
    return float(statistics.median(ours))


def redis_figures(url: str) -> dict[str, float]:
    prefix = f"dg:bench:{secrets.token_hex(4)}:"
    clock = Clock()
    limiter = RedisRateLimiter(url, prefix=prefix, clock=clock)
    limiter.ping()
    try:
        start = clock.now
        redis_admit_many(limiter, clock, scopes_of("day"), day_times(start, IN_THE_DAY))
        clock.now = start + DAY - 1.0
        used = 10**12 - _snapshot(limiter, scopes_of("day")[1]).remaining_tokens

        def refuse(scopes: tuple[Scope, ...]) -> None:
            if not isinstance(limiter.admit(scopes, TOKENS), Refusal):
                raise RuntimeError("the benchmark's refusal was admitted")

        # the budget is spent but for 20 tokens: 100 of the 120 asked for must leave first
        typical = scopes_of("day", daily_tokens=used + TOKENS - 100)
        refusal = slowlog_us(limiter, prefix, lambda: refuse(typical), REFUSALS)
        worst = scopes_of("day", daily_tokens=TOKENS)  # all but 120 tokens must leave
        refusal_worst = slowlog_us(limiter, prefix, lambda: refuse(worst), REFUSALS)

        def admit() -> None:
            decision = limiter.admit(scopes_of("day"), TOKENS)
            if not isinstance(decision, Admission):
                raise RuntimeError("the benchmark's admission was refused")
            limiter.settle(decision, TOKENS // 2)

        admission = slowlog_us(limiter, prefix, admit, REFUSALS)
        limiter.flush()

        redis_admit_many(limiter, clock, scopes_of("busy"), busy_times(start))
        held = {
            key.decode(): int(limiter._client.memory_usage(key, samples=0) or 0)
            for key in limiter._client.scan_iter(match=f"{prefix}*busy*")
        }
        return {
            "redis_refusal_us_300k": refusal,
            "redis_refusal_us_300k_worst": refusal_worst,
            "redis_admission_us_300k": admission,
            "bytes_per_key_redis": float(sum(held.values())),
            "bytes_redis_minute_scope": float(
                sum(size for key, size in held.items() if "{key:" in key)
            ),
            "bytes_redis_day_scope": float(
                sum(size for key, size in held.items() if "{day:" in key)
            ),
        }
    finally:
        for key in limiter._client.scan_iter(match=f"{prefix}*"):
            limiter._client.delete(key)
        limiter.close()


def _snapshot(limiter: RedisRateLimiter, scope: Scope) -> Snapshot:
    snapshot = limiter.snapshot(scope)
    if snapshot is None:
        raise RuntimeError("Redis did not answer a snapshot")
    return snapshot


# -- memory -------------------------------------------------------------------------------------


def memory_figures() -> dict[str, float]:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    start = clock.now
    for stamp in day_times(start, IN_THE_DAY):
        clock.now = stamp
        limiter.settle(_admitted(limiter.admit(scopes_of("day"), TOKENS)), TOKENS // 2)
    clock.now = start + DAY - 1.0
    used = 10**12 - limiter.snapshot(scopes_of("day")[1]).remaining_tokens
    typical = scopes_of("day", daily_tokens=used + TOKENS - 100)
    timings = []
    for _ in range(200):
        began = time.perf_counter()
        decision = limiter.admit(typical, TOKENS)
        timings.append(time.perf_counter() - began)
        if not isinstance(decision, Refusal):
            raise RuntimeError("the benchmark's refusal was admitted")

    for stamp in busy_times(start):
        clock.now = stamp
        limiter.settle(_admitted(limiter.admit(scopes_of("busy"), TOKENS)), TOKENS // 2)
    minute_scope = deep_size(limiter._logs["key:busy"])
    day_scope = deep_size(limiter._logs["day:busy"])
    return {
        "memory_refusal_us_300k": statistics.median(timings) * 1e6,
        "bytes_per_key_memory": float(minute_scope + day_scope),
        "bytes_memory_minute_scope": float(minute_scope),
        "bytes_memory_day_scope": float(day_scope),
    }


def _admitted(decision: Admission | Refusal) -> Admission:
    if not isinstance(decision, Admission):
        raise RuntimeError(f"the benchmark's traffic was refused: {decision}")
    return decision


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of `obj` and everything it holds (containers, dataclasses, numbers), once each."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | deque | set):
        size += sum(deep_size(item, seen) for item in obj)
    elif is_dataclass(obj):
        size += sum(deep_size(getattr(obj, field.name), seen) for field in fields(obj))
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    report = memory_figures() | redis_figures(args.redis)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_table(
        "Rate limits: a daily refusal with 300,000 requests in the day (goal <= 1,000 us)",
        [
            ("Redis, refusal (Redis-side, median)", f"{report['redis_refusal_us_300k']:.0f} us"),
            (
                "Redis, refusal reading the whole day",
                f"{report['redis_refusal_us_300k_worst']:.0f} us",
            ),
            (
                "Redis, admission (Redis-side, median)",
                f"{report['redis_admission_us_300k']:.0f} us",
            ),
            ("memory, refusal (median)", f"{report['memory_refusal_us_300k']:.1f} us"),
        ],
    )
    print_table(
        "Bytes one key holds at 10,000 requests a minute, with a daily budget",
        [
            ("memory, all", f"{report['bytes_per_key_memory'] / 1e6:.2f} MB"),
            ("memory, minute log", f"{report['bytes_memory_minute_scope'] / 1e6:.2f} MB"),
            ("memory, day buckets", f"{report['bytes_memory_day_scope'] / 1e6:.3f} MB"),
            ("Redis, all", f"{report['bytes_per_key_redis'] / 1e6:.2f} MB"),
            ("Redis, minute log", f"{report['bytes_redis_minute_scope'] / 1e6:.2f} MB"),
            ("Redis, day buckets", f"{report['bytes_redis_day_scope'] / 1e6:.3f} MB"),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
