"""`distillguard demo`: the whole story on the embedded model, in one command.

1. Serve: the embedded model behind the gateway (in-process), with the harvest monitor on.
   A policy keeps serving blocked accounts, so that evidence accumulates.
2. Harvest: a tenant sends thousands of templated, step-by-step requests for the longest
   completions the model allows. The monitor flags it; every tier change is recorded.
3. Distill: a student (a small GPT-2) fine-tunes a clean base on the harvested outputs.
4. Audit: black-box (the student's completions to the harvester's logged prompts) and open
   weights (its predictions on the logged outputs), against every tenant's key. The clean
   base is the control.
5. Report: the evidence report (HTML and JSON) in the output folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distillguard.engine.corpus import Corpus, build_corpus
from distillguard.experiments.distill import (
    ExperimentConfig,
    Harvest,
    StudentConfig,
    harvest,
    pretrain_base,
    sample,
    train_student,
)
from distillguard.forensics.audit import AuditOutcome
from distillguard.forensics.radioactivity import black_box_test, open_weights_test
from distillguard.forensics.report import write_report
from distillguard.gateway.policy import DEFAULT_TIERS, Tier
from distillguard.monitor.history import TierHistory
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.store import connect

__all__ = ["run_demo"]

TEMPLATE = "Explain step by step, with your reasoning: {q}"

Say = Callable[[str], None]


def run_demo(
    output: Path,
    *,
    queries: int = 3000,
    tenants: int = 20,
    shakespeare: Path | None = None,
    say: Say = print,
    bars: bool = True,
) -> Path:
    """Run the demo into `output` (a new or empty folder); returns the report's path."""
    started = time.perf_counter()
    logging.getLogger("distillguard.monitor").setLevel(logging.ERROR)  # reported below instead
    _quiet_transformers()
    output.mkdir(parents=True, exist_ok=True)
    home = output / "state"
    home.mkdir(exist_ok=True)
    config = ExperimentConfig(
        harvest_queries=queries, harvest_max_tokens=200, tenants=tenants, audit_queries=queries
    )

    say("1/5 serve: the embedded model behind the gateway, the harvest monitor watching")
    corpus = build_corpus()
    prompts = _harvest_prompts(corpus, queries)
    history = TierHistory(lambda: connect(home, shared=True))
    monitor = Monitor(RiskModel.load(), on_tier_change=history.record)
    monitor.start()

    say(f"2/5 harvest: one tenant sends {queries:,} templated step-by-step requests")
    run = _harvest(prompts, home, config, monitor, say, bars=bars)

    say("3/5 distill: a student fine-tunes a clean base on the harvested outputs")
    harvested = [
        p + o for p, o in zip(run.encode(run.prompts), run.encode(run.outputs), strict=True)
    ]
    clean_texts = list(corpus.validation)
    if shakespeare is not None and shakespeare.is_file():
        clean_texts += shakespeare.read_text(encoding="utf-8").split("\n\n")
    clean = run.encode(clean_texts)
    base, student = _distill(run, harvested, clean, output / "student", bars=bars)

    say(
        "4/5 audit: black-box and open weights (shift from the clean base), every tenant's key,"
        " the clean base as control"
    )
    outcome = _audit(run, config, harvested, student, base, output / "student")
    _say_results(outcome, say)
    audit_json = outcome.to_json() | {"command": f"distillguard demo --out {output}"}
    (output / "audit.json").write_text(json.dumps(audit_json, indent=2) + "\n")

    say("5/5 report")
    html_path, json_path = write_report(audit_json, home, output / "evidence-report.html")
    say(f"done in {time.perf_counter() - started:.0f} s: {html_path} (and {json_path.name})")
    return html_path


