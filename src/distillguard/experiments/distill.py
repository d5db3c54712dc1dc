"""The distillation loop at small scale: harvest, train students, audit them.

1. The teacher (the embedded model by default) serves behind the real gateway, in-process. A
   harvester tenant sends completion requests and the gateway watermarks the outputs with its
   key. They are metered and audited like any traffic.
2. Students (small GPT-2s, from scratch) are trained on a mix of the harvested outputs, read
   back from the usage log, and clean text. At contamination c, a fraction c of the training
   tokens comes from the harvest. The clean text is held-out prose from the teacher's corpus and
   a human text file (tinyshakespeare).
3. Each student is audited both ways:
   - black-box, sampled unwatermarked with the harvester's logged prompts; the focused test
     scores only the tuples the teacher explains better than the clean base;
   - open weights, teacher-forced on the harvester's logged outputs, with the clean base as
     the reference of the shift test.

   Every key of `tenants` tenants is tested, so attribution is a 1-in-N choice. Controls: the
   teacher itself, and watermarked prompts sent to a clean student.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.forensics.radioactivity import (
    RadioactivityResult,
    black_box_focused_test,
    black_box_test,
    open_weights_test,
)
from distillguard.keys import derive_tenant_key, record_commitment
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import SchemeConfig

__all__ = [
    "ExperimentConfig",
    "Harvest",
    "StudentConfig",
    "audit_student",
    "harvest",
    "pretrain_base",
    "train_student",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StudentConfig:
    """A student: a base model pretrained on clean text, then fine-tuned on the mix.

    Distillers fine-tune a base model on harvested outputs; pretraining the base once and
    fine-tuning a copy per contamination level is also what makes the loop fit on a CPU.
    """

    layers: int = 2
    width: int = 128
    heads: int = 2
    context: int = 128
    base_tokens: int = 2_000_000  # clean pretraining of the shared base
    train_tokens: int = 500_000  # fine-tuning on the mix
    batch_size: int = 16
    base_learning_rate: float = 3e-3
    learning_rate: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    harvest_queries: int = 2000
    harvest_max_tokens: int = 128
    # ask for full-length completions (vLLM's ignore_eos), as a harvester maximizing tokens
    # per query does; the embedded model otherwise ends most paragraphs within 20 tokens
    harvest_ignore_eos: bool = False
    prompt_words: int = 12
    audit_queries: int = 2000  # black-box budget
    audit_max_tokens: int = 64
    open_contexts: int = 20_000  # open-weights budget
    tenants: int = 100
    student: StudentConfig = field(default_factory=StudentConfig)


@dataclass
class Harvest:
    """What the harvester got, as logged by the gateway."""

    prompts: list[str]
    outputs: list[str]
    keys: list[WatermarkKey]  # every tenant's key; keys[0] is the harvester's
    scheme: SchemeConfig
    tokenizer: Any
    home: Path  # the gateway's state (usage log, audit chain, commitments)
    seconds: float

    @property
    def harvester(self) -> WatermarkKey:
        return self.keys[0]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]


def _tenant_names(count: int) -> list[str]:
    return ["harvester"] + [f"tenant-{index:03d}" for index in range(1, count)]


def harvest(
    prompts: Sequence[str],
    home: Path,
    config: ExperimentConfig,
    *,
    model: Path | None = None,
    scheme: SchemeConfig | None = None,
    progress: Progress | None = None,
    concurrency: int = 32,
    monitor: Any = None,
    tiers: Any = None,
    tick: Callable[[], None] | None = None,
) -> Harvest:
    """Serve the teacher behind a gateway in `home` and harvest completions as one tenant.

    With `monitor` (a started `Monitor`) the gateway hands it every request and acts on its
    tiers (`tiers` says what each does), as `distillguard serve` would."""
    from distillguard.engine.engine import Engine
    from distillguard.gateway.apikeys import KeyStore, create_api_key
    from distillguard.gateway.app import Gateway, GatewaySettings
    from distillguard.gateway.backends import LocalBackend
    from distillguard.keys import init_master_secret
    from distillguard.store import connect
    from distillguard.store.audit import AuditLog
    from distillguard.store.usage import read_usage

    started = time.perf_counter()
    master, _ = init_master_secret(home)
    connection = connect(home, shared=True)
    names = _tenant_names(config.tenants)
    with Engine(model, scheme=scheme) as engine:
        keys = []
        for name in names:
            derived = derive_tenant_key(master, name)
            record_commitment(connection, derived, engine.scheme)
            keys.append(derived.watermark_key())
        by_tenant = dict(zip(names, keys, strict=True))
        api_key, _ = create_api_key(connection, "harvester", rpm=10**6, tpm=10**9, concurrency=64)
        audit = AuditLog(lambda: connect(home))
        gateway = Gateway(
            LocalBackend(engine, by_tenant.get),
            KeyStore(connection),
            audit,
            GatewaySettings(tiers=tiers) if tiers is not None else GatewaySettings(),
            monitor=monitor,
        )
        asyncio.run(
            _send_all(
                gateway.app,
                api_key,
                engine.model_name,
                list(prompts),
                config.harvest_max_tokens,
                config.harvest_ignore_eos,
                concurrency,
                progress,
                tick,
            )
        )
        audit.close()
        bound = engine.scheme
        tokenizer = engine.loaded.tokenizer
    rows = [row for row in read_usage(connection, tenant="harvester") if row.status == 200]
    connection.close()
    return Harvest(
        prompts=[row.prompt_text for row in rows],
        outputs=[json.loads(row.output_text)[0] for row in rows],
        keys=keys,
        scheme=bound,
        tokenizer=tokenizer,
        home=home,
        seconds=time.perf_counter() - started,
    )


async def _send_all(
    app: Any,
    api_key: str,
    model: str,
    prompts: list[str],
    max_tokens: int,
    ignore_eos: bool,
    concurrency: int,
    progress: Progress | None,
    tick: Callable[[], None] | None = None,
) -> list[str]:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    done = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://teacher") as client:

        async def one(prompt: str) -> str:
            nonlocal done
            async with limit:
                response = await client.post(
                    "/v1/completions",
                    json={
                        "model": model,
                        "prompt": prompt,
                        "max_tokens": max_tokens,
                        "ignore_eos": ignore_eos,
                    },
                    headers={"authorization": f"Bearer {api_key}"},
                    timeout=600,
                )
            done += 1
            if tick is not None:
                tick()
            if progress is not None and done % 250 == 0:
                progress(f"harvested {done}/{len(prompts)}")
            if response.status_code != 200:
                return ""
            return str(response.json()["choices"][0]["text"])

        return list(await asyncio.gather(*(one(prompt) for prompt in prompts)))


def train_student(
    harvested: Sequence[Sequence[int]],
    clean: Sequence[Sequence[int]],
    contamination: float,
    config: StudentConfig,
    *,
    vocab_size: int,
    end_of_text: int,
    base: Any = None,
    output_dir: Path | None = None,
    progress: Progress | None = None,
    tick: Callable[[], None] | None = None,
) -> Any:
    """A GPT-2 fine-tuned from `base` (or trained from scratch without one) on `train_tokens`
    tokens, a fraction `contamination` of them harvested."""
    import copy

    import torch
    from transformers import GPT2LMHeadModel

    from distillguard.engine.train import TrainConfig, model_config

    if not 0.0 <= contamination <= 1.0:
        raise ValueError("contamination must be in [0, 1]")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    rows = _mixed_rows(harvested, clean, contamination, config, end_of_text, rng)
    if base is not None:
        model = copy.deepcopy(base)
        learning_rate = config.learning_rate
    else:
        model = GPT2LMHeadModel(
            model_config(
                TrainConfig(
                    vocab_size=vocab_size,
                    layers=config.layers,
                    width=config.width,
                    heads=config.heads,
                    context=config.context,
                ),
                end_of_text,
            )
        )
        learning_rate = config.base_learning_rate
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1)
    steps = max(1, rows.shape[0] // config.batch_size)
    model.train()
    for step in range(steps):
        batch = torch.from_numpy(rows[step * config.batch_size : (step + 1) * config.batch_size])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * _warmup_cosine(step, steps)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss  # shifted inside
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if tick is not None:
            tick()
        if progress is not None and (step + 1) % 50 == 0:
            progress(f"step {step + 1}/{steps} loss {float(loss.detach()):.3f}")
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


def _mixed_rows(
    harvested: Sequence[Sequence[int]],
    clean: Sequence[Sequence[int]],
    contamination: float,
    config: StudentConfig,
    end_of_text: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """`train_tokens` tokens, a fraction `contamination` harvested, as shuffled training rows
    of context + 1 tokens."""
    wanted = config.train_tokens
    harvested_tokens = round(wanted * contamination)
    stream = np.concatenate(
        [
            _stream(harvested, end_of_text, harvested_tokens, rng),
            _stream(clean, end_of_text, wanted - harvested_tokens, rng),
        ]
    )
    width = config.context + 1
    rows = stream[: (stream.size // width) * width].reshape(-1, width)
    rng.shuffle(rows)  # harvested and clean windows interleave
    return rows


def _warmup_cosine(step: int, steps: int) -> float:
    """The learning rate's scale: linear warmup over 5% of the steps, then cosine decay."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def pretrain_base(
    clean: Sequence[Sequence[int]],
    config: StudentConfig,
    *,
    vocab_size: int,
    end_of_text: int,
    progress: Progress | None = None,
    tick: Callable[[], None] | None = None,
) -> Any:
    """The students' shared base: a GPT-2 trained from scratch on clean text only."""
    from dataclasses import replace

    return train_student(
        [],
        clean,
        0.0,
        replace(config, train_tokens=config.base_tokens, seed=config.seed + 10_000),
        vocab_size=vocab_size,
        end_of_text=end_of_text,
        progress=progress,
        tick=tick,
    )


