"""The round trip: the official `openai` client -> `distillguard serve --upstream-kind vllm` ->
a real `vllm serve` with the tenant watermark processor -> usage rows -> attribution."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from distillguard.engine.model import EMBEDDED_MODEL_DIR, load_model_tokenizer
from distillguard.keys.derive import derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.keys.tags import sign_reference
from distillguard.store import connect
from distillguard.store.usage import read_usage
from distillguard.watermark import Detector, SchemeConfig, tokenizer_fingerprint
from distillguard.watermark.detector import attribute_detections

from .conftest import vllm_env, vllm_python

openai = pytest.importorskip("openai")

TENANTS = ("acme", "globex", "initech")
PROMPTS = ("The module", "Return the value of", "This class", "Each item in the list")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@dataclass
class Stack:
    vllm_url: str
    gateway_url: str
    home: Path
    api_keys: dict[str, str]
    master: MasterSecret


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, master_secret: str) -> Iterator[Stack]:
    python = vllm_python()
    home = tmp_path_factory.mktemp("gateway-home")
    env = vllm_env(master_secret, "enforce") | {"DISTILLGUARD_HOME": str(home)}
    env.pop("DISTILLGUARD_VLLM_PYTHON", None)
    vllm_port, gateway_port = free_port(), free_port()
    vllm_log = (home / "vllm.log").open("wb")
    gateway_log = (home / "gateway.log").open("wb")
    servers: list[subprocess.Popen[bytes]] = []
    try:
        servers.append(
            subprocess.Popen(
                [
                    *(python, "-m", "vllm.entrypoints.openai.api_server"),
                    *("--model", str(EMBEDDED_MODEL_DIR), "--port", str(vllm_port)),
                    *("--max-model-len", "256", "--enforce-eager", "--seed", "0"),
                    *("--chat-template", str(EMBEDDED_MODEL_DIR / "chat_template.jinja")),
                    *("--logits-processors", "distillguard.integrations.vllm:TenantWatermark"),
                ],
                env=env,
                stdout=vllm_log,
                stderr=subprocess.STDOUT,
            )
        )
        vllm_url = f"http://127.0.0.1:{vllm_port}/v1"
        wait_for(vllm_url + "/models", servers[0], 300)
        cli = [sys.executable, "-m", "distillguard"]
        api_keys = {}
        for tenant in TENANTS:
            created = subprocess.run(
                [*cli, "keys", "create", "--tenant", tenant, "--rpm", "1000", "--tpm", "10000000"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            api_keys[tenant] = next(
                line.split()[-1] for line in created.splitlines() if line.startswith("api key")
            )
        servers.append(
            subprocess.Popen(
                [
                    *(
                        *cli,
                        "serve",
                        "--port",
                        str(gateway_port),
                        "--no-monitor",
                        "--admin-port",
                        "0",
                    ),
                    *("--upstream", vllm_url, "--upstream-kind", "vllm"),
                    *("--upstream-tokenizer", str(EMBEDDED_MODEL_DIR)),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=gateway_log,
            )
        )
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1"
        wait_for(gateway_url.removesuffix("/v1") + "/healthz", servers[1], 120)
        master = MasterSecret(bytes.fromhex(master_secret), "test")
        yield Stack(vllm_url, gateway_url, home, api_keys, master)
    finally:
        for server in reversed(servers):
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        vllm_log.close()
        gateway_log.close()


def test_outputs_served_by_vllm_are_attributed_to_their_tenant(stack: Stack) -> None:
    for tenant, api_key in stack.api_keys.items():
        client = openai.OpenAI(base_url=stack.gateway_url, api_key=api_key, max_retries=0)
        for index, prompt in enumerate(PROMPTS):
            if index % 2:
                chat = client.chat.completions.with_raw_response.create(
                    model=_served(client),
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=100,
                    extra_body={"ignore_eos": True},
                )
                headers, _ = chat.headers, chat.parse()
            else:
                raw = client.completions.with_raw_response.create(
                    model=_served(client),
                    prompt=prompt,
                    max_tokens=100,
                    extra_body={"ignore_eos": True},
                )
                headers, _ = raw.headers, raw.parse()
            expected = derive_tenant_key(stack.master, tenant).key_id
            assert headers["x-distillguard-watermark"] == expected
    tokenizer, width = load_model_tokenizer(EMBEDDED_MODEL_DIR)
    config = SchemeConfig().bind(width, tokenizer_fingerprint(tokenizer))
    keys = [derive_tenant_key(stack.master, tenant).watermark_key() for tenant in TENANTS]
    detector = Detector(config)
    with closing(connect(stack.home)) as connection:
        rows = [row for row in read_usage(connection) if row.status == 200]
    assert {row.fingerprint for row in rows} == {config.fingerprint}
    for tenant in TENANTS:
        ids = [
            tokenizer.encode(text, add_special_tokens=False)
            for row in rows
            if row.tenant == tenant
            for text in _texts(row.output_text)
        ]
        report = detector.detect(ids, keys)
        attribution = attribute_detections(report.total)
        assert attribution.best.tenant == tenant
        assert attribution.best.p_value < 1e-6
        for detection in report.total:
            if detection.tenant != tenant:
                assert detection.p_value > 1e-3, (tenant, detection.tenant)


def test_streamed_choices_with_n_stop_and_seed_each_carry_the_watermark(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.gateway_url, api_key=stack.api_keys["globex"])
    stream = client.completions.create(
        model=_served(client),
        prompt="The list of values",
        max_tokens=120,
        n=2,
        seed=7,
        stop=["@@@@"],
        stream=True,
        extra_body={"ignore_eos": True},
    )
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    tokenizer, width = load_model_tokenizer(EMBEDDED_MODEL_DIR)
    config = SchemeConfig().bind(width, tokenizer_fingerprint(tokenizer))
    keys = [derive_tenant_key(stack.master, tenant).watermark_key() for tenant in TENANTS]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        report = Detector(config).detect([ids], keys)
        by_tenant = {detection.tenant: detection.p_value for detection in report.total}
        assert by_tenant["globex"] < 1e-4, by_tenant
        assert by_tenant["acme"] > 1e-3 and by_tenant["initech"] > 1e-3


def test_a_client_cannot_send_its_own_vllm_xargs_through_the_gateway(stack: Stack) -> None:
    response = httpx.post(
        stack.gateway_url + "/completions",
        headers={"authorization": f"Bearer {stack.api_keys['acme']}"},
        json={
            "model": _served_name(stack),
            "prompt": "The",
            "max_tokens": 4,
            "vllm_xargs": {"dg_tenant": "globex"},
        },
        timeout=60,
    )
    assert response.status_code == 400
    assert "vllm_xargs" in response.json()["error"]["message"]


def test_vllm_refuses_requests_that_skip_the_gateway(stack: Stack) -> None:
    forged = sign_reference(MasterSecret(os.urandom(32), "attacker"), "acme", "req_x")
    body = {"model": _served_name(stack), "prompt": "The", "max_tokens": 4}
    for extra in ({}, {"vllm_xargs": forged.to_xargs()}):
        response = httpx.post(stack.vllm_url + "/completions", json=body | extra, timeout=60)
        assert response.status_code == 400, response.text


def _served(client: object) -> str:
    return str(client.models.list().data[0].id)  # type: ignore[attr-defined]


def _served_name(stack: Stack) -> str:
    return str(httpx.get(stack.vllm_url + "/models", timeout=30).json()["data"][0]["id"])


def _texts(output_text: str) -> list[str]:
    return [str(text) for text in json.loads(output_text)]