def _harvest_prompts(corpus: Corpus, queries: int) -> list[str]:
    """`queries` templated requests, each on the first words of a random training paragraph."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(corpus.train))[:queries]
    return [TEMPLATE.format(q=" ".join(corpus.train[int(i)].split()[:10])) for i in order]


def _demo_tiers() -> dict[str, Tier]:
    """The default tiers, except that a throttled account keeps its rate and a blocked one is
    still served (without extras), so that evidence accumulates."""
    return dict(DEFAULT_TIERS) | {
        "throttle": replace(DEFAULT_TIERS["throttle"], rate_factor=1.0),
        # keep serving, without extras (the block tier's own limits), so evidence accumulates
        "block": replace(
            DEFAULT_TIERS["block"], block=False, max_n=1, max_top_logprobs=0, max_tokens=256
        ),
    }


def _harvest(
    prompts: list[str],
    home: Path,
    config: ExperimentConfig,
    monitor: Monitor,
    say: Say,
    *,
    bars: bool,
) -> Harvest:
    """The harvest through the monitored gateway; says which accounts the monitor flagged."""
    with tqdm(total=config.harvest_queries, disable=not bars, unit="req") as bar:
        run = harvest(prompts, home, config, monitor=monitor, tiers=_demo_tiers(), tick=bar.update)
    monitor.close()
    flagged = [r for r in monitor.accounts() if r.flagged_at is not None]
    for report in flagged:
        say(
            f"    flagged {report.account} ({report.tenant}) at request {report.flagged_at}, "
            f"now {report.tier}: {'; '.join(report.reasons)}"
        )
    return run


def _distill(
    run: Harvest,
    harvested: list[list[int]],
    clean: list[list[int]],
    student_dir: Path,
    *,
    bars: bool,
) -> tuple[Any, Any]:
    """A clean base pretrained on `clean`, and the student fine-tuned from it on the harvest;
    returns (base, student)."""
    vocab, eos = int(run.scheme.vocab_size or 0), int(run.tokenizer.eos_token_id)
    student_config = StudentConfig(base_tokens=1_500_000, train_tokens=500_000)
    tokens_per_step = student_config.batch_size * (student_config.context + 1)
    base_steps = student_config.base_tokens // tokens_per_step
    with tqdm(total=base_steps, disable=not bars, unit="step", desc="clean base") as bar:
        base = pretrain_base(
            clean, student_config, vocab_size=vocab, end_of_text=eos, tick=bar.update
        )
    steps = student_config.train_tokens // tokens_per_step
    with tqdm(total=steps, disable=not bars, unit="step", desc="student") as bar:
        student = train_student(
            harvested,
            clean,
            1.0,
            student_config,
            vocab_size=vocab,
            end_of_text=eos,
            base=base,
            output_dir=student_dir,
            tick=bar.update,
        )
    return base, student


def _audit(
    run: Harvest,
    config: ExperimentConfig,
    harvested: Sequence[Sequence[int]],
    student: Any,
    base: Any,
    student_dir: Path,
) -> AuditOutcome:
    """Black-box and open-weights tests of the student (the base as the shift's reference)
    and, as the control, of the base."""
    prompt_ids = run.encode(run.prompts)[: config.audit_queries]

    def both(model: Any, reference: Any = None) -> list[Any]:
        outputs = sample(model, prompt_ids, config.audit_max_tokens)
        closed = black_box_test(run.scheme, run.keys, prompt_ids, outputs)
        open_weights = open_weights_test(
            model,
            run.scheme,
            run.keys,
            harvested,
            reference=reference,
            max_contexts=config.open_contexts,
        )
        return [closed, open_weights.all()[0]]

    return AuditOutcome(
        mode="black-box",
        suspect=f"the student distilled from the harvest ({student_dir})",
        reference="the clean base model",
        results=both(student, reference=base),
        controls=both(base),
        parameters={
            "scheme_fingerprint": run.scheme.fingerprint,
            "gamma": run.scheme.gamma,
            "delta": run.scheme.delta,
            "context_width": run.scheme.context_width,
            "tenants_tested": len(run.keys),
            "queries": len(prompt_ids),
            "max_tokens": config.audit_max_tokens,
            "contexts": config.open_contexts,
        },
    )


def _say_results(outcome: AuditOutcome, say: Say) -> None:
    for label, result in [("suspect", r) for r in outcome.results] + [
        ("control", r) for r in outcome.controls
    ]:
        best = result.attribution.ranking[0]
        say(
            f"    {label} {result.mode} {result.statistic}: best {best.detection.tenant}, "
            f"log10 p {best.detection.log10_p:.1f} ({best.adjusted_log10_p:.1f} corrected)"
        )


def _quiet_transformers() -> None:
    """transformers' warnings are for developers: "Token indices sequence length is longer than
    the specified maximum" (the corpus is tokenized whole, then cut into windows) and
    "loss_type=None was set in the config" (the students' config) say nothing to a demo user."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
