"""Gateway overhead and throughput against LiteLLM proxy, both in front of one instant mock.

    python benchmarks/gateway.py            # table
    python benchmarks/gateway.py --json     # one JSON object

Three servers, each its own process: the instant mock upstream (`distillguard.gateway.mock`),
our gateway in upstream mode (`distillguard serve --upstream`, with authentication, rate
limits, metering and the audit log all on), and LiteLLM proxy (installed by this script into
`benchmarks/.venv-litellm` with `pip install 'litellm[proxy]'`, started with a long random
master key). One load client for all: at concurrency 1, `--requests` sequential chat requests
per target over a kept-alive connection (latency percentiles; "added" is ours minus calling the
mock directly); then `--seconds` of load at concurrency `--concurrency` (requests per second).
`--journal-fsync-ms N` passes that option to our `serve` (group fsync of the audit journal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, print_table

LITELLM_VENV = REPO_ROOT / "benchmarks" / ".venv-litellm"
BODY = {
    "model": "mock",
    "messages": [{"role": "user", "content": "Say something."}],
    "max_tokens": 16,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, headers: dict[str, str], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f} s")


def ensure_litellm() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True
        )
    return binary


def latencies(url: str, headers: dict[str, str], count: int) -> list[float]:
    with httpx.Client(headers=headers, timeout=30.0) as client:
        for _ in range(20):  # warm up connections and caches
            client.post(url, json=BODY).raise_for_status()
        timings = []
        for _ in range(count):
            start = time.perf_counter()
            response = client.post(url, json=BODY)
            timings.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return timings


async def throughput(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    done = 0
    async with httpx.AsyncClient(
        headers=headers, timeout=30.0, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.post(url, json=BODY)
                response.raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--journal-fsync-ms", type=float, default=None)
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="dg-gateway-bench-"))
    env = os.environ | {"DISTILLGUARD_HOME": str(work / "home")}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        mock_port, ours_port, litellm_port = free_port(), free_port(), free_port()
        processes.append(
            subprocess.Popen(
                [
                    str(bin_dir / "uvicorn"),
                    "distillguard.gateway.mock:mock_upstream_app",
                    "--factory",
                    "--port",
                    str(mock_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        mock = f"http://127.0.0.1:{mock_port}/v1"
        wait_ready(mock + "/models", {})
        created = subprocess.run(
            [
                str(bin_dir / "distillguard"),
                "keys",
                "create",
                "--tenant",
                "bench",
                "--rpm",
                "10000000",
                "--tpm",
                "10000000000",
                "--concurrency",
                "10000",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        our_key = next(
            line.split()[-1] for line in created.splitlines() if line.startswith("api key")
        )
        processes.append(
            subprocess.Popen(
                [
                    str(bin_dir / "distillguard"),
                    "serve",
                    "--port",
                    str(ours_port),
                    "--admin-port",
                    "0",
                    "--upstream",
                    mock,
                    *(
                        []
                        if args.journal_fsync_ms is None
                        else ["--journal-fsync-ms", str(args.journal_fsync_ms)]
                    ),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ours = f"http://127.0.0.1:{ours_port}/v1"
        wait_ready(f"http://127.0.0.1:{ours_port}/healthz", {})

        master = "sk-" + secrets.token_urlsafe(32)
        config = work / "litellm.yaml"
        config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": "mock",
                            "litellm_params": {
                                "model": "openai/mock",
                                "api_base": mock,
                                "api_key": "unused",
                            },
                        }
                    ],
                    "general_settings": {"master_key": master},
                }
            )
        )
        litellm_env = os.environ | {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
        }
        processes.append(
            subprocess.Popen(
                [
                    str(ensure_litellm()),
                    "--config",
                    str(config),
                    "--port",
                    str(litellm_port),
                    "--num_workers",
                    "1",
                ],
                env=litellm_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        litellm = f"http://127.0.0.1:{litellm_port}"
        wait_ready(litellm + "/health/liveliness", {})

        targets = {
            "direct": (mock + "/chat/completions", {}),
            "ours": (ours + "/chat/completions", {"authorization": f"Bearer {our_key}"}),
            "litellm": (litellm + "/v1/chat/completions", {"authorization": f"Bearer {master}"}),
        }
        timings = {
            name: latencies(url, headers, args.requests) for name, (url, headers) in targets.items()
        }
        rates = {
            name: asyncio.run(throughput(url, headers, args.concurrency, args.seconds))
            for name, (url, headers) in targets.items()
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)

    p50 = {name: statistics.median(values) for name, values in timings.items()}
    p99 = {name: percentile(values, 0.99) for name, values in timings.items()}
    figures: dict[str, Any] = {
        "added_p50_ms": p50["ours"] - p50["direct"],
        "added_p99_ms": p99["ours"] - p99["direct"],
        "litellm_added_p50_ms": p50["litellm"] - p50["direct"],
        "litellm_added_p99_ms": p99["litellm"] - p99["direct"],
        "direct_p50_ms": p50["direct"],
        "ours_p50_ms": p50["ours"],
        "litellm_p50_ms": p50["litellm"],
        "rps": rates["ours"],
        "direct_rps": rates["direct"],
        "litellm_rps": rates["litellm"],
        "vs_litellm_rps": rates["ours"] / rates["litellm"],
        "concurrency": args.concurrency,
        "journal_fsync_ms": args.journal_fsync_ms,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print_table(
        "Gateway overhead over an instant mock upstream (chat completions)",
        [
            (
                "concurrency 1, p50 direct / ours / LiteLLM",
                f"{p50['direct']:.2f} / {p50['ours']:.2f} / {p50['litellm']:.2f} ms",
            ),
            (
                "added by ours, p50 / p99",
                f"{figures['added_p50_ms']:.2f} / {figures['added_p99_ms']:.2f} ms",
            ),
            (
                "added by LiteLLM, p50 / p99",
                f"{figures['litellm_added_p50_ms']:.2f} / {figures['litellm_added_p99_ms']:.2f} ms",
            ),
            (
                f"requests/s at concurrency {args.concurrency}: direct / ours / LiteLLM",
                f"{rates['direct']:.0f} / {rates['ours']:.0f} / {rates['litellm']:.0f}",
            ),
            ("ours / LiteLLM", f"{figures['vs_litellm_rps']:.1f}x"),
        ],
    )


if __name__ == "__main__":
    main()
