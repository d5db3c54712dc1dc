"""`vllm serve` with the tenant watermark processor, and `distillguard serve --upstream-kind vllm`
in front of it, as two processes for `benchmarks/vllm.py`."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from distillguard.engine.model import EMBEDDED_MODEL_DIR
from distillguard.keys.secret import MasterSecret
from distillguard.keys.tags import sign_reference

TENANTS = ("acme", "globex", "initech")
LIMITS = ("--rpm", "100000", "--tpm", "1000000000", "--concurrency", "64")
PROMPTS = (
    "The module",
    "Return the value of",
    "This class",
    "Each item in the list",
    "The default",
    "A new object",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds} s")


class VllmStack:
    def __init__(self, python: str, master_secret: str) -> None:
        self.python = python
        self.master_secret = master_secret
        self.home = Path(tempfile.mkdtemp(prefix="dg-vllm-bench-"))
        self.env = os.environ | {
            "DISTILLGUARD_MASTER_SECRET": master_secret,
            "DISTILLGUARD_HOME": str(self.home),
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api_keys: dict[str, str] = {}
        self.model = ""

    def __enter__(self) -> VllmStack:
        vllm_port, gateway_port = free_port(), free_port()
        self._start(
            [
                *(self.python, "-m", "vllm.entrypoints.openai.api_server"),
                *("--model", str(EMBEDDED_MODEL_DIR), "--port", str(vllm_port)),
                *("--max-model-len", "256", "--enforce-eager", "--seed", "0"),
                *("--chat-template", str(EMBEDDED_MODEL_DIR / "chat_template.jinja")),
                *("--logits-processors", "distillguard.integrations.vllm:TenantWatermark"),
            ],
            "vllm.log",
        )
        self.vllm_url = f"http://127.0.0.1:{vllm_port}/v1"
        wait_for(self.vllm_url + "/models", self.processes[-1], 300)
        self.model = str(httpx.get(self.vllm_url + "/models").json()["data"][0]["id"])
        cli = [sys.executable, "-m", "distillguard"]
        for tenant in TENANTS:
            created = subprocess.run(
                [*cli, "keys", "create", "--tenant", tenant, *LIMITS],
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            self.api_keys[tenant] = next(
                line.split()[-1] for line in created.splitlines() if line.startswith("api key")
            )
        self._start(
            [
                *(*cli, "serve", "--port", str(gateway_port), "--no-monitor", "--admin-port", "0"),
                *("--upstream", self.vllm_url, "--upstream-kind", "vllm"),
                *("--upstream-tokenizer", str(EMBEDDED_MODEL_DIR)),
            ],
            "gateway.log",
        )
        self.gateway_url = f"http://127.0.0.1:{gateway_port}/v1"
        wait_for(self.gateway_url.removesuffix("/v1") + "/healthz", self.processes[-1], 120)
        return self

    def _start(self, command: list[str], log: str) -> None:
        output = (self.home / log).open("wb")
        self.processes.append(
            subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def harvest(self, completions: int, tokens: int, concurrency: int = 8) -> list[tuple[str, str]]:
        """(tenant, text) of `completions` full-length completions through the gateway."""

        async def run() -> list[tuple[str, str]]:
            limit = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(timeout=600) as http:

                async def one(index: int) -> tuple[str, str]:
                    tenant = TENANTS[index % len(TENANTS)]
                    body = {
                        "model": self.model,
                        "prompt": PROMPTS[index % len(PROMPTS)],
                        "max_tokens": tokens,
                        "ignore_eos": True,
                        "seed": index,
                    }
                    headers = {"authorization": f"Bearer {self.api_keys[tenant]}"}
                    async with limit:
                        reply = await http.post(
                            self.gateway_url + "/completions", json=body, headers=headers
                        )
                    reply.raise_for_status()
                    return tenant, str(reply.json()["choices"][0]["text"])

                return list(await asyncio.gather(*(one(i) for i in range(completions))))

        return asyncio.run(run())

    def added_latency(self, requests: int) -> dict[str, Any]:
        """p50 of vLLM direct and through the gateway, alternating, one request at a time."""
        master = MasterSecret(bytes.fromhex(self.master_secret), "benchmark")
        body = {"model": self.model, "prompt": "The", "max_tokens": 1, "ignore_eos": True}
        gateway_headers = {"authorization": f"Bearer {self.api_keys['acme']}"}
        direct: list[float] = []
        through: list[float] = []
        with httpx.Client(timeout=60) as http:
            for index in range(requests + 5):
                reference = sign_reference(master, "acme", f"req_direct_{index}")
                start = time.perf_counter()
                http.post(
                    self.vllm_url + "/completions",
                    json=body | {"vllm_xargs": reference.to_xargs()},
                ).raise_for_status()
                middle = time.perf_counter()
                http.post(
                    self.gateway_url + "/completions", json=body, headers=gateway_headers
                ).raise_for_status()
                end = time.perf_counter()
                if index >= 5:  # warm-up
                    direct.append(middle - start)
                    through.append(end - middle)
        direct_p50 = statistics.median(direct) * 1000
        gateway_p50 = statistics.median(through) * 1000
        return {
            "vllm_direct_p50_ms": direct_p50,
            "gateway_p50_ms": gateway_p50,
            "gateway_added_p50_ms": gateway_p50 - direct_p50,
        }
