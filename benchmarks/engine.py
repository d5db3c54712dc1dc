"""Engine benchmark: throughput by batch size with and without the watermark, detection rate
of the embedded model's watermarked outputs, and the watermark's perplexity cost.

    python benchmarks/engine.py            # table
    python benchmarks/engine.py --json     # one JSON object

Throughput: B concurrent requests (B = 1, 8, 32) of 128 tokens each (`ignore_eos`, so every row
runs to the end) through the engine on the embedded model; tokens/s is completion tokens over
wall time, median of `--repeats` rounds. Each round runs the plain and the watermarked batch
back to back, in alternating order; the watermark's end-to-end cost is the median of the
per-round ratios. It is also measured from inside: the share of wall time spent in the
watermark processor.

Detection: 200 samples of 200 tokens (real user prompts from Open-Assistant, cut to 24
tokens), the default scheme (gamma 0.25, delta 2, left-hash h=1); each completion is scored alone,
without its prompt (as an auditor would see it), so its first token is context only. Perplexity: the
model's own perplexity (temperature 1, no watermark) of watermarked and of unwatermarked
samples from the same prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import data_dir, print_table
from distillguard.engine.engine import Engine, PreparedRequest
from distillguard.engine.params import GenerationRequest, SamplingParams
from distillguard.watermark import Detector, WatermarkKey

KEY = WatermarkKey("wk_benchmark", bytes(range(7, 39)), tenant="benchmark")
BATCHES = (1, 8, 32)
THROUGHPUT_TOKENS = 128
SAMPLES = 200
SAMPLE_TOKENS = 200
PROMPT_TOKENS = 24


def prompts(count: int) -> list[str]:
    path = data_dir() / "LAION-AI_Open-Assistant__prompt_lottery_en_250_text.jsonl"
    if path.is_file():
        texts = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").split("\n")  # not at U+2028
            if line.strip()
        ]
    else:  # a fresh machine without the shared data: the model's own held-out prose
        from distillguard.engine.corpus import build_corpus

        texts = list(build_corpus().validation)
    return [texts[index % len(texts)] for index in range(count)]


def prepared(
    engine: Engine, texts: list[str], params: SamplingParams, key: WatermarkKey | None
) -> list[PreparedRequest]:
    tokenizer = engine.loaded.tokenizer
    requests = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)[:PROMPT_TOKENS]
        requests.append(engine.prepare(GenerationRequest(ids, params, watermark_key=key)))
    return requests


class TimedProcessor:
    """Forwards to the engine's processor and adds up the time spent in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        out = self.inner(*args)
        self.seconds += time.perf_counter() - start
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def run_all(engine: Engine, requests: list[PreparedRequest]) -> tuple[float, int]:
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(request) for request in requests))
    elapsed = time.perf_counter() - start
    return elapsed, sum(result.completion_tokens for result in results)


def throughput(engine: Engine, repeats: int) -> dict[str, float]:
    timed = TimedProcessor(engine._processor)
    engine._processor = timed  # type: ignore[assignment]
    figures: dict[str, float] = {}
    params = SamplingParams(max_tokens=THROUGHPUT_TOKENS, ignore_eos=True, seed=0)
    for batch in BATCHES:
        texts = prompts(batch)
        rates: dict[bool, list[float]] = {False: [], True: []}
        ratios: list[float] = []
        inside: list[float] = []
        for repeat in range(repeats + 1):
            order = (False, True) if repeat % 2 else (True, False)
            round_rates: dict[bool, float] = {}
            for marked in order:
                requests = prepared(engine, texts, params, KEY if marked else None)
                timed.seconds = 0.0
                elapsed, tokens = asyncio.run(run_all(engine, requests))
                round_rates[marked] = tokens / elapsed
                if marked:
                    inside.append(timed.seconds / elapsed)
            if repeat:  # round 0 warms up (and compiles the kernel)
                for marked, rate in round_rates.items():
                    rates[marked].append(rate)
                ratios.append(round_rates[False] / round_rates[True])
        figures[f"tokens_per_s_batch{batch}"] = statistics.median(rates[False])
        figures[f"tokens_per_s_batch{batch}_watermarked"] = statistics.median(rates[True])
        figures[f"watermark_overhead_batch{batch}"] = statistics.median(ratios) - 1
        figures[f"processor_share_batch{batch}"] = statistics.median(inside[1:])
    figures["batch32_over_batch1"] = (
        figures["tokens_per_s_batch32"] / figures["tokens_per_s_batch1"]
    )
    engine._processor = timed.inner
    return figures


