"""Radioactivity: does a student distilled from our watermarked outputs carry the watermark?

The loop (distillguard.experiments.distill): the embedded model serves behind the gateway, and
a harvester tenant collects full-length completions (watermarked with its key). A clean base
GPT-2 is pretrained once on held-out prose and tinyshakespeare. Students fine-tune copies of the
base on 2M tokens of the harvest mixed with clean text at several contamination levels. Each
student is audited against 100 tenant keys:
- black-box: 2,000 queries with the harvester's logged prompts, 100 tokens each; the headline
  is the focused test (tuples the teacher explains better than the clean base, exact binomial),
  the plain test beside it;
- open weights: 20,000 teacher-forced contexts; the headline is the shift of green mass from
  the clean base (Chernoff bound), the top-1 and mass tests beside it.

Controls: clean students (contamination 0, several seeds), the teacher itself (its own,
unwatermarked predictions, alone and as a shift from the base), and watermarked texts sent as
prompts to a clean student.

    .venv/bin/python benchmarks/radioactivity.py [--json] [--harvest 2000] [--clean-seeds 5]
        [--natural-length] [--train-tokens 2000000] [--audit-max-tokens 100]
        [--only 0.05 --seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

from _common import data_dir, print_table
from distillguard.engine.corpus import build_corpus
from distillguard.engine.model import load_model
from distillguard.experiments.distill import (
    ExperimentConfig,
    StudentConfig,
    audit_student,
    harvest,
    new_home,
    pretrain_base,
    sample,
    train_student,
)
from distillguard.forensics.radioactivity import (
    black_box_focused_test,
    black_box_test,
    open_weights_test,
)

CONTAMINATIONS = (1.0, 0.2, 0.05, 0.01, 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--harvest", type=int, default=2000, help="harvest queries")
    parser.add_argument("--clean-seeds", type=int, default=5)
    parser.add_argument("--save", help="also write the JSON object to this file")
    parser.add_argument(
        "--audit-max-tokens", type=int, default=100, help="black-box completion length"
    )
    parser.add_argument(
        "--only",
        type=float,
        default=None,
        help="explore one contamination level (e.g. 0.05) over --seeds students; no controls",
    )
    parser.add_argument("--seeds", type=int, default=3, help="students per level with --only")
    parser.add_argument(
        "--train-tokens", type=int, default=2_000_000, help="fine-tuning tokens per student"
    )
    parser.add_argument(
        "--natural-length",
        action="store_true",
        help="the harvester takes completions as the model ends them (most within 20 tokens) "
        "instead of asking for full-length ones (ignore_eos)",
    )
    args = parser.parse_args()

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    config = ExperimentConfig()
    config = replace(
        config,
        audit_max_tokens=args.audit_max_tokens,
        harvest_ignore_eos=not args.natural_length,
    )
    corpus = build_corpus()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(corpus.train))[: args.harvest]
    prompts = [" ".join(corpus.train[int(i)].split()[:12]) for i in order]
    run = harvest(prompts, new_home(), config, progress=log)
    log(f"harvested {len(run.outputs)} completions in {run.seconds:.0f} s")
    harvested_ids = [
        p + o for p, o in zip(run.encode(run.prompts), run.encode(run.outputs), strict=True)
    ]
    shakespeare = (data_dir() / "karpathy_char-rnn__input.txt").read_text().split("\n\n")
    clean = run.encode(list(corpus.validation) + shakespeare)
    vocab, eos = int(run.scheme.vocab_size or 0), int(run.tokenizer.eos_token_id)
    teacher = load_model(None).model.float()
    student = replace(StudentConfig(), train_tokens=args.train_tokens)
    base = pretrain_base(clean, student, vocab_size=vocab, end_of_text=eos)
    log(f"base pretrained ({student.base_tokens:,} clean tokens)")
    harvester = run.harvester.key_id

    rows: list[dict[str, Any]] = []
    students: dict[str, Any] = {}
    plan = [(c, 0) for c in CONTAMINATIONS] + [(0.0, s) for s in range(1, args.clean_seeds)]
    if args.only is not None:
        plan = [(args.only, seed) for seed in range(args.seeds)]
    for contamination, seed in plan:
        model = train_student(
            harvested_ids,
            clean,
            contamination,
            replace(student, seed=seed),
            vocab_size=vocab,
            end_of_text=eos,
            base=base,
        )
        audit = audit_student(model, run, config, reference=base, teacher=teacher, seed=seed)
        students[f"{contamination}-{seed}"] = model
        shift, focused = audit.shift, audit.focused
        assert shift is not None and focused is not None  # audited with teacher and reference
        row = {
            "contamination": contamination,
            "seed": seed,
            # black-box: the focused test (tuples the teacher explains better than the base)
            "closed_log10_p": focused.for_key(harvester).log10_p,
            "closed_green": focused.for_key(harvester).score,
            "closed_scored": focused.scored,
            "closed_best": focused.attribution.best.tenant,
            "closed_min_log10_p_any_key": min(d.log10_p for d in focused.detections),
            "closed_corrected_log10_p": focused.attribution.ranking[0].adjusted_log10_p,
            "plain_log10_p": audit.black_box.for_key(harvester).log10_p,
            "plain_scored": audit.black_box.scored,
            "plain_best": audit.black_box.attribution.best.tenant,
            "plain_min_log10_p_any_key": min(d.log10_p for d in audit.black_box.detections),
            # open weights: the shift from the clean base the students were fine-tuned from
            "open_log10_p": shift.for_key(harvester).log10_p,
            "open_scored": shift.scored,
            "open_best": shift.attribution.best.tenant,
            "open_min_log10_p_any_key": min(d.log10_p for d in shift.detections),
            "open_corrected_log10_p": shift.attribution.ranking[0].adjusted_log10_p,
            "top1_log10_p": audit.top1.for_key(harvester).log10_p,
            "top1_best": audit.top1.attribution.best.tenant,
            "top1_min_log10_p_any_key": min(d.log10_p for d in audit.top1.detections),
            "mass_log10_p": audit.mass.for_key(harvester).log10_p,
            "closed_by_queries": audit.black_box_by_queries,
            "open_by_contexts": audit.open_by_contexts,
        }
        rows.append(row)
        log(
            f"contamination {contamination:.0%} seed {seed}: "
            f"black-box p 1e{row['closed_log10_p']:.1f}"
            f" (best {row['closed_best']}), open p 1e{row['open_log10_p']:.1f}"
            f" (best {row['open_best']})"
        )

    if args.only is not None:
        print(json.dumps({"rows": rows, "audit_max_tokens": config.audit_max_tokens}, indent=2))
        return 0
    setup = {
        "harvest_full_length": config.harvest_ignore_eos,
        "harvest_output_tokens": sum(len(ids) for ids in run.encode(run.outputs)),
        "train_tokens": student.train_tokens,
        "audit_max_tokens": config.audit_max_tokens,
    }

    # controls: the teacher's own (unwatermarked) predictions and samples, and watermarked
    # prompts sent to a clean student, each also with the base as the reference
    teacher_open = open_weights_test(
        teacher,
        run.scheme,
        run.keys,
        harvested_ids,
        reference=base,
        max_contexts=config.open_contexts,
    )
    teacher_top1, teacher_shift = teacher_open.top1, teacher_open.shift
    assert teacher_shift is not None
    teacher_prompts = run.encode(run.prompts)[: config.audit_queries]
    teacher_outputs = sample(teacher, teacher_prompts, config.audit_max_tokens)
    teacher_closed = black_box_test(run.scheme, run.keys, teacher_prompts, teacher_outputs)
    teacher_focused = black_box_focused_test(
        run.scheme, run.keys, teacher_prompts, teacher_outputs, teacher, base
    )
    watermarked_prompts = [ids[-48:] for ids in run.encode(run.outputs)][: config.audit_queries]
    clean_student = students["0.0-0"]
    echo_outputs = sample(clean_student, watermarked_prompts, config.audit_max_tokens)
    echo = black_box_test(run.scheme, run.keys, watermarked_prompts, echo_outputs)
    echo_focused = black_box_focused_test(
        run.scheme, run.keys, watermarked_prompts, echo_outputs, teacher, base
    )
    controls = {
        "teacher_open_min_log10_p": min(d.log10_p for d in teacher_top1.detections),
        "teacher_shift_min_log10_p": min(d.log10_p for d in teacher_shift.detections),
        "teacher_closed_min_log10_p": min(d.log10_p for d in teacher_closed.detections),
        "teacher_focused_min_log10_p": min(d.log10_p for d in teacher_focused.detections),
        "watermarked_prompts_min_log10_p": min(d.log10_p for d in echo.detections),
        "watermarked_prompts_focused_min_log10_p": min(d.log10_p for d in echo_focused.detections),
    }
    corrected_controls = [
        result.attribution.ranking[0].adjusted_log10_p
        for result in (
            teacher_top1,
            teacher_shift,
            teacher_closed,
            teacher_focused,
            echo,
            echo_focused,
        )
    ]
    clean_rows = [row for row in rows if row["contamination"] == 0.0]
    # what an audit reports is the best tenant's p corrected for the 100 tenants tested (Holm);
    # the smallest raw p among 100 keys x 8 runs is expected near 1/800 under the null
    null_min = min(
        [r["closed_corrected_log10_p"] for r in clean_rows]
        + [r["open_corrected_log10_p"] for r in clean_rows]
        + corrected_controls
    )
    null_min_raw = min(
        [r["closed_min_log10_p_any_key"] for r in clean_rows]
        + [r["open_min_log10_p_any_key"] for r in clean_rows]
        + [r["top1_min_log10_p_any_key"] for r in clean_rows]
        + [r["plain_min_log10_p_any_key"] for r in clean_rows]
        + list(controls.values())
    )

    def at(contamination: float, key: str) -> float:
        return float(
            next(r[key] for r in rows if r["contamination"] == contamination and r["seed"] == 0)
        )

    attributed = [
        r["closed_best"] == "harvester" and r["open_best"] == "harvester"
        for r in rows
        if r["contamination"] >= 0.05
    ]
    report = {
        "closed_p_100": 10 ** at(1.0, "closed_log10_p"),
        "closed_p_20": 10 ** at(0.2, "closed_log10_p"),
        "closed_p_5": 10 ** at(0.05, "closed_log10_p"),
        "closed_p_1": 10 ** at(0.01, "closed_log10_p"),
        "open_p_100": 10 ** at(1.0, "open_log10_p"),
        "open_p_20": 10 ** at(0.2, "open_log10_p"),
        "open_p_5": 10 ** at(0.05, "open_log10_p"),
        "open_p_1": 10 ** at(0.01, "open_log10_p"),
        "closed_log10_p_5": at(0.05, "closed_log10_p"),
        "open_log10_p_5": at(0.05, "open_log10_p"),
        "open_top1_p_5": 10 ** at(0.05, "top1_log10_p"),
        "open_statistic": "green mass shift from the clean base (Chernoff bound)",
        "closed_plain_p_5": 10 ** at(0.05, "plain_log10_p"),
        "closed_statistic": "green tuples the teacher explains better than the base (exact)",
        "null_min_p": 10**null_min,
        "null_min_p_uncorrected": 10**null_min_raw,
        "attribution_correct": all(attributed),
        "tenants": config.tenants,
        "context_width": run.scheme.context_width,
        "harvest_completions": len(run.outputs),
        **setup,
        "rows": rows,
        "controls": controls,
        "seconds": time.perf_counter() - started,
    }
    if args.save:
        with open(args.save, "w") as handle:
            json.dump(report, handle, indent=2)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_table(
        f"Radioactivity (h = {run.scheme.context_width}, {config.tenants} tenants; log10 p of the "
        "harvester's key, best key in brackets)",
        [
            (
                f"{r['contamination']:.0%} seed {r['seed']}",
                f"black-box focused {r['closed_log10_p']:7.2f} [{r['closed_best']}]  "
                f"plain {r['plain_log10_p']:7.2f}   "
                f"open shift {r['open_log10_p']:8.2f} [{r['open_best']}]   "
                f"top-1 {r['top1_log10_p']:7.2f}   mass {r['mass_log10_p']:7.2f}   "
                f"by queries {r['closed_by_queries']}",
            )
            for r in rows
        ],
    )
    print_table(
        "Controls (smallest log10 p over all 100 keys)",
        [(name, f"{value:.2f}") for name, value in controls.items()]
        + [
            ("null minimum, corrected over the tenants", f"{null_min:.2f}"),
            ("null minimum, any single key", f"{null_min_raw:.2f}"),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
