"""Null calibration table: false-positive rates of random tenant keys on unwatermarked text.

    python benchmarks/calibration.py [--json] [--trials 100000]

For each corpus (Shakespeare words from the shared data, uniform random tokens) and scheme,
TRIALS null trials (segments of 200 tokens x fresh random keys). Green-list p-values are
discrete, so the reference for P(p <= alpha) is the test's exact attained size (at most alpha);
Gumbel p-values are continuous, so it is alpha itself. `ks_p` is the KS test of uniformity (of
the randomized probability integral transform for the discrete green-list test).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from scipy import stats as scistats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import data_dir, print_table
from distillguard.watermark import Detector, Scheme, SchemeConfig, Seeding, WatermarkKey

ALPHAS = (1e-2, 1e-3, 1e-4)
KEYS_PER_SEGMENT = 100
SEGMENT_TOKENS = 200


def corpora() -> dict[str, tuple[np.ndarray, int]]:
    found: dict[str, tuple[np.ndarray, int]] = {}
    path = data_dir() / "karpathy_char-rnn__input.txt"
    if path.is_file():
        words = re.findall(r"\w+|[^\w\s]", path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = {}
        ids = np.array([vocab.setdefault(word, len(vocab)) for word in words], dtype=np.int64)
        found["shakespeare"] = (ids, len(vocab))
    found["random"] = (np.random.default_rng(5).integers(0, 32_000, 400_000), 32_000)
    return found


def run(
    tokens: np.ndarray, vocab: int, config: SchemeConfig, trials: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    detector = Detector(config.bind(vocab))
    p_values, scored, scores = [], [], []
    for _ in range(trials // KEYS_PER_SEGMENT):
        start = int(rng.integers(0, tokens.size - SEGMENT_TOKENS))
        keys = [WatermarkKey(f"null{index}", rng.bytes(32)) for index in range(KEYS_PER_SEGMENT)]
        for detection in detector.detect([tokens[start : start + SEGMENT_TOKENS]], keys).total:
            p_values.append(detection.p_value)
            scored.append(detection.scored_tokens)
            scores.append(detection.score)
    p = np.array(p_values)
    n = np.array(scored)
    figures: dict[str, float] = {"trials": float(p.size)}
    gamma = config.effective_gamma
    for alpha in ALPHAS:
        if config.scheme is Scheme.GREEN_LIST:
            thresholds = scistats.binom.isf(alpha, n, gamma) + 1
            reference = float(scistats.binom.sf(thresholds - 1, n, gamma).mean())
        else:
            reference = alpha
        low, high = scistats.binom.interval(0.99, p.size, reference)
        figures[f"fpr_{alpha:g}"] = float(np.mean(p <= alpha))
        figures[f"reference_{alpha:g}"] = reference
        figures[f"inside_99_{alpha:g}"] = float(low <= np.sum(p <= alpha) <= high)
    if config.scheme is Scheme.GREEN_LIST:
        green = np.array(scores)
        pit = scistats.binom.sf(green, n, gamma) + rng.random(p.size) * scistats.binom.pmf(
            green, n, gamma
        )
    else:
        pit = p
    figures["ks_p"] = float(scistats.kstest(pit, "uniform").pvalue)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--trials", type=int, default=100_000)
    args = parser.parse_args()
    schemes = {
        "green_list/left_hash": SchemeConfig(),
        "green_list/self_hash": SchemeConfig(seeding=Seeding.SELF_HASH),
        "gumbel/left_hash": SchemeConfig(scheme=Scheme.GUMBEL),
    }
    results: dict[str, dict[str, float]] = {}
    for corpus, (tokens, vocab) in corpora().items():
        for index, (name, config) in enumerate(schemes.items()):
            results[f"{corpus}:{name}"] = run(tokens, vocab, config, args.trials, seed=index)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = []
    for name, figures in results.items():
        cells = [
            f"{figures[f'fpr_{alpha:g}']:.2e} (ref {figures[f'reference_{alpha:g}']:.2e}"
            f"{', ok' if figures[f'inside_99_{alpha:g}'] else ', OUTSIDE'})"
            for alpha in ALPHAS
        ]
        rows.append((name, " | ".join(cells) + f" | KS p {figures['ks_p']:.3f}"))
    print_table(
        f"False-positive rate at alpha {', '.join(f'{a:g}' for a in ALPHAS)} "
        f"({int(next(iter(results.values()))['trials'])} null trials each)",
        rows,
    )


if __name__ == "__main__":
    main()
