"""`serve --upstream-kind vllm` binds the watermark's fingerprint to the served model at start."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from distillguard.cli import main
from distillguard.engine.model import EMBEDDED_MODEL_DIR
from distillguard.errors import ConfigError
from distillguard.gateway.backends.vllm import VllmBackend
from distillguard.gateway.server import build_server

from .conftest import run_app


def models_app(root: Path) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        entry = {"id": "served", "object": "model", "root": str(root), "max_model_len": 256}
        return JSONResponse({"object": "list", "data": [entry]})

    return Starlette(routes=[Route("/v1/models", models)])


@pytest.fixture
def upstream_serving(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A stand-in vLLM whose /v1/models names a model directory that we can change."""
    served = tmp_path / "served-model"
    shutil.copytree(EMBEDDED_MODEL_DIR, served)
    server, thread, url = run_app(models_app(served))
    yield url, served
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join()


def test_the_served_model_binds_the_fingerprint(
    tmp_path: Path, upstream_serving: tuple[str, Path]
) -> None:
    url, _ = upstream_serving
    server = build_server(
        tmp_path / "home",
        upstream=url,
        upstream_kind="vllm",
        upstream_tokenizer=EMBEDDED_MODEL_DIR,
        monitor=False,
    )
    try:
        backend = server.gateway.backend
        assert isinstance(backend, VllmBackend)
        assert backend.scheme.vocab_size == 4096 and backend.scheme.tokenizer_hash
        assert backend.model_names == ("served",) and backend.max_tokens == 256
    finally:
        server.close()


def test_a_served_model_of_another_width_refuses_to_start(
    tmp_path: Path, upstream_serving: tuple[str, Path]
) -> None:
    url, served = upstream_serving
    config = json.loads((served / "config.json").read_text())
    (served / "config.json").write_text(json.dumps(config | {"vocab_size": 4224}))
    with pytest.raises(ConfigError, match="fingerprint would name the wrong model"):
        build_server(
            tmp_path / "home",
            upstream=url,
            upstream_kind="vllm",
            upstream_tokenizer=EMBEDDED_MODEL_DIR,
            monitor=False,
        )


def test_vllm_kind_without_a_tokenizer_or_upstream_is_one_readable_line(tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    result = runner.invoke(main, [*home, "serve", "--upstream-kind", "vllm"])
    assert result.exit_code != 0 and "needs --upstream URL" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        main, [*home, "serve", "--upstream", "http://127.0.0.1:1/v1", "--upstream-kind", "vllm"]
    )
    assert result.exit_code != 0 and "needs --upstream-tokenizer DIR" in result.output
    assert "Traceback" not in result.output
