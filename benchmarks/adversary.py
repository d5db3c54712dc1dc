"""Adversaries against the watermark: what each attack costs us, under each design (issue 17).

The loop of `distillguard.experiments.adversary`: per design (tenant-only, split, stacked) the
teacher is harvested once by a ring of 100 accounts with distinct tenant keys; students
fine-tune a shared clean base on the harvest (100% and 20%), on a scrubbed harvest (stolen
green lists), on a 30% paraphrase, on half our harvest and half a second provider's; the 100%
student is also sampled with the stolen bias subtracted (neutralization) and fine-tuned again
on clean text (continued training). Null suspects, shared across designs: clean fine-tunes of
the base, a student of the second provider only, and the teacher itself.

Figures are log10 p for "trained on this provider's outputs" (the provider layer; for the
tenant-only design, the ring of every harvesting account): the better of the focused black-box
test (exact) and the green-mass shift from the base (Chernoff bound), Bonferroni over the two;
black-box only for neutralization. `ring100_named`: the ring's tenant keys together, with the
ring's membership supplied by the benchmark (the monitor does not group this ring yet).

    .venv/bin/python benchmarks/adversary.py [--json] [--quick] [--only ATTACK]
        [--designs split,stacked] [--save FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from _common import data_dir, print_table
from distillguard.engine.corpus import build_corpus
from distillguard.experiments.adversary import (
    ATTACKS,
    DESIGNS,
    QUICK,
    AdversaryConfig,
    run_adversary,
)

CHOSEN = "split"  # the design the headline keys report (docs/forensics.md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="the reduced profile (see QUICK)")
    parser.add_argument("--only", choices=ATTACKS, help="run one attack (for exploring)")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated designs")
    parser.add_argument("--save", help="also write the JSON object to this file")
    parser.add_argument(
        "--tenant-attacks",
        default=None,
        help="comma-separated attacks for the tenant-only design (default: all; --quick: ring)",
    )
    args = parser.parse_args()

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    config = QUICK if args.quick else AdversaryConfig()
    designs = [name for name in args.designs.split(",") if name]
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        parser.error(f"unknown designs: {', '.join(sorted(unknown))}")
    attacks = [args.only] if args.only else list(ATTACKS)
    tenant_attacks = args.tenant_attacks or ("ring" if args.quick else ",".join(ATTACKS))
    profile = "quick" if args.quick else "full"

    def save(partial: dict[str, Any]) -> None:
        if args.save:
            done = list(partial["designs"])
            report = {**headline_keys(partial, done), **partial, "profile": profile}
            with open(args.save, "w") as handle:
                json.dump(report, handle, indent=2, default=str)

    corpus = build_corpus()
    order = np.random.default_rng(0).permutation(len(corpus.train))
    prompts = [" ".join(corpus.train[int(i)].split()[:12]) for i in order]
    shakespeare = (data_dir() / "karpathy_char-rnn__input.txt").read_text().split("\n\n")
    result = run_adversary(
        config,
        prompts,
        list(corpus.validation) + shakespeare,
        designs=designs,
        attacks=attacks,
        attacks_by_design={"tenant": tenant_attacks.split(",")},
        progress=log,
        on_design=save,
    )
    save(result)
    report = {**headline_keys(result, designs), **result, "profile": profile}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print_table(
        f"Adversaries ({report['profile']} profile; log10 p, provider level unless said; "
        f"ring of {config.ring_size}, {config.harvest_queries} harvest queries, fine-tunes of "
        f"{config.student.train_tokens:,} tokens)",
        table_rows(result),
    )
    keys = headline_keys(result, designs)
    print_table(f"Headline keys (design: {keys['design']})", [(k, str(v)) for k, v in keys.items()])
    return 0


FIGURE_LABELS = (
    ("ring_log10p_100", "ring 100%"),
    ("ring_log10p_low", "ring 20%"),
    ("ring_named_log10p_100", "ring named 100% (ring keys)"),
    ("ring_named_log10p_low", "ring named 20% (ring keys)"),
    ("best_member_corrected_log10p_100", "best single member 100% (Holm)"),
    ("base_free_log10p_100", "base-free 100%"),
    ("base_free_log10p_low", "base-free 20%"),
    ("scrub_log10p", "scrub"),
    ("neutralize_log10p", "neutralize (black-box)"),
    ("paraphrase_log10p", "paraphrase 30%"),
    ("continued_log10p", "continued clean training"),
    ("collision_log10p", "collision 50%"),
    ("null_min_log10p", "null minimum (corrected)"),
    ("null_min_log10p_raw", "null minimum (raw, any test)"),
)


def table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    designs = result["designs"]
    names = list(designs)
    rows = [("", "  ".join(f"{name:>10}" for name in names))]
    for key, label in FIGURE_LABELS:
        cells = []
        for name in names:
            value = designs[name]["figures"].get(key)
            cells.append(f"{value:10.2f}" if isinstance(value, float) else f"{'-':>10}")
        rows.append((label, "  ".join(cells)))
    rows.append(("ppl_cost", "  ".join(f"{designs[n]['ppl_cost']:10.3f}" for n in names)))
    return rows


def headline_keys(result: dict[str, Any], designs: list[str]) -> dict[str, Any]:
    """The issue's keys, for the chosen design (the first design run when it did not run)."""
    chosen = CHOSEN if CHOSEN in designs else designs[0]
    figures = result["designs"][chosen]["figures"]
    keys: dict[str, Any] = {"design": chosen}
    pairs = (
        ("ring100_log10p_100", "ring_log10p_100"),
        ("ring100_log10p_20", "ring_log10p_low"),
        ("scrub_log10p_100", "scrub_log10p"),
        ("neutralize_log10p_100", "neutralize_log10p"),
        ("paraphrase_log10p_100", "paraphrase_log10p"),
        ("continued_log10p_100", "continued_log10p"),
        ("collision_log10p_50", "collision_log10p"),
    )
    for key, source in pairs:
        keys[key] = figures.get(source)
    keys["ring100_named"] = figures.get("ring_named_100")
    keys["ring100_named_membership"] = "supplied by the benchmark, not grouped by the monitor"
    nulls = [d["figures"]["null_min_log10p"] for d in result["designs"].values()]
    keys["null_min_p"] = 10 ** min(nulls)
    keys["ppl_cost"] = result["designs"][chosen]["ppl_cost"]
    for name, design in result["designs"].items():
        for key, value in design["figures"].items():
            keys[f"{name}.{key}"] = value
        keys[f"{name}.ppl_cost"] = design["ppl_cost"]
    return keys


if __name__ == "__main__":
    sys.exit(main())
