"""The processor inside real vLLM (the CPU build, in its own venv), in-process."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.keys.derive import derive_provider_key, derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.watermark import Detector, SchemeConfig, hashing, stats
from distillguard.watermark.layers import green_counts, layer_mask
from distillguard.watermark.scheme import layered_scheme

from .conftest import vllm_env, vllm_python

SCRIPT = Path(__file__).with_name("vllm_inprocess.py")
LAYERING_ENV = "DISTILLGUARD_VLLM_LAYERING"  # integrations.vllm.LAYERING_ENV (vLLM not here)


@cache
def run(mode: str, master_secret: str, layering: str = "tenant") -> dict[str, Any]:
    done = subprocess.run(
        [vllm_python(), str(SCRIPT), mode],
        capture_output=True,
        text=True,
        timeout=600,
        env=vllm_env(master_secret, "optional") | {LAYERING_ENV: layering},
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


def layer_log10_p(
    config: SchemeConfig, key: Any, provider: Any, rows: list[dict[str, Any]], layer: str
) -> float:
    """The key's exact test over the distinct h = 1 tuples of `layer` in the rows' outputs."""
    documents = [np.array(r["prompt_ids"][-1:] + r["tokens"], dtype=np.uint64) for r in rows]
    packed = np.unique(np.concatenate([(d[:-1] << np.uint64(32)) | d[1:] for d in documents]))
    digests = hashing.context_digest([(packed >> np.uint64(32)).astype(np.uint32)])
    tokens = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    mask = layer_mask(config, provider, digests, layer)  # type: ignore[arg-type]
    green = int(green_counts(config, [key], digests[mask], tokens[mask])[0])
    return stats.binomial_upper_tail(green, int(mask.sum()), config.effective_gamma)[1]


def test_the_split_layering_marks_the_provider_layer_and_each_tenant(master_secret: str) -> None:
    """DISTILLGUARD_VLLM_LAYERING=split: keyed rows carry the provider key at its contexts and
    their own tenant's key at the others; unkeyed rows carry neither."""
    rows = run("optional", master_secret, "split")["rows"]
    master = MasterSecret(bytes.fromhex(master_secret), "test")
    provider = derive_provider_key(master).watermark_key()
    config = layered_scheme("split").bind(4096)
    keyed = [r for r in rows if r["tenant"] is not None]
    unkeyed = [r for r in rows if r["tenant"] is None]
    assert layer_log10_p(config, provider, provider, keyed, "provider") < -6
    assert layer_log10_p(config, provider, provider, unkeyed, "provider") > -3
    acme = derive_tenant_key(master, "acme").watermark_key()
    own = [r for r in rows if r["tenant"] == "acme"]
    assert layer_log10_p(config, acme, provider, own, "tenant") < -6
    assert layer_log10_p(config, acme, provider, unkeyed, "tenant") > -3
