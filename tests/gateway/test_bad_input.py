"""Hostile and mistaken requests get the right 4xx in OpenAI's format; nothing is lost."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import pytest

from .conftest import Harness


def post(
    harness: Harness,
    path: str,
    content: bytes,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            sent = {
                "authorization": f"Bearer {key or harness.keys['acme']}",
                "content-type": "application/json",
            }
            return await http.post(path, content=content, headers=sent | (headers or {}))

    return asyncio.run(send())


def assert_openai_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/chat/completions", b"{not json", 400, "could not parse the JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
        (
            "/v1/chat/completions",
            b'{"model": 5, "messages": []}',
            400,
            "'model' must be of type str",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "MODEL", "messages": []}',
            400,
            "'messages' must be a non-empty",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "MODEL", "messages": [{"role": "user", "content": 3}]}',
            400,
            "content must be",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "does not exist",
        ),
        (
            "/v1/completions",
            b'{"model": "MODEL", "prompt": "hi", "max_tokens": 0}',
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            b'{"model": "MODEL", "prompt": "hi", "temperature": -1}',
            400,
            "temperature",
        ),
        ("/v1/completions", b'{"model": "MODEL", "prompt": "hi", "n": "two"}', 400, "'n' must be"),
        ("/v1/completions", b'{"model": "MODEL", "prompt": {"a": 1}}', 400, "'prompt' must be"),
        (
            "/v1/completions",
            b'{"model": "MODEL", "prompt": "' + b"word " * 400 + b'", "max_tokens": 4}',
            400,
            "context",
        ),
        ("/v1/completions", b'{"model": "MODEL", "prompt": "\xff\xfe"}', 400, "not valid UTF-8"),
    ],
)
def test_bad_requests_get_the_right_4xx(
    harness: Harness, path: str, body: bytes, status: int, fragment: str
) -> None:
    response = post(harness, path, body.replace(b"MODEL", harness.model.encode()))
    assert_openai_error(response, status, fragment)


def test_deeply_nested_json_is_a_400_not_a_500(harness: Harness) -> None:
    # 30,000 brackets (within the body limit): the parser raised RecursionError, answered 500
    deep = b"[" * 30_000 + b"]" * 30_000
    body = b'{"model": "MODEL", "prompt": "hi", "metadata": ' + deep + b"}"
    model = harness.model.encode()
    response = post(harness, "/v1/chat/completions", body.replace(b"MODEL", model))
    assert_openai_error(response, 400, "deeper than 64 levels")
    # within the parser's reach but past the bound: refused before anything walks it
    nested = b'{"model": "MODEL", "prompt": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}"
    response = post(harness, "/v1/completions", nested.replace(b"MODEL", model))
    assert_openai_error(response, 400, "deeper than 64 levels")


def test_brackets_inside_strings_do_not_count_as_nesting(harness: Harness) -> None:
    prompt = b"[{" * 40 + b"]" * 30  # 110 brackets, none of them JSON
    body = b'{"model": "MODEL", "prompt": "' + prompt + b'", "max_tokens": 1}'
    response = post(harness, "/v1/completions", body.replace(b"MODEL", harness.model.encode()))
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_is_413(harness: Harness) -> None:
    huge = b'{"model": "x", "prompt": "' + b"a" * (harness.gateway.max_body_bytes + 10) + b'"}'
    assert_openai_error(post(harness, "/v1/completions", huge), 413, "exceeds")


def test_missing_and_wrong_keys_are_401(harness: Harness) -> None:
    body = b'{"model": "x", "prompt": "hi"}'
    assert_openai_error(
        post(harness, "/v1/completions", body, key="dg-123456789abc-wrong"),
        401,
        "Incorrect API key",
    )
    assert_openai_error(
        post(harness, "/v1/completions", body, key="sk-something"), 401, "Incorrect API key"
    )


def test_unknown_routes_answer_in_openai_format(harness: Harness) -> None:
    assert_openai_error(post(harness, "/v1/embeddings", b"{}"), 404, "Not Found")


def test_every_answered_request_has_its_usage_row(harness: Harness) -> None:
    model = harness.model.encode()
    bodies = [
        b'{"model": "' + model + b'", "prompt": "The", "max_tokens": 3}',
        b'{"model": "' + model + b'", "prompt": "The", "max_tokens": 0}',
        b'{"model": "nope", "prompt": "The"}',
    ]
    ids = [post(harness, "/v1/completions", body).headers["x-request-id"] for body in bodies]
    harness.flush()
    with sqlite3.connect(harness.home / "distillguard.db") as connection:
        rows = dict(connection.execute("SELECT request_id, status FROM usage").fetchall())
    assert [rows[request_id] for request_id in ids] == [200, 400, 404]


def test_a_client_that_disconnects_mid_stream_is_recorded(harness: Harness) -> None:
    async def disconnect() -> str:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            body = {"model": harness.model, "prompt": "The", "max_tokens": 100, "stream": True}
            headers = {"authorization": f"Bearer {harness.keys['acme']}"}
            async with http.stream(
                "POST", "/v1/completions", json=body, headers=headers
            ) as response:
                request_id = response.headers["x-request-id"]
                async for _ in response.aiter_lines():
                    break  # read one event, then hang up
            return request_id

    request_id = asyncio.run(disconnect())
    harness.flush()
    with sqlite3.connect(harness.home / "distillguard.db") as connection:
        row = connection.execute(
            "SELECT status, outcome FROM usage WHERE request_id = ?", (request_id,)
        ).fetchone()
    assert row is not None
    assert row[1] in ("client_disconnected", "ok")


def test_metrics_and_health_expose_counts_and_no_secrets(harness: Harness) -> None:
    post(harness, "/v1/completions", b'{"model": "nope", "prompt": "x"}')

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.get(path)

    metrics = asyncio.run(get("/metrics"))
    assert metrics.status_code == 200
    assert (
        'distillguard_requests_total{endpoint="completions",status="4xx",outcome="rejected"} 1'
        in metrics.text
    )
    assert "distillguard_request_seconds_count 1" in metrics.text
    assert harness.keys["acme"] not in metrics.text
    assert asyncio.run(get("/healthz")).json()["status"] == "ok"


def test_error_bodies_carry_no_secrets() -> None:
    from distillguard.errors import ApiError
    from distillguard.gateway.protocol import error_body

    error = ApiError(502, "cannot reach http://proxy:hunter2@upstream:8000/v1 with sk-live-0123456")
    message = error_body(error)["error"]["message"]
    assert "hunter2" not in message and "0123456" not in message
    assert "http://proxy:***@upstream:8000/v1" in message


def test_the_depth_check_is_linear_even_on_unterminated_strings() -> None:
    import time

    from distillguard.gateway.reading import _nesting_depth

    # every quote opens a string that never ends: a scan that retried from each quote
    # would take about 10^11 steps on this megabyte
    hostile = '"' + '\\"' * 500_000 + "[" * 100
    started = time.perf_counter()
    assert _nesting_depth(hostile) == 0  # all of it is inside the first string
    assert time.perf_counter() - started < 2.0
