"""The official openai client works unchanged against the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from distillguard.engine.engine import Engine
from distillguard.watermark import Detector

from .conftest import LiveServer, make_harness, run_live

_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(live: LiveServer, tenant: str = "acme", **options: object) -> openai.OpenAI:
    api = openai.OpenAI(base_url=live.base_url, api_key=live.harness.keys[tenant], **options)  # type: ignore[arg-type]
    _clients.append(api)
    return api


def test_models_chat_and_completions(live: LiveServer) -> None:
    api = client(live)
    assert [model.id for model in api.models.list()] == [live.harness.model]
    chat = api.chat.completions.create(
        model=live.harness.model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=12,
        n=2,
        seed=3,
    )
    assert len(chat.choices) == 2 and chat.object == "chat.completion"
    assert (
        chat.usage is not None
        and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    )
    text = api.completions.create(
        model=live.harness.model, prompt="The module", max_tokens=8, seed=1
    )
    assert text.object == "text_completion" and text.choices[0].finish_reason in ("stop", "length")


def test_ignore_eos_runs_every_completion_to_max_tokens(live: LiveServer) -> None:
    api = client(live)
    for seed in range(4):
        text = api.completions.create(
            model=live.harness.model,
            prompt="The module",
            max_tokens=24,
            seed=seed,
            extra_body={"ignore_eos": True},  # vLLM's extension
        )
        assert text.choices[0].finish_reason == "length"
        assert text.usage is not None and text.usage.completion_tokens == 24
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        api.completions.create(
            model=live.harness.model, prompt="The", max_tokens=2, extra_body={"ignore_eos": "yes"}
        )


def test_logprobs_in_both_apis(live: LiveServer) -> None:
    api = client(live)
    chat = api.chat.completions.create(
        model=live.harness.model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
        seed=2,
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(item.top_logprobs) == 3 for item in content)
    assert all(item.logprob <= 0 for item in content)
    legacy = api.completions.create(
        model=live.harness.model, prompt="The", max_tokens=5, logprobs=2, seed=2
    )
    assert legacy.choices[0].logprobs is not None
    assert len(legacy.choices[0].logprobs.tokens or []) == len(
        legacy.choices[0].logprobs.token_logprobs or []
    )


def test_streaming_chat_and_completions_with_usage(live: LiveServer) -> None:
    api = client(live)
    stream = api.chat.completions.create(
        model=live.harness.model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=10,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens > 0 and finish in ("stop", "length")
    whole = api.chat.completions.create(
        model=live.harness.model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=10,
        seed=4,
    )
    assert "".join(pieces) == whole.choices[0].message.content
    text_stream = api.completions.create(
        model=live.harness.model, prompt="The", max_tokens=6, stream=True, seed=1
    )
    assert "".join(chunk.choices[0].text for chunk in text_stream if chunk.choices)


def test_headers_on_every_response(live: LiveServer) -> None:
    raw = client(live).chat.completions.with_raw_response.create(
        model=live.harness.model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
    )
    for name in (
        "x-request-id",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-distillguard-watermark",
    ):
        assert raw.headers.get(name), name


def test_a_bad_key_is_401_in_openai_format(live: LiveServer) -> None:
    with (
        openai.OpenAI(base_url=live.base_url, api_key="dg-000000000000-nope", max_retries=0) as api,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        api.models.list()
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]


def test_client_retry_honours_our_429_headers(tmp_path: Path, shared_engine: Engine) -> None:
    # a one-second "minute": the second request is refused with retry-after-ms under 1000, the
    # client waits that long and the retry is admitted
    harness = make_harness(tmp_path, shared_engine, minute=1.0, rpm=1)
    server, thread, url = run_live(harness)
    attempts: list[int] = []

    def count(response: httpx.Response) -> None:
        attempts.append(response.status_code)

    try:
        with openai.OpenAI(
            base_url=url,
            api_key=harness.keys["acme"],
            max_retries=3,
            http_client=httpx.Client(event_hooks={"response": [count]}),
        ) as api:
            api.completions.create(model=harness.model, prompt="The", max_tokens=2)
            started = time.monotonic()
            api.completions.create(model=harness.model, prompt="The", max_tokens=2)
            waited = time.monotonic() - started
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join()
        harness.audit.close()
    assert attempts[:2] == [200, 429] and attempts[-1] == 200
    assert 0.2 < waited < 5.0


def test_each_tenant_gets_its_own_watermark(tmp_path: Path, embedded_engine: Engine) -> None:
    from distillguard.keys import derive_tenant_key, load_master_secret

    harness = make_harness(tmp_path, embedded_engine)
    server, thread, url = run_live(harness)
    master = load_master_secret(harness.home)
    tenants = ("acme", "globex", "initech")
    keys = [derive_tenant_key(master, tenant).watermark_key() for tenant in tenants]
    detector = Detector(embedded_engine.scheme)
    tokenizer = embedded_engine.loaded.tokenizer
    try:
        for tenant in ("acme", "globex"):
            with openai.OpenAI(base_url=url, api_key=harness.keys[tenant]) as api:
                texts = [
                    choice.text
                    for seed in range(3)
                    for choice in api.completions.create(
                        model=harness.model,
                        prompt="The module provides",
                        max_tokens=120,
                        seed=seed,
                        n=4,
                    ).choices
                ]
            documents = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
            attribution = detector.attribute(documents, keys)
            assert attribution.tenant == tenant
            assert attribution.corrected_p_value < 1e-6
            others = [ranked for ranked in attribution.ranking if ranked.detection.tenant != tenant]
            assert all(ranked.detection.p_value > 1e-3 for ranked in others)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join()
        harness.audit.close()
