"""Property-based fuzzing of the gateway against its own OpenAPI schema: never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from distillguard.engine.engine import Engine  # noqa: E402
from distillguard.gateway.policy import Tier  # noqa: E402

from .conftest import Harness, make_harness  # noqa: E402


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, shared_engine: Engine) -> Iterator[Harness]:
    harness = make_harness(tmp_path_factory.mktemp("fuzz"), shared_engine)
    # keep generated requests cheap: a tier that caps max_tokens (larger asks get a 400)
    harness.gateway.tiers["normal"] = Tier(max_n=2, max_top_logprobs=20, max_tokens=8)
    yield harness
    harness.audit.close()


def test_no_input_makes_the_gateway_answer_5xx(fuzzed: Harness) -> None:
    # schemathesis' pytest plugin does not run under pytest 9, so its strategies are driven
    # with hypothesis directly: every operation, valid and invalid bodies alike
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzzed.gateway.app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 3
    checked: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        # derandomized: CI sees the same cases every run (a failure reproduces); a run with
        # random seeds found the negative-seed bug fixed in the engine
        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.headers["authorization"] = f"Bearer {fuzzed.keys['acme']}"
            response = case.call()
            assert response.status_code < 500, (case.body, response.text)
            case.validate_response(response, checks=(not_a_server_error,))
            checked.append(response.status_code)

        check()
    assert len(checked) >= 60
    assert any(status == 200 for status in checked)


def test_openapi_document_is_served(fuzzed: Harness, tmp_path: Path) -> None:
    import asyncio

    import httpx

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=fuzzed.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.get("/openapi.json")

    document = asyncio.run(get()).json()
    assert set(document["paths"]) == {"/v1/models", "/v1/chat/completions", "/v1/completions"}
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    schema = chat["application/json"]["schema"]
    assert schema["additionalProperties"] is False  # an unknown field is a 400
    assert {"tools", "logit_bias", "ignore_eos"} <= set(schema["properties"])
