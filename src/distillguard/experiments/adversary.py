"""A distiller who fights back: attacks on the watermark as named steps of the distillation loop.

One world is shared by every design and attack: the teacher (the embedded model), the clean
text, a clean base pretrained once, the clean null students, and a second provider whose
watermarked harvest feeds the collision attack and one more null student. Per watermark
design (`watermark.scheme.layered_scheme`: tenant, split, stacked) the teacher is harvested
once, by a ring of accounts with distinct tenant keys (query i through account i mod ring
size), and every attack starts from that harvest:

- ``ring``: students fine-tuned on the harvest at 100% and at a low contamination;
- ``scrub`` (watermark stealing, Jovanovic et al. 2024): the distiller counts, per context
  (the previous token, h = 1), how often each token follows it in the harvest and how often its
  base model expects it to; tokens seen at least `scrub_min_count` times at `scrub_ratio` x
  the base's expectation are flagged as green, and every flagged token of the harvest is
  resampled from the base (flagged tokens excluded) before training;
- ``neutralize`` (Pan et al. 2025): the 100% student, sampled with the same estimate
  subtracted from its logits (log of the ratio, capped): only black-box audits see it;
- ``paraphrase``: the base resamples `paraphrase_share` of the harvested output tokens in
  context;
- ``continued``: the 100% student fine-tuned again on `continued_tokens` clean tokens;
- ``collision``: half our harvest, half the second provider's (another key and scheme).

Resampling is teacher-forced: a replaced token is drawn from the base given the original prefix,
and the rest of the text is kept (one base pass per document).

Findings per suspect, each with its null (`forensics.radioactivity.layers`): the provider
layer (focused black-box, exact; green-mass shift from the base, Chernoff bound; base-free: the
plain black-box count, exact, and the suspect's own green mass and top-1), the ring's tenant
keys summed, and each tenant key (the ring's and `outsiders` others, Holm-corrected). The tenant
design has no provider layer: its "trained on our outputs" finding is the ring of every
harvesting account. The ring's membership is supplied by the harness (the monitor does not
group rings without templates yet).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.experiments.attacks import paraphrase, perplexity, scrub, steal
from distillguard.experiments.distill import (
    StudentConfig,
    pretrain_base,
    sample,
    train_student,
)
from distillguard.forensics.radioactivity.black_box import black_box_tuples, focused_tuples
from distillguard.forensics.radioactivity.layers import (
    LayerFinding,
    layer_findings,
    ring_finding,
)
from distillguard.forensics.radioactivity.teacher_forcing import Readings, read
from distillguard.keys.derive import derive_provider_key, derive_tenant_key
from distillguard.keys.secret import MasterSecret
from distillguard.watermark import stats
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import Layering, SchemeConfig, layered_scheme

__all__ = [
    "ATTACKS",
    "DESIGNS",
    "QUICK",
    "AdversaryConfig",
    "World",
    "bonferroni_best",
    "build_world",
    "harvest_documents",
    "run_adversary",
]

DESIGNS = tuple(layering.value for layering in Layering)
ATTACKS = ("ring", "scrub", "neutralize", "paraphrase", "continued", "collision")
Progress = Callable[[str], None]
Documents = list[list[int]]


@dataclass(frozen=True)
class AdversaryConfig:
    harvest_queries: int = 2000
    harvest_max_tokens: int = 128
    ring_size: int = 100  # accounts the harvest is spread over, one tenant key each
    outsiders: int = 100  # other tenants' keys tested beside the ring's
    low_contamination: float = 0.2
    student: StudentConfig = field(
        default_factory=lambda: StudentConfig(base_tokens=2_000_000, train_tokens=1_000_000)
    )
    continued_tokens: int = 1_000_000
    null_students: int = 5  # clean fine-tunes; the second provider's student makes one more
    second_provider_queries: int = 1000
    audit_queries: int = 2000
    audit_max_tokens: int = 100
    open_contexts: int = 20_000
    quality_queries: int = 200  # perplexity: watermarked against unwatermarked teacher samples
    paraphrase_share: float = 0.3
    scrub_min_count: int = 2
    scrub_ratio: float = 1.5
    neutralize_cap: float = 2.0


# What fits on 2 shared cores in about an hour (run with OMP_NUM_THREADS=1 on a shared
# machine: oversubscribed torch threads make sampling ~8x slower): smaller base, fine-tunes
# and audits.
QUICK = AdversaryConfig(
    harvest_queries=1000,
    student=StudentConfig(base_tokens=300_000, train_tokens=100_000),
    continued_tokens=100_000,
    second_provider_queries=500,
    audit_queries=500,
    audit_max_tokens=64,
    open_contexts=10_000,
    quality_queries=100,
)

# The second provider: another key and another scheme (gamma 0.5, two tokens of context).
SECOND_PROVIDER_SCHEME = SchemeConfig(gamma=0.5, delta=2.0, context_width=2)


@dataclass
class World:
    """What every design and attack shares."""

    loaded: Any  # the teacher, a `LoadedModel`
    teacher: Any
    base: Any
    prompt_ids: list[list[int]]
    clean: Documents
    vocab: int
    eos: int
    provider: WatermarkKey
    ring: list[WatermarkKey]
    outsiders: list[WatermarkKey]
    second_provider: WatermarkKey


def build_world(
    config: AdversaryConfig,
    prompts: Sequence[str],
    clean_texts: Sequence[str],
    *,
    progress: Progress | None = None,
) -> World:
    """Load the teacher, encode the texts, derive the keys and pretrain the shared base."""
    from distillguard.engine.model import load_model

    loaded = load_model(None)
    tokenizer = loaded.tokenizer

    def encode(texts: Sequence[str]) -> Documents:
        ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [list(row) for row in ids]

    # a fixed master secret: the experiment is reproducible, and no real key is involved
    master = MasterSecret(hashlib.sha256(b"distillguard/adversary").digest(), "adversary")
    names = [f"ring-{index:03d}" for index in range(config.ring_size)]
    others = [f"tenant-{index:03d}" for index in range(config.outsiders)]
    clean = encode(clean_texts)
    vocab, eos = int(loaded.vocab_size), int(tokenizer.eos_token_id)
    base = pretrain_base(clean, config.student, vocab_size=vocab, end_of_text=eos)
    if progress is not None:
        progress(f"base pretrained ({config.student.base_tokens:,} clean tokens)")
    second = hashlib.sha256(b"distillguard/adversary/second-provider").digest()
    return World(
        loaded=loaded,
        teacher=loaded.model.float(),
        base=base,
        prompt_ids=encode(prompts),
        clean=clean,
        vocab=vocab,
        eos=eos,
        provider=derive_provider_key(master).watermark_key(),
        ring=[derive_tenant_key(master, name).watermark_key() for name in names],
        outsiders=[derive_tenant_key(master, name).watermark_key() for name in others],
        second_provider=WatermarkKey("wk_second_provider", second, tenant="second-provider"),
    )


def harvest_documents(
    world: World,
    scheme: SchemeConfig,
    prompts: Sequence[Sequence[int]],
    keys: Sequence[WatermarkKey | None],
    max_tokens: int,
    *,
    provider: WatermarkKey | None = None,
    concurrency: int = 64,
) -> tuple[Documents, list[int]]:
    """Full-length completions of `prompts`, query i marked with `keys[i]`: the documents
    (prompt + output ids) and each prompt's length."""
    from distillguard.engine.engine import Engine
    from distillguard.engine.params import GenerationRequest, SamplingParams

    async def run_all(engine: Engine) -> list[Any]:
        limit = asyncio.Semaphore(concurrency)

        async def one(index: int) -> Any:
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, seed=index)
            request = GenerationRequest(
                prompt=list(prompts[index]), params=params, watermark_key=keys[index]
            )
            async with limit:
                return await engine.generate(request)

        return list(await asyncio.gather(*(one(index) for index in range(len(prompts)))))

    with Engine(world.loaded, scheme=scheme, provider_key=provider) as engine:
        completions = asyncio.run(run_all(engine))
    documents = [
        list(prompt) + list(completion.choices[0].token_ids)
        for prompt, completion in zip(prompts, completions, strict=True)
    ]
    return documents, [len(prompt) for prompt in prompts]