def _stream(
    documents: Sequence[Sequence[int]], end_of_text: int, tokens: int, rng: np.random.Generator
) -> np.ndarray:
    """`tokens` tokens of the documents (each followed by end-of-text), shuffled and cycled."""
    if tokens <= 0 or not documents:
        return np.zeros(0, dtype=np.int64)
    pieces: list[int] = []
    while len(pieces) < tokens:
        for index in rng.permutation(len(documents)):
            pieces.extend(documents[int(index)])
            pieces.append(end_of_text)
            if len(pieces) >= tokens:
                break
    return np.asarray(pieces[:tokens], dtype=np.int64)


@dataclass(frozen=True)
class StudentAudit:
    black_box: RadioactivityResult
    focused: RadioactivityResult | None  # black-box, focused by the teacher and the reference
    top1: RadioactivityResult
    mass: RadioactivityResult
    shift: RadioactivityResult | None  # against the reference, when one was given
    black_box_by_queries: dict[int, float]  # queries -> harvester's log10 p (focused if run)
    open_by_contexts: dict[int, float]  # contexts -> harvester's log10 p (shift, else top-1)
    seconds: float


def audit_student(
    model: Any,
    run: Harvest,
    config: ExperimentConfig,
    *,
    reference: Any = None,
    teacher: Any = None,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
) -> StudentAudit:
    """Both audits of one suspect model, with p-values at growing budgets. `reference` (the
    clean base the students were fine-tuned from) anchors the open-weights shift test and,
    with `teacher` (the served model's weights), the focused black-box test."""
    started = time.perf_counter()
    prompt_texts = list(prompts if prompts is not None else run.prompts)[: config.audit_queries]
    prompt_ids = run.encode(prompt_texts)
    outputs = sample(model, prompt_ids, config.audit_max_tokens, seed=seed)
    black_box = black_box_test(run.scheme, run.keys, prompt_ids, outputs)
    focused = None
    if teacher is not None and reference is not None:
        focused = black_box_focused_test(
            run.scheme, run.keys, prompt_ids, outputs, teacher, reference
        )
    by_queries = {}
    for budget in (250, 500, 1000, 2000):
        if budget <= len(prompt_ids):
            if focused is not None:
                partial = black_box_focused_test(
                    run.scheme,
                    run.keys[:1],
                    prompt_ids[:budget],
                    outputs[:budget],
                    teacher,
                    reference,
                )
            else:
                partial = black_box_test(
                    run.scheme, run.keys[:1], prompt_ids[:budget], outputs[:budget]
                )
            by_queries[budget] = partial.detections[0].log10_p
    documents = [
        p + o for p, o in zip(run.encode(run.prompts), run.encode(run.outputs), strict=True)
    ]
    open_weights = open_weights_test(
        model,
        run.scheme,
        run.keys,
        documents,
        reference=reference,
        max_contexts=config.open_contexts,
    )
    by_contexts = {}
    for budget in (1000, 5000):
        if budget < config.open_contexts:
            at_budget = open_weights_test(
                model,
                run.scheme,
                run.keys[:1],
                documents,
                reference=reference,
                max_contexts=budget,
            )
            by_contexts[budget] = at_budget.all()[0].detections[0].log10_p
    by_contexts[config.open_contexts] = open_weights.all()[0].detections[0].log10_p
    return StudentAudit(
        black_box,
        focused,
        open_weights.top1,
        open_weights.mass,
        open_weights.shift,
        by_queries,
        by_contexts,
        time.perf_counter() - started,
    )


