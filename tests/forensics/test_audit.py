"""Audits of a suspect: each host gets only its own key, and suspect weights never unpickle."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from distillguard.errors import ModelLoadError
from distillguard.experiments.distill import ExperimentConfig, harvest
from distillguard.forensics.audit import AuditOutcome, load_suspect_weights, run_audit
from distillguard.watermark.vocab import load_tokenizer


@dataclass
class MockOpenAI:
    """An OpenAI-compatible host that answers every completion and records the
    Authorization header of every request it gets."""

    model: str
    url: str = ""
    authorizations: list[str | None] = field(default_factory=list)


@pytest.fixture
def hosts() -> Iterator[tuple[MockOpenAI, MockOpenAI]]:
    servers = []
    mocks = (MockOpenAI("suspect-model"), MockOpenAI("reference-model"))
    for mock in mocks:

        class Handler(BaseHTTPRequestHandler):
            host = mock

            def _answer(self, payload: dict[str, Any]) -> None:
                self.host.authorizations.append(self.headers.get("authorization"))
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # /v1/models
                self._answer({"object": "list", "data": [{"id": self.host.model}]})

            def do_POST(self) -> None:  # /v1/completions
                sent = json.loads(self.rfile.read(int(self.headers["content-length"])))
                text = f"{sent['prompt']} and then the module returns a value"
                self._answer({"choices": [{"index": 0, "text": text}]})

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        mock.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield mocks
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("audit-home")
    config = ExperimentConfig(harvest_max_tokens=16, tenants=2)
    harvest([f"Module {i} provides the" for i in range(8)], home, config, model=tiny_model_dir)
    return home


def _audit(
    home: Path, model_dir: Path, suspect: MockOpenAI, reference: MockOpenAI, **keys: Any
) -> AuditOutcome:
    from distillguard.watermark.scheme import SchemeConfig, tokenizer_fingerprint

    tokenizer, vocab = load_tokenizer(model_dir)
    scheme = SchemeConfig().bind(vocab, tokenizer_fingerprint(tokenizer))
    return run_audit(
        home,
        scheme,
        tokenizer,
        url=suspect.url,
        suspect_model=suspect.model,
        reference=reference.url,
        queries=4,
        max_tokens=8,
        **keys,
    )


def test_each_host_gets_only_its_own_api_key(
    harvested: Path, tiny_model_dir: Path, hosts: tuple[MockOpenAI, MockOpenAI]
) -> None:
    # the suspect's key went to the reference host as well (and the reference got no key
    # of its own)
    suspect, reference = hosts
    outcome = _audit(
        harvested,
        tiny_model_dir,
        suspect,
        reference,
        api_key="sk-suspect-0001",
        reference_api_key="sk-reference-0002",
    )
    assert outcome.controls
    assert suspect.authorizations and set(suspect.authorizations) == {"Bearer sk-suspect-0001"}
    assert reference.authorizations  # its /models and its completions
    assert set(reference.authorizations) == {"Bearer sk-reference-0002"}


def test_a_reference_without_a_key_gets_none(
    harvested: Path, tiny_model_dir: Path, hosts: tuple[MockOpenAI, MockOpenAI]
) -> None:
    suspect, reference = hosts
    _audit(harvested, tiny_model_dir, suspect, reference, api_key="sk-suspect-0001")
    assert set(suspect.authorizations) == {"Bearer sk-suspect-0001"}
    assert reference.authorizations and set(reference.authorizations) == {None}


class _Planted:
    """Unpickling this touches `marker`: the stand-in for code a hostile pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_suspect_weights_in_a_pickle_are_refused_unopened(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    suspect = tmp_path / "suspect"
    suspect.mkdir()
    shutil.copy(tiny_model_dir / "config.json", suspect / "config.json")
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": _Planted(marker)}, suspect / "pytorch_model.bin")
    loads: list[Any] = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(ModelLoadError, match=r"no safetensors weights.*pytorch_model\.bin"):
        load_suspect_weights(suspect)
    assert loads == [] and not marker.exists()


def test_suspect_weights_in_safetensors_load(tiny_model_dir: Path) -> None:
    model = load_suspect_weights(tiny_model_dir)
    assert not model.training
