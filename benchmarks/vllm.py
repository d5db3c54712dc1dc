"""The tenant watermark inside vLLM: its cost, its detection through the gateway, and parity.

    python benchmarks/vllm.py            # table
    python benchmarks/vllm.py --json     # one JSON object

Needs the vLLM venv (`make vllm`, `.venv-vllm`; or DISTILLGUARD_VLLM_PYTHON). Parts:
- `processor_ms_b32_v151k`: the processor's own time per step (`integrations.batch`, what
  `TenantWatermark.apply` runs) at batch 32 over a 151,936-wide vocabulary, torch and numba on
  one thread; contexts are the embedded model's own outputs, one tenant key per row.
- In-process vLLM on the embedded model (batch 32, 128 tokens, prompts of 24 tokens from the
  shared prompt sets): tokens/s with every row keyed and with none keyed, alternating rounds
  (the processor loaded in both; unkeyed rows return at once), and the processor's own time as
  a share of the keyed rounds' wall time (`processor_share_batch32`).
- `unkeyed_identical`: a fixed batch in which unkeyed rows share steps with keyed ones, run
  with the processor (optional mode) and in a second process without it, compared token for
  token on the unkeyed rows.
- Through the gateway (`serve --upstream-kind vllm` in front of `vllm serve`): 200 completions
  of 200 tokens for three tenants; `detected_p1e6` is the share detected under their own
  tenant's key at p < 1e-6. `gateway_added_p50_ms`: gateway minus vLLM direct, concurrency 1.
- `vs_hf_engine`: vLLM's keyed tokens/s over our engine's watermarked tokens/s at batch 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, print_table
from _vllm_stack import VllmStack
from distillguard.engine.model import EMBEDDED_MODEL_DIR, load_model_tokenizer
from distillguard.keys.derive import derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.watermark import Detector, SchemeConfig, tokenizer_fingerprint

BATCH = 32
PROMPT_TOKENS = 24
FIXED_ROWS = 8


def vllm_python() -> str:
    python = os.environ.get("DISTILLGUARD_VLLM_PYTHON") or str(
        REPO_ROOT / ".venv-vllm" / "bin" / "python"
    )
    if not Path(python).exists():
        raise SystemExit(f"no vLLM venv at {python}: run `make vllm` first")
    return python


def prompt_ids(tokenizer: Any, count: int) -> list[list[int]]:
    from engine import prompts  # the engine benchmark's prompt sets

    return [
        tokenizer.encode(text, add_special_tokens=False)[:PROMPT_TOKENS] or [0]
        for text in prompts(count)
    ]


def processor_step_ms(tokenizer: Any, steps: int = 64) -> float:
    """Median ms per step of the batch watermark at (32, 151,936), one thread."""
    code = f"""
import json, os, time, statistics
os.environ["NUMBA_NUM_THREADS"] = "1"
import numpy as np, torch
torch.set_num_threads(1)
from distillguard.integrations.batch import BatchRow, BatchWatermark
from distillguard.watermark import SchemeConfig, WatermarkKey
texts = json.loads({json.dumps(json.dumps(real_contexts(tokenizer, BATCH, steps)))})
rng = np.random.default_rng(0)
watermark = BatchWatermark(SchemeConfig())
outputs = [[] for _ in texts]
for index, tokens in enumerate(texts):
    key = WatermarkKey(f"wk_{{index}}", rng.bytes(32), tenant=f"tenant-{{index}}")
    watermark.rows[index] = BatchRow(key, tokens[:1], outputs[index])
logits = torch.from_numpy(rng.standard_normal((len(texts), 151_936)).astype(np.float32))
watermark.apply(logits.clone())
times = []
for step in range(1, {steps}):
    for index, tokens in enumerate(texts):
        outputs[index].append(tokens[step])
    scores = logits.clone()
    start = time.perf_counter()
    watermark.apply(scores)
    times.append(time.perf_counter() - start)
print(statistics.median(times) * 1000)
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    return float(done.stdout.strip().splitlines()[-1])