# -- audits ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What one suspect gave: key-independent tuples (black box) and readings (open weights)."""

    focused: npt.NDArray[np.uint64] | None
    plain: npt.NDArray[np.uint64] | None
    readings: Readings | None


def black_box_evidence(
    world: World,
    model: Any,
    scheme: SchemeConfig,
    config: AdversaryConfig,
    *,
    seed: int,
    logit_bias: Callable[[Any], Any] | None = None,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The suspect sampled on the harvest's prompts: focused and plain tuples."""
    prompts = world.prompt_ids[: config.audit_queries]
    outputs = sample(model, prompts, config.audit_max_tokens, seed=seed, logit_bias=logit_bias)
    focused = focused_tuples(scheme, prompts, outputs, world.teacher, world.base)
    return focused.packed, black_box_tuples(scheme, prompts, outputs).packed


def open_evidence(
    world: World, model: Any, scheme: SchemeConfig, documents: Documents, config: AdversaryConfig
) -> Readings:
    return read(
        model,
        world.base,
        documents,
        scheme,
        max_contexts=config.open_contexts,
        top_k=32,
        batch_size=16,
    )


def bonferroni_best(log10_ps: Sequence[float]) -> float:
    """The best of several reported tests, Bonferroni-corrected over all of them."""
    return stats.bonferroni(min(log10_ps), len(log10_ps))[1]


def score(
    world: World, scheme: SchemeConfig, evidence: Evidence, *, tenant_findings: bool = True
) -> dict[str, Any]:
    """Every finding of one suspect under one design, as log10 p (and the raw findings)."""
    provider = world.provider if scheme.has_provider_layer else None
    found: dict[str, LayerFinding] = {}

    def provider_level(
        packed: npt.NDArray[np.uint64],
        weights: npt.NDArray[np.float64] | None = None,
        statistic: str = "green tuples",
    ) -> LayerFinding:
        if provider is not None:
            return layer_findings(
                scheme,
                [provider],
                packed,
                "provider",
                provider=provider,
                weights=weights,
                statistic=statistic,
            )[0]
        # no provider layer: "trained on our outputs" is the ring of every harvesting account
        return ring_finding(scheme, world.ring, packed, provider=None, weights=weights)

    if evidence.focused is not None and evidence.plain is not None:
        found["provider_focused"] = provider_level(evidence.focused)
        found["provider_plain"] = provider_level(evidence.plain)  # base-free
        found["ring_focused"] = ring_finding(
            scheme, world.ring, evidence.focused, provider=provider
        )
    readings = evidence.readings
    if readings is not None and readings.shift is not None:
        candidates = readings.candidates
        found["provider_shift"] = provider_level(candidates, readings.shift, "green mass shift")
        found["provider_mass"] = provider_level(  # base-free
            candidates, readings.suspect_mass, "green mass"
        )
        found["provider_top1"] = provider_level(readings.top1)  # base-free, exact
        found["ring_shift"] = ring_finding(
            scheme, world.ring, candidates, provider=provider, weights=readings.shift
        )
    result: dict[str, Any] = {name: finding.log10_p for name, finding in found.items()}
    if tenant_findings and evidence.focused is not None:
        keys = world.ring + world.outsiders
        members = layer_findings(scheme, keys, evidence.focused, "tenant", provider=provider)
        adjusted = stats.holm([finding.log10_p for finding in members])
        best = int(np.argmin([finding.log10_p for finding in members]))
        result["best_tenant_is_ring_member"] = best < len(world.ring)
        result["best_tenant_corrected"] = adjusted[best]
    result["findings"] = {name: finding.to_dict() for name, finding in found.items()}
    return result


def headline(scored: dict[str, Any], *, black_box_only: bool = False) -> float:
    """The provider-level figure: the better of the focused black-box and the shift, Bonferroni
    over the two (black-box alone for neutralization, which only changes sampling)."""
    if black_box_only:
        return float(scored["provider_focused"])
    return bonferroni_best([scored["provider_focused"], scored["provider_shift"]])


def ring_named(scored: dict[str, Any]) -> float:
    """The ring's tenant keys together: the better of its two tests, Bonferroni over both."""
    return bonferroni_best([scored["ring_focused"], scored["ring_shift"]])


def base_free(scored: dict[str, Any]) -> float:
    """The provider-level figure without the suspect's base: plain black-box, top-1, and the
    suspect's own green mass, Bonferroni over the three."""
    return bonferroni_best(
        [scored["provider_plain"], scored["provider_top1"], scored["provider_mass"]]
    )


# -- the whole run ---------------------------------------------------------------------------


def run_adversary(
    config: AdversaryConfig,
    prompts: Sequence[str],
    clean_texts: Sequence[str],
    *,
    designs: Sequence[str] = DESIGNS,
    attacks: Sequence[str] = ATTACKS,
    attacks_by_design: dict[str, Sequence[str]] | None = None,
    progress: Progress | None = None,
    on_design: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every attack against every design; per design, the table's figures.

    `attacks_by_design` narrows the attacks of some designs; `on_design` receives the result
    so far after each design (a long run leaves partial results)."""
    started = time.perf_counter()

    def log(message: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - started:6.0f} s] {message}")

    world = build_world(config, prompts, clean_texts, progress=log)
    student = config.student
    queries = config.harvest_queries

    def fine_tune(documents: Documents, contamination: float, seed: int, base: Any = None) -> Any:
        return train_student(
            documents,
            world.clean,
            contamination,
            replace(student, seed=seed),
            vocab_size=world.vocab,
            end_of_text=world.eos,
            base=world.base if base is None else base,
        )

    # shared: the second provider's harvest, the null students and their black-box evidence
    second_prompts = world.prompt_ids[queries : queries + config.second_provider_queries]
    second_docs, _ = harvest_documents(
        world,
        SECOND_PROVIDER_SCHEME,
        second_prompts,
        [world.second_provider] * len(second_prompts),
        config.harvest_max_tokens,
    )
    log(f"second provider harvested ({len(second_docs)} completions)")
    nulls: dict[str, Any] = {"teacher": world.teacher}
    for seed in range(config.null_students):
        nulls[f"clean-{seed}"] = fine_tune([], 0.0, 100 + seed)
    nulls["other-provider"] = fine_tune(second_docs, 1.0, 200)
    log(f"{len(nulls) - 1} null students trained")
    null_black_box = {
        name: black_box_evidence(
            world, model, layered_scheme("tenant").bind(world.vocab), config, seed=7
        )
        for name, model in nulls.items()
    }
    plain_docs, plain_lengths = harvest_documents(
        world,
        layered_scheme("tenant"),
        world.prompt_ids[: config.quality_queries],
        [None] * config.quality_queries,
        config.harvest_max_tokens,
    )
    plain_ppl = perplexity(world.teacher, plain_docs, plain_lengths)
    log(f"null evidence gathered; unwatermarked teacher perplexity {plain_ppl:.2f}")

    shared = _Shared(world, config, fine_tune, nulls, null_black_box, second_docs, plain_ppl, log)
    per_design: dict[str, Any] = {}

    def result() -> dict[str, Any]:
        return {
            "config": _config_dict(config),
            "unwatermarked_perplexity": plain_ppl,
            "designs": per_design,
            "ring_membership": "supplied by the benchmark (the monitor does not group rings yet)",
            "seconds": time.perf_counter() - started,
        }

    for design in designs:
        chosen = (attacks_by_design or {}).get(design, attacks)
        per_design[design] = _run_design(shared, design, [a for a in attacks if a in chosen])
        if on_design is not None:
            on_design(result())
    return result()


@dataclass(frozen=True)
class _Shared:
    """What `run_adversary` prepares once for every design."""

    world: World
    config: AdversaryConfig
    fine_tune: Callable[..., Any]
    nulls: dict[str, Any]
    null_black_box: dict[str, tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]]
    second_docs: Documents
    plain_ppl: float
    log: Progress


def _run_design(shared: _Shared, design: str, attacks: Sequence[str]) -> dict[str, Any]:
    """One design: its harvest, every attack's suspect, the shared nulls, and the figures."""
    world, config, fine_tune, log = shared.world, shared.config, shared.fine_tune, shared.log
    student, queries = config.student, config.harvest_queries
    harvest_prompts = world.prompt_ids[:queries]
    nulls, null_black_box = shared.nulls, shared.null_black_box
    second_docs, plain_ppl = shared.second_docs, shared.plain_ppl
    scheme = layered_scheme(design).bind(world.vocab)
    provider = world.provider if scheme.has_provider_layer else None
    owners = [world.ring[index % config.ring_size] for index in range(queries)]
    documents, lengths = harvest_documents(
        world, scheme, harvest_prompts, owners, config.harvest_max_tokens, provider=provider
    )
    quality = perplexity(
        world.teacher, documents[: config.quality_queries], lengths[: config.quality_queries]
    )
    log(f"{design}: harvested {len(documents)} completions, perplexity {quality:.2f}")
    suspects: dict[str, Evidence] = {}

    def audit(
        name: str,
        model: Any,
        *,
        bias: Callable[[Any], Any] | None = None,
        open_weights: bool = True,
        scheme: SchemeConfig = scheme,
        documents: Documents = documents,
    ) -> None:
        focused, plain = black_box_evidence(world, model, scheme, config, seed=3, logit_bias=bias)
        readings = open_evidence(world, model, scheme, documents, config) if open_weights else None
        suspects[name] = Evidence(focused, plain, readings)
        log(f"{design}: audited {name}")

    full = None
    if "ring" in attacks or "neutralize" in attacks or "continued" in attacks:
        full = fine_tune(documents, 1.0, 0)
        audit("ring_100", full)
    if "ring" in attacks:
        audit("ring_low", fine_tune(documents, config.low_contamination, 1))
    stolen = None
    if "scrub" in attacks or "neutralize" in attacks:
        stolen = steal(
            world.base,
            documents,
            lengths,
            vocab=world.vocab,
            min_count=config.scrub_min_count,
            ratio=config.scrub_ratio,
        )
    if "scrub" in attacks and stolen is not None:
        scrubbed, changed = scrub(world.base, documents, lengths, stolen, end_of_text=world.eos)
        log(f"{design}: scrubbed {changed} tokens ({int(stolen.flagged.sum())} pairs flagged)")
        audit("scrub", fine_tune(scrubbed, 1.0, 2))
    if "neutralize" in attacks and stolen is not None and full is not None:
        import torch

        penalty = torch.from_numpy(stolen.penalty(config.neutralize_cap))
        audit("neutralize", full, bias=lambda last: -penalty[last], open_weights=False)
    if "paraphrase" in attacks:
        rewritten, changed = paraphrase(
            world.base, documents, lengths, config.paraphrase_share, end_of_text=world.eos
        )
        log(f"{design}: paraphrased {changed} tokens")
        audit("paraphrase", fine_tune(rewritten, 1.0, 3))
    if "continued" in attacks and full is not None:
        continued = train_student(
            [],
            world.clean,
            0.0,
            replace(student, train_tokens=config.continued_tokens, seed=4),
            vocab_size=world.vocab,
            end_of_text=world.eos,
            base=full,
        )
        audit("continued", continued)
    if "collision" in attacks:
        half = len(documents) // 2
        mixed = documents[:half] + second_docs[: len(documents) - half]
        audit("collision", fine_tune(mixed, 1.0, 5))

    scored = {name: score(world, scheme, evidence) for name, evidence in suspects.items()}
    null_scores = {}
    for name, model in nulls.items():
        focused, plain = null_black_box[name]
        readings = open_evidence(world, model, scheme, documents, config)
        null_scores[name] = score(world, scheme, Evidence(focused, plain, readings))
    log(f"{design}: nulls scored")
    return {
        "scheme_fingerprint": scheme.fingerprint,
        "perplexity": quality,
        "ppl_cost": quality / plain_ppl - 1,
        "suspects": scored,
        "nulls": null_scores,
        "figures": _figures(scored, null_scores),
    }


def _figures(scored: dict[str, Any], nulls: dict[str, Any]) -> dict[str, Any]:
    """The table's figures for one design (absent when the attack did not run)."""
    figures: dict[str, Any] = {}
    if "ring_100" in scored:
        figures["ring_log10p_100"] = headline(scored["ring_100"])
        figures["ring_named_log10p_100"] = ring_named(scored["ring_100"])
        figures["ring_named_100"] = figures["ring_named_log10p_100"] <= -3.0
        figures["base_free_log10p_100"] = base_free(scored["ring_100"])
        figures["best_member_corrected_log10p_100"] = scored["ring_100"]["best_tenant_corrected"]
    if "ring_low" in scored:
        figures["ring_log10p_low"] = headline(scored["ring_low"])
        figures["ring_named_log10p_low"] = ring_named(scored["ring_low"])
        figures["base_free_log10p_low"] = base_free(scored["ring_low"])
    for attack in ("scrub", "paraphrase", "continued", "collision"):
        if attack in scored:
            figures[f"{attack}_log10p"] = headline(scored[attack])
            figures[f"{attack}_base_free_log10p"] = base_free(scored[attack])
    if "neutralize" in scored:
        figures["neutralize_log10p"] = headline(scored["neutralize"], black_box_only=True)
        figures["neutralize_plain_log10p"] = scored["neutralize"]["provider_plain"]
    # the null suspects, as an audit reports them: each test family corrected as above
    null_values = []
    for values in nulls.values():
        null_values += [headline(values), ring_named(values), base_free(values)]
        null_values.append(values["best_tenant_corrected"])
    figures["null_min_log10p"] = min(null_values)
    figures["null_min_log10p_raw"] = min(
        value
        for values in nulls.values()
        for name, value in values.items()
        if name.startswith(("provider_", "ring_"))
    )
    return figures


def _config_dict(config: AdversaryConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)