def detection_and_quality(engine: Engine) -> dict[str, float]:
    import torch

    detector = Detector(engine.scheme)
    texts = prompts(SAMPLES)
    figures: dict[str, float] = {}
    samples: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    for label, temperature, key in (("t1", 1.0, KEY), ("t07", 0.7, KEY), ("t1_plain", 1.0, None)):
        params = SamplingParams(
            max_tokens=SAMPLE_TOKENS, temperature=temperature, ignore_eos=True, seed=1
        )
        requests = prepared(engine, texts, params, key)
        results = asyncio.run(gather(engine, requests))
        samples[label] = [
            (request.prompt_ids, result.choices[0].token_ids)
            for request, result in zip(requests, results, strict=True)
        ]
    for label in ("t1", "t07"):
        p_values = [
            detector.detect([list(completion)], [KEY]).total[0].p_value
            for _, completion in samples[label]
        ]
        figures[f"detected_p1e6_{label}"] = sum(p < 1e-6 for p in p_values) / len(p_values)
        figures[f"median_log10_p_{label}"] = statistics.median(
            detector.detect([list(c)], [KEY]).total[0].log10_p for _, c in samples[label]
        )
    for label in ("t1", "t1_plain"):
        figures[f"perplexity_{label}"] = perplexity(engine, samples[label], torch)
    figures["perplexity_cost"] = figures["perplexity_t1"] / figures["perplexity_t1_plain"] - 1
    return figures


async def gather(engine: Engine, requests: list[PreparedRequest]) -> list[Any]:
    return list(await asyncio.gather(*(engine.generate(request) for request in requests)))


def perplexity(
    engine: Engine, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]], torch: Any
) -> float:
    """The model's own perplexity of the completions given their prompts (no watermark)."""
    total, count = 0.0, 0
    model = engine.loaded.model
    with torch.inference_mode():
        for prompt, completion in pairs:
            ids = torch.tensor([list(prompt) + list(completion)])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            targets = ids[0, len(prompt) :]
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += targets.numel()
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--model", default=None, help="model directory (default: embedded)")
    args = parser.parse_args()
    with Engine(args.model) as engine:
        figures = throughput(engine, args.repeats) | detection_and_quality(engine)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    rows = []
    for batch in BATCHES:
        rows.append(
            (
                f"batch {batch}",
                f"{figures[f'tokens_per_s_batch{batch}']:.0f} tok/s plain, "
                f"{figures[f'tokens_per_s_batch{batch}_watermarked']:.0f} watermarked "
                f"({figures[f'watermark_overhead_batch{batch}']:+.1%}; processor "
                f"{figures[f'processor_share_batch{batch}']:.1%} of wall time)",
            )
        )
    rows.append(("batch 32 / batch 1", f"{figures['batch32_over_batch1']:.1f}x"))
    print_table(f"Throughput, embedded model, {THROUGHPUT_TOKENS}-token completions", rows)
    print_table(
        f"Watermarked outputs ({SAMPLES} samples x {SAMPLE_TOKENS} tokens, gamma 0.25, delta 2)",
        [
            (
                "detected at p < 1e-6, temperature 1.0",
                f"{figures['detected_p1e6_t1']:.1%} "
                f"(median log10 p {figures['median_log10_p_t1']:.1f})",
            ),
            (
                "detected at p < 1e-6, temperature 0.7",
                f"{figures['detected_p1e6_t07']:.1%} "
                f"(median log10 p {figures['median_log10_p_t07']:.1f})",
            ),
            ("perplexity, unwatermarked (t=1)", f"{figures['perplexity_t1_plain']:.2f}"),
            (
                "perplexity, watermarked (t=1)",
                f"{figures['perplexity_t1']:.2f} ({figures['perplexity_cost']:+.1%})",
            ),
        ],
    )


if __name__ == "__main__":
    main()
