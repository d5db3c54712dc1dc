"""Run by the vLLM venv's python for `benchmarks/vllm.py`: vLLM in-process on the embedded
model; prints one JSON line `RESULT {...}`.

    python _vllm_inprocess.py PROMPTS_JSON --rounds N      # with the processor (optional mode)
    python _vllm_inprocess.py PROMPTS_JSON --no-processor  # the fixed batch only

PROMPTS_JSON holds {"batch": [[token ids], ...], "fixed": [[token ids], ...]}. With the
processor: tokens/s of the batch with every row keyed and with none keyed, alternating rounds,
and the processor's own time (apply + update_state) as a share of the keyed rounds' wall time.
Both modes: the fixed batch (rows 0, 2, 4, ... keyed) and its output tokens, to compare the
unkeyed rows token for token.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# this folder holds `vllm.py` (the benchmark): keep it from shadowing the vllm package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def without_installed_plugins() -> None:
    """Load only the processors named here: installed, the package's entry point would load
    the tenant watermark into every engine, and the baseline must run without it."""
    import importlib

    loader: Any = importlib.import_module("vllm.v1.sample.logits_processor")
    loader._load_logitsprocs_plugins = lambda: []


os.environ["DISTILLGUARD_VLLM_MODE"] = "optional"

TOKENS = 128


def timed_processor() -> Any:
    from distillguard.integrations.vllm import TenantWatermark

    class Timed(TenantWatermark):
        seconds = 0.0

        def apply(self, logits: Any) -> Any:
            start = time.perf_counter()
            out = super().apply(logits)
            Timed.seconds += time.perf_counter() - start
            return out

        def update_state(self, batch_update: Any) -> None:
            start = time.perf_counter()
            super().update_state(batch_update)
            Timed.seconds += time.perf_counter() - start

    return Timed


def requests(ids: list[list[int]], keyed: set[int], seed: int) -> tuple[list[Any], list[Any]]:

    from distillguard.keys.secret import load_master_secret
    from distillguard.keys.tags import sign_reference

    sampling_params = importlib.import_module("vllm").SamplingParams
    tokens_prompt = importlib.import_module("vllm.inputs").TokensPrompt
    master = load_master_secret()
    prompts = [tokens_prompt(prompt_token_ids=row) for row in ids]
    params = []
    for index in range(len(ids)):
        tenant = f"tenant-{index % 3}" if index in keyed else None
        xargs = sign_reference(master, tenant, f"req_{index}").to_xargs() if tenant else None
        params.append(
            sampling_params(max_tokens=TOKENS, ignore_eos=True, seed=seed + index, extra_args=xargs)
        )
    return prompts, params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-processor", action="store_true")
    args = parser.parse_args()
    data = json.loads(open(args.prompts, encoding="utf-8").read())  # noqa: SIM115
    import distillguard.engine

    model = os.path.join(os.path.dirname(distillguard.engine.__file__), "default_model")
    processor = None if args.no_processor else timed_processor()
    llm_class = importlib.import_module("vllm").LLM
    without_installed_plugins()
    llm = llm_class(
        model=model,
        logits_processors=[processor] if processor is not None else [],
        max_model_len=256,
        seed=0,
        enforce_eager=True,
    )
    result: dict[str, Any] = {}
    fixed = data["fixed"]
    prompts, params = requests(fixed, set(range(0, len(fixed), 2)), seed=1000)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result["fixed"] = [list(output.outputs[0].token_ids) for output in outputs]
    if processor is not None:
        result |= throughput(llm, processor, data["batch"], args.rounds)
    print("RESULT " + json.dumps(result))


def throughput(llm: Any, processor: Any, batch: list[list[int]], rounds: int) -> dict[str, Any]:
    rates: dict[bool, list[float]] = {True: [], False: []}
    shares: list[float] = []
    for round_index in range(rounds + 1):  # round 0 warms up (and compiles the kernel)
        order = (True, False) if round_index % 2 else (False, True)
        for keyed in order:
            prompts, params = requests(batch, set(range(len(batch))) if keyed else set(), 0)
            processor.seconds = 0.0
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start
            tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
            if round_index:
                rates[keyed].append(tokens / elapsed)
                if keyed:
                    shares.append(processor.seconds / elapsed)
    return {
        "tokens_per_s_keyed": statistics.median(rates[True]),
        "tokens_per_s_unkeyed": statistics.median(rates[False]),
        "keyed_rounds": rates[True],
        "unkeyed_rounds": rates[False],
        "processor_share": statistics.median(shares),
    }


if __name__ == "__main__":
    main()
