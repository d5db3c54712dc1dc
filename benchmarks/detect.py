"""Detection and generation-overhead benchmark, against transformers' watermark in the same run.

    python benchmarks/detect.py            # table
    python benchmarks/detect.py --json     # one JSON object

Detection runs on one pinned core. The corpus is 1,000,000 token ids (2,000 documents of 500,
GPT-2 vocabulary size); transformers' `WatermarkDetector` is timed on the first 10 of those
documents (it scores about a thousand tokens a second, so the whole corpus would take
minutes), and ours on the same 10 (`vs_transformers`) as well as on the whole corpus
(`vs_transformers_corpus`). Both use gamma 0.25 and a left-hash context of 4 tokens.

Generation overhead: one `generate` step of a 4-layer GPT-2 (d=256) at batch 32, with no
watermark, with ours (a different tenant key per row) and with transformers'
`WatermarkLogitsProcessor`, interleaved, median over repeats; at a 4,096 vocabulary (the
embedded model's size) and at GPT-2's 50,257.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import best_seconds, median, pin_to_one_core, print_table
from distillguard.watermark import Detector, SchemeConfig, WatermarkKey

VOCAB = 50257
DOCUMENTS = 2000
DOCUMENT_TOKENS = 500
TRANSFORMERS_DOCUMENTS = 10
ATTRIBUTION_KEYS = 1000
ATTRIBUTION_TOKENS = 20_000


def keys(count: int, seed: int) -> list[WatermarkKey]:
    rng = np.random.default_rng(seed)
    return [
        WatermarkKey(f"wk_{index}", rng.bytes(32), tenant=f"t{index}") for index in range(count)
    ]


def detection_figures(repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, VOCAB, size=DOCUMENT_TOKENS) for _ in range(DOCUMENTS)]
    total_tokens = DOCUMENTS * DOCUMENT_TOKENS
    detector = Detector(SchemeConfig(context_width=4).bind(VOCAB))
    key = keys(1, seed=1)

    corpus = best_seconds(lambda: detector.detect(documents, key, per_document=False), repeats)
    tables = best_seconds(lambda: detector.detect(documents, key), repeats)
    subset = documents[:TRANSFORMERS_DOCUMENTS]
    subset_tokens = TRANSFORMERS_DOCUMENTS * DOCUMENT_TOKENS
    ours_subset = best_seconds(lambda: detector.detect(subset, key), repeats * 5)

    many = keys(ATTRIBUTION_KEYS, seed=2)
    attribution_documents = documents[: ATTRIBUTION_TOKENS // DOCUMENT_TOKENS]
    attribution = best_seconds(lambda: detector.attribute(attribution_documents, many), repeats)

    theirs = transformers_detector_seconds(subset)
    return {
        "tokens_per_s": total_tokens / corpus,
        "tokens_per_s_per_document_tables": total_tokens / tables,
        "tokens_per_s_same_subset": subset_tokens / ours_subset,
        "transformers_tokens_per_s": subset_tokens / theirs,
        # strictly the same ids: ours on the 10 documents transformers scored
        "vs_transformers": (subset_tokens / ours_subset) / (subset_tokens / theirs),
        "vs_transformers_corpus": (total_tokens / corpus) / (subset_tokens / theirs),
        "attribution_tokens_per_s_1000_keys": ATTRIBUTION_TOKENS / attribution,
    }


def transformers_detector_seconds(documents: list[np.ndarray]) -> float:
    import torch
    from transformers import GPT2Config, WatermarkDetector, WatermarkingConfig

    config = GPT2Config(vocab_size=VOCAB)
    watermarking = WatermarkingConfig(
        greenlist_ratio=0.25, bias=2.0, seeding_scheme="lefthash", context_width=4
    )
    detector = WatermarkDetector(config, "cpu", watermarking)
    batch = torch.from_numpy(np.stack(documents))
    start = time.perf_counter()
    detector(batch, return_dict=True)  # type: ignore[arg-type]
    return time.perf_counter() - start


def generation_figures(repeats: int) -> dict[str, float]:
    """Per-step cost of each processor inside real `generate` calls.

    `processor_overhead_*` is the time spent inside the processor per step divided by the step
    time without a watermark; both are measured in the same run, interleaved. The end-to-end
    ratio of whole `generate` calls is reported too (`*_end_to_end`): it includes everything
    but is at the mercy of this machine's noise (a few percent between identical runs).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, WatermarkLogitsProcessor

    from distillguard.watermark.processor import TenantWatermarkProcessor

    class Timed(LogitsProcessor):
        def __init__(self, inner: LogitsProcessor) -> None:
            self.inner = inner
            self.seconds = 0.0
            self.calls = 0

        def __call__(
            self, input_ids: torch.LongTensor, scores: torch.FloatTensor
        ) -> torch.FloatTensor:
            start = time.perf_counter()
            out: torch.FloatTensor = self.inner(input_ids, scores)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

    figures: dict[str, float] = {}
    for vocab in (4096, VOCAB):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_positions=256,
                n_embd=256,
                n_layer=4,
                n_head=4,
                bos_token_id=0,
                eos_token_id=None,
            )
        ).eval()  # type: ignore[no-untyped-call]
        config = SchemeConfig().bind(vocab)
        timed = {
            "ours": Timed(TenantWatermarkProcessor(config, keys(32, seed=3))),
            "transformers": Timed(
                WatermarkLogitsProcessor(
                    vocab,
                    "cpu",
                    greenlist_ratio=0.25,
                    bias=2.0,
                    seeding_scheme="lefthash",
                    context_width=4,
                )
            ),
        }
        prompt = torch.randint(0, vocab, (32, 16))
        steps = 32
        step_times: dict[str, list[float]] = {"none": [], "ours": [], "transformers": []}
        for repeat in range(repeats + 1):
            for name in step_times:
                if repeat == 1 and name in timed:  # the first round warms up (and compiles)
                    timed[name].seconds, timed[name].calls = 0.0, 0
                processors = [timed[name]] if name in timed else []
                start = time.perf_counter()
                model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    max_new_tokens=steps,
                    min_new_tokens=steps,
                    logits_processor=processors,
                    pad_token_id=0,
                )
                if repeat:
                    step_times[name].append((time.perf_counter() - start) / steps)
        base = median(step_times["none"])
        suffix = "" if vocab == 4096 else f"_vocab{vocab}"
        figures[f"step_ms_batch32{suffix}"] = base * 1e3
        for name, label in (("ours", ""), ("transformers", "transformers_")):
            per_step = timed[name].seconds / timed[name].calls
            figures[f"{label}processor_ms_batch32{suffix}"] = per_step * 1e3
            figures[f"{label}processor_overhead_batch32{suffix}"] = per_step / base
            figures[f"{label}processor_overhead_batch32{suffix}_end_to_end"] = (
                median(step_times[name]) / base - 1
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    generation = {} if args.skip_generation else generation_figures(args.repeats)
    pin_to_one_core()  # after generation, which uses every core as a server would
    figures = detection_figures(args.repeats) | generation
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print_table(
        "Detection (one core, gamma 0.25, left-hash h=4)",
        [
            ("ours, 1M-token corpus, total", f"{figures['tokens_per_s'] / 1e6:.1f} M tokens/s"),
            (
                "ours, with per-document tables",
                f"{figures['tokens_per_s_per_document_tables'] / 1e6:.1f} M tokens/s",
            ),
            (
                "ours, same 5,000 ids as transformers",
                f"{figures['tokens_per_s_same_subset'] / 1e6:.2f} M tokens/s",
            ),
            (
                "transformers WatermarkDetector",
                f"{figures['transformers_tokens_per_s']:.0f} tokens/s",
            ),
            ("ratio on the same ids", f"{figures['vs_transformers']:.0f}x"),
            ("ratio, ours on the corpus", f"{figures['vs_transformers_corpus']:.0f}x"),
            (
                "attribution, 1,000 tenant keys",
                f"{figures['attribution_tokens_per_s_1000_keys']:.0f} tokens/s",
            ),
        ],
    )
    if generation:
        rows = []
        for suffix, label in (("", "V=4096"), (f"_vocab{VOCAB}", f"V={VOCAB}")):
            step = figures["step_ms_batch32" + suffix]
            rows.append((f"{label}: step without watermark", f"{step:.1f} ms"))
            for name, prefix in (("ours (32 tenants)", ""), ("transformers", "transformers_")):
                inside = figures[f"{prefix}processor_ms_batch32{suffix}"]
                share = figures[f"{prefix}processor_overhead_batch32{suffix}"]
                whole = figures[f"{prefix}processor_overhead_batch32{suffix}_end_to_end"]
                rows.append(
                    (
                        f"{label}: {name}",
                        f"{inside:.2f} ms/step = {share:+.1%} (end to end {whole:+.1%})",
                    )
                )
        print_table("Generation step overhead (4-layer GPT-2, d=256, batch 32)", rows)


if __name__ == "__main__":
    main()