def sample(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_tokens: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
    logit_bias: Callable[[Any], Any] | None = None,
) -> list[list[int]]:
    """Sample completions from a local model, unwatermarked (the suspect's own outputs).

    `logit_bias(last_tokens)` maps each row's last token, shape (B,), to a (B, V) tensor added
    to the logits before sampling: what a distiller who neutralizes a stolen green list at
    inference does (`experiments.adversary`)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    limit = int(model.config.n_positions)
    # prompt + completion must fit the context: keep the prompt's end, at least one token
    max_tokens = min(max_tokens, limit - 1)
    keep = limit - max_tokens
    outputs: list[list[int]] = []
    eos = int(model.config.eos_token_id)
    model.eval()
    with torch.no_grad():
        for first in range(0, len(prompts), batch_size):
            batch = [list(p)[-keep:] for p in prompts[first : first + batch_size]]
            longest = max(len(p) for p in batch)
            # left-pad so that every row's next token is at the last position
            ids = torch.full((len(batch), longest), eos, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, prompt in enumerate(batch):
                ids[row, longest - len(prompt) :] = torch.tensor(prompt)
                mask[row, longest - len(prompt) :] = 1
            generated: list[list[int]] = [[] for _ in batch]
            finished = [False] * len(batch)
            cache = None
            step_ids = ids
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            step_positions = positions
            for _ in range(max_tokens):
                result = model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=step_positions,
                    cache=cache,
                    use_cache=True,
                )
                cache = result.cache
                logits = result.logits[:, -1, :].float()
                if logit_bias is not None:
                    logits = logits + logit_bias(step_ids[:, -1])
                logits = logits / temperature
                chosen = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
                for row in range(len(batch)):
                    token = int(chosen[row, 0])
                    if not finished[row]:
                        if token == eos:
                            finished[row] = True
                        else:
                            generated[row].append(token)
                if all(finished):
                    break
                step_ids = chosen
                mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=torch.long)], dim=1)
                step_positions = step_positions[:, -1:] + 1
            outputs.extend(generated)
    return outputs


def new_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="distillguard-radioactivity-"))
