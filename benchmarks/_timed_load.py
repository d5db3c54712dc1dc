"""Load whose every wait is timed: to a response's first byte, and between two chunks of a stream.

The fault checks (`benchmarks/faults.py`, `tests/faults/`) ask two things of each request: did
it hang (wait longer than the gateway's bound, at any point), and was it answered (a 200 whose
whole body, or whose stream up to `data: [DONE]`, arrived), in which case its usage row must
exist. `Load` runs `clients` loops, half of them streaming, on an event loop of its own thread,
so that the caller can stop, kill and restart servers meanwhile with plain blocking calls.
Times are `time.monotonic()`, comparable with the servers' (`_servers.py`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "Answer",
    "Load",
    "by_kind",
    "hung",
    "missing_rows",
    "recovery_seconds",
    "wait_for_rows",
]

BODY = {"model": "mock", "messages": [{"role": "user", "content": "Tell me about the sea."}]}


@dataclass(frozen=True)
class Answer:
    sent: float
    done: float
    status: int  # 0: no response (refused, reset or timed out before the headers)
    request_id: str | None  # the x-request-id header: the usage row's request_id
    stream: bool
    complete: bool  # the whole body, or the stream up to [DONE], arrived
    longest_wait: float  # seconds: to the first byte, or between two chunks, the longest
    code: str | None = None  # the error's code: of a non-200 body, or of an error event

    @property
    def answered(self) -> bool:
        """A 200 the client received in full: its usage row must exist."""
        return self.status == 200 and self.complete

    @property
    def kind(self) -> str:
        """What the client saw, for counting: '200', '503 limiter_unavailable', '200 stream
        ended by audit_unavailable', 'no response'..."""
        if self.status == 0:
            return "no response"
        if self.answered:
            return "200"
        if self.status == 200:
            return f"200 stream ended by {self.code or 'a cut connection'}"
        return f"{self.status} {self.code or ''}".strip()


def hung(answers: list[Answer], bound: float) -> list[Answer]:
    """The requests that waited longer than `bound` seconds for a byte."""
    return [answer for answer in answers if answer.longest_wait > bound]


def by_kind(answers: list[Answer]) -> dict[str, int]:
    counts = collections.Counter(answer.kind for answer in answers)
    return dict(sorted(counts.items()))


def recovery_seconds(answers: list[Answer], back: float) -> float | None:
    """From `back` (the service answering again) to the first answered request sent after it;
    None when none was."""
    after = [answer.done for answer in answers if answer.answered and answer.sent >= back]
    return min(after) - back if after else None


class Load:
    """`clients` loops sending chat requests back to back (the first `stream_share` of them
    streaming) until `stop`; a loop whose request failed pauses `pause_after_error` seconds, as
    a client's backoff would. A read silent for `timeout` seconds ends its request (and counts
    as a wait that long)."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        clients: int,
        stream_share: float = 0.5,
        max_tokens: int = 16,
        pause_after_error: float = 0.05,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.headers = {"authorization": f"Bearer {key}"}
        self.clients = clients
        self.stream_share = stream_share
        self.max_tokens = max_tokens
        self.pause_after_error = pause_after_error
        self.timeout = timeout
        self.answers: list[Answer] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timed-load", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        """Stop sending, wait for the requests in flight; every answer, in order of sending."""
        self._stopping.set()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError("the load's event loop failed") from self._error
        return sorted(self.answers, key=lambda answer: answer.sent)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by `stop`
            self._error = exc

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.clients)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=self.timeout
        )
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, index) for index in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        stream = index < self.clients * self.stream_share
        while not self._stopping.is_set():
            answer = await self._one(session, stream)
            self.answers.append(answer)
            if not answer.answered:
                await asyncio.sleep(self.pause_after_error)

    async def _one(self, session: aiohttp.ClientSession, stream: bool) -> Answer:
        body: dict[str, Any] = BODY | {"max_tokens": self.max_tokens}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        sent = last = time.monotonic()
        longest, status, request_id, complete, code = 0.0, 0, None, False, None
        try:
            async with session.post(self.url, json=body, headers=self.headers) as response:
                last = time.monotonic()
                longest = last - sent
                status, request_id = response.status, response.headers.get("x-request-id")
                if status == 200 and stream:
                    async for raw in response.content:
                        now = time.monotonic()
                        longest, last = max(longest, now - last), now
                        line = raw.strip()
                        if line == b"data: [DONE]":
                            complete = True
                        elif line.startswith(b"data: ") and b'"error"' in line:
                            code = _error_code(line[6:])
                else:
                    payload = await response.read()
                    now = time.monotonic()
                    longest, last = max(longest, now - last), now
                    if status == 200:
                        complete = bool(json.loads(payload).get("choices"))
                    else:
                        code = _error_code(payload)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            now = time.monotonic()
            longest = max(longest, now - last)
            complete = False
        return Answer(sent, time.monotonic(), status, request_id, stream, complete, longest, code)


def _error_code(payload: bytes) -> str | None:
    """The `code` (else the `type`) of an OpenAI error body."""
    try:
        error = json.loads(payload)["error"]
        value = error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):  # not an OpenAI error body
        return None
    return str(value) if value is not None else None


# -- what the database kept -----------------------------------------------------------------


def missing_rows(database: str, request_ids: set[str]) -> tuple[set[str], set[str]]:
    """(ids without a usage row, ids without an audit record)."""
    import psycopg

    with psycopg.connect(database) as connection:
        usage = {row[0] for row in connection.execute("SELECT request_id FROM usage")}
        audit = {row[0] for row in connection.execute("SELECT request_id FROM audit")}
    return request_ids - usage, request_ids - audit


def wait_for_rows(database: str, request_ids: set[str], seconds: float) -> float:
    """Until every id has its usage row and audit record, or `seconds`; how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        no_usage, no_audit = missing_rows(database, request_ids)
        if not no_usage and not no_audit:
            break
        time.sleep(0.5)
    return time.monotonic() - started
