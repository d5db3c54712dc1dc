"""The distillation loop runs end to end at toy scale (the benchmark runs it at full scale)."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("starlette")

from distillguard.experiments.distill import (
    ExperimentConfig,
    StudentConfig,
    audit_student,
    harvest,
    pretrain_base,
    train_student,
)
from distillguard.store import connect
from distillguard.store.chain import verify_chain


def test_harvest_train_and_audit_at_toy_scale(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = ExperimentConfig(
        harvest_max_tokens=24, audit_queries=20, audit_max_tokens=12, open_contexts=300, tenants=5
    )
    prompts = [f"The module number {index} provides" for index in range(24)]
    run = harvest(prompts, tmp_path, config, model=tiny_model_dir)
    assert len(run.outputs) == 24 and len(run.keys) == 5
    assert run.harvester.tenant == "harvester"
    with closing(connect(tmp_path)) as connection:
        assert verify_chain(connection).ok  # the harvest is metered and audited like any traffic
    ids = [p + o for p, o in zip(run.encode(run.prompts), run.encode(run.outputs), strict=True)]
    student = StudentConfig(
        layers=1, width=32, heads=2, context=64, base_tokens=3000, train_tokens=3000, batch_size=4
    )
    vocab, eos = int(run.scheme.vocab_size or 0), int(run.tokenizer.eos_token_id)
    base = pretrain_base(ids, student, vocab_size=vocab, end_of_text=eos)
    model = train_student(ids, ids, 0.5, student, vocab_size=vocab, end_of_text=eos, base=base)
    audit = audit_student(model, run, config, reference=base)
    assert audit.black_box.attribution.keys_tested == 5
    assert audit.top1.scored <= 300 and audit.mass.scored == 300
    assert audit.shift is not None and audit.shift.scored == 300
    assert set(audit.black_box_by_queries) == set()  # 20 queries: below the first budget
    assert set(audit.open_by_contexts) == {300}  # below the first partial budget: the full one
    assert audit_student(model, run, config).shift is None


def test_contamination_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="contamination"):
        train_student([], [[1, 2]], 1.5, StudentConfig(), vocab_size=10, end_of_text=0)


def test_sampling_keeps_prompt_and_completion_inside_the_context() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from distillguard.experiments.distill import sample

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, eos_token_id=0)
    )
    outputs = sample(model, [list(range(1, 30)), [5, 6]], max_tokens=40, seed=3)
    assert len(outputs) == 2
    assert all(len(output) <= 15 for output in outputs)