def real_contexts(tokenizer: Any, rows: int, steps: int) -> list[list[int]]:
    """Token sequences of real text (the embedded model's training prose), one per row."""
    from distillguard.engine.corpus import build_corpus

    texts = list(build_corpus().validation)
    sequences = []
    for index in range(rows):
        ids = tokenizer.encode(" ".join(texts[index * 3 : index * 3 + 3]), add_special_tokens=False)
        sequences.append((ids * (steps // max(1, len(ids)) + 1))[:steps])
    return sequences


def in_process(python: str, prompts: dict[str, Any], master: str, rounds: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(prompts, handle)
    script = str(Path(__file__).with_name("_vllm_inprocess.py"))
    env = os.environ | {"DISTILLGUARD_MASTER_SECRET": master}
    results = []
    for extra in (["--rounds", str(rounds)], ["--no-processor"]):
        done = subprocess.run(
            [python, script, handle.name, *extra], capture_output=True, text=True, env=env
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"in-process vLLM failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    os.unlink(handle.name)
    marked, plain = results
    unkeyed = range(1, FIXED_ROWS, 2)
    marked["unkeyed_identical"] = all(marked["fixed"][i] == plain["fixed"][i] for i in unkeyed)
    marked["keyed_changed"] = any(
        marked["fixed"][i] != plain["fixed"][i] for i in range(0, FIXED_ROWS, 2)
    )
    return dict(marked)


def hf_engine_tokens_per_s(prompts: list[list[int]], rounds: int) -> float:
    from distillguard.engine.engine import Engine
    from distillguard.engine.params import GenerationRequest, SamplingParams
    from engine import KEY

    rates = []
    with Engine(max_batch_size=BATCH) as engine:
        params = SamplingParams(max_tokens=128, ignore_eos=True, seed=0)
        for round_index in range(rounds + 1):
            requests = [
                engine.prepare(GenerationRequest(ids, params, watermark_key=KEY)) for ids in prompts
            ]

            async def run(batch: list[Any] = requests) -> int:
                results = await asyncio.gather(*(engine.generate(r) for r in batch))
                return sum(result.completion_tokens for result in results)

            start = time.perf_counter()
            tokens = asyncio.run(run())
            if round_index:
                rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def detection_through_gateway(
    stack: VllmStack, tokenizer: Any, completions: int, tokens: int
) -> dict[str, Any]:
    texts = stack.harvest(completions, tokens)
    master = MasterSecret(bytes.fromhex(stack.master_secret), "benchmark")
    width = load_model_tokenizer(EMBEDDED_MODEL_DIR)[1]
    detector = Detector(SchemeConfig().bind(width, tokenizer_fingerprint(tokenizer)))
    p_values = []
    for tenant, text in texts:
        key = derive_tenant_key(master, tenant).watermark_key()
        ids = np.array(tokenizer.encode(text, add_special_tokens=False))
        p_values.append(detector.detect([ids], [key]).total[0].p_value)
    detected = sum(p < 1e-6 for p in p_values)
    return {
        "detected_p1e6": detected / len(p_values),
        "completions": len(p_values),
        "median_log10_p": float(np.median(np.log10(np.maximum(p_values, 1e-300)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--completions", type=int, default=200)
    parser.add_argument("--completion-tokens", type=int, default=200)
    parser.add_argument("--latency-requests", type=int, default=200)
    args = parser.parse_args()
    python = vllm_python()
    tokenizer, _ = load_model_tokenizer(EMBEDDED_MODEL_DIR)
    master = secrets.token_hex(32)
    figures: dict[str, Any] = {"processor_ms_b32_v151k": processor_step_ms(tokenizer)}
    batch = prompt_ids(tokenizer, BATCH)
    inside = in_process(python, {"batch": batch, "fixed": batch[:FIXED_ROWS]}, master, args.rounds)
    figures["processor_share_batch32"] = inside["processor_share"]
    figures["vllm_tokens_per_s_keyed"] = inside["tokens_per_s_keyed"]
    figures["vllm_tokens_per_s_unkeyed"] = inside["tokens_per_s_unkeyed"]
    figures["unkeyed_identical"] = inside["unkeyed_identical"]
    figures["keyed_rows_changed"] = inside["keyed_changed"]
    hf = hf_engine_tokens_per_s(batch, args.rounds)
    figures["hf_engine_tokens_per_s_watermarked"] = hf
    figures["vs_hf_engine"] = inside["tokens_per_s_keyed"] / hf
    with VllmStack(python, master) as stack:
        figures |= detection_through_gateway(
            stack, tokenizer, args.completions, args.completion_tokens
        )
        figures |= stack.added_latency(args.latency_requests)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    keyed, unkeyed = figures["vllm_tokens_per_s_keyed"], figures["vllm_tokens_per_s_unkeyed"]
    detected = f"{figures['detected_p1e6']:.3f} of {figures['completions']}"
    print_table(
        "The tenant watermark inside vLLM (embedded model, CPU)",
        [
            (
                "processor ms/step, b32, V 151,936, 1 thread",
                f"{figures['processor_ms_b32_v151k']:.2f}",
            ),
            ("processor share of vLLM's time, b32", f"{figures['processor_share_batch32']:.3f}"),
            ("vLLM tokens/s keyed / unkeyed, b32", f"{keyed:.0f} / {unkeyed:.0f}"),
            ("unkeyed rows identical to no processor", str(figures["unkeyed_identical"])),
            ("our engine tokens/s watermarked, b32", f"{hf:.0f}"),
            ("vLLM / our engine", f"{figures['vs_hf_engine']:.2f}x"),
            ("completions detected at p < 1e-6", detected),
            ("gateway added p50, concurrency 1", f"{figures['gateway_added_p50_ms']:.2f} ms"),
        ],
    )


if __name__ == "__main__":
    main()
