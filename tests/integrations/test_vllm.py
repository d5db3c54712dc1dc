"""The processor inside real vLLM (the CPU build, in its own venv), in-process."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.keys.derive import derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.watermark import Detector, SchemeConfig

from .conftest import vllm_env, vllm_python

SCRIPT = Path(__file__).with_name("vllm_inprocess.py")


@cache
def run(mode: str, master_secret: str) -> dict[str, Any]:
    done = subprocess.run(
        [vllm_python(), str(SCRIPT), mode],
        capture_output=True,
        text=True,
        timeout=600,
        env=vllm_env(master_secret, "optional"),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def test_validate_params_refuses_missing_forged_and_expired_references(
    master_secret: str,
) -> None:
    checks = run("enforce", master_secret)["checks"]
    assert checks["good"] == "accepted"
    assert "send it through the gateway" in checks["missing"]
    assert "does not verify" in checks["forged"]
    assert "expired" in checks["expired"]
    assert "speculative decoding" in checks["speculative"]


def test_a_processor_loaded_twice_marks_once(master_secret: str) -> None:
    checks = run("enforce", master_secret)["checks"]
    assert checks["loaded_twice"] == "active: True,False,True"


def test_unkeyed_rows_are_identical_to_a_run_without_the_processor(master_secret: str) -> None:
    marked = run("optional", master_secret)["rows"]
    plain = run("none", master_secret)["rows"]
    for with_processor, without in zip(marked, plain, strict=True):
        if with_processor["tenant"] is None:
            assert with_processor["tokens"] == without["tokens"]
    assert any(
        with_processor["tokens"] != without["tokens"]
        for with_processor, without in zip(marked, plain, strict=True)
        if with_processor["tenant"] is not None
    )


def test_each_keyed_row_carries_its_own_tenants_watermark(master_secret: str) -> None:
    rows = run("optional", master_secret)["rows"]
    master = MasterSecret(bytes.fromhex(master_secret), "test")
    keys = {name: derive_tenant_key(master, name).watermark_key() for name in ("acme", "globex")}
    detector = Detector(SchemeConfig().bind(4096))
    for tenant, key in keys.items():
        own = [np.array(r["prompt_ids"][-1:] + r["tokens"]) for r in rows if r["tenant"] == tenant]
        other = [
            np.array(r["prompt_ids"][-1:] + r["tokens"]) for r in rows if r["tenant"] != tenant
        ]
        assert detector.detect(own, [key]).total[0].p_value < 1e-6
        assert detector.detect(other, [key]).total[0].p_value > 1e-3
