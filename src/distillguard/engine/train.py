"""`distillguard model train`: the embedded model, from the running CPython's prose to a model dir.

Builds the corpus (`corpus`), trains a byte-level BPE tokenizer (Hugging Face `tokenizers`) and
a small GPT-2-style causal LM (Hugging Face `transformers`), seeded, with a progress bar and
checkpoints it can resume from, and saves a standard Hugging Face model directory
(config.json, model.safetensors, tokenizer.json, generation_config.json) with a model card
(card.json) giving the parameters, the corpus hash and the validation perplexity.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError, require

require("torch", "model")
require("transformers", "model")
require("tokenizers", "model")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distillguard.engine.corpus import Corpus, build_corpus  # noqa: E402

__all__ = [
    "CARD_FILE",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TrainConfig",
    "TrainResult",
    "train_model",
    "train_tokenizer",
    "validation_perplexity",
]

CARD_FILE = "card.json"
CHECKPOINT_DIR = "checkpoint"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# A plain role-tagged template; the embedded model was trained on prose, not dialogue, so it
# continues the conversation as prose. Real chat models bring their own template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained model. The defaults build the shipped model."""

    vocab_size: int = 4096
    layers: int = 4
    width: int = 256
    heads: int = 4
    context: int = 256
    batch_size: int = 16
    steps: int = 720
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 40
    fp16_weights: bool = True  # halves the shipped size; perplexity is measured after rounding
    max_train_paragraphs: int | None = None  # tiny configurations for tests

    @classmethod
    def tiny(cls) -> TrainConfig:
        """A configuration that trains in seconds, for tests."""
        return cls(
            vocab_size=512,
            layers=1,
            width=32,
            heads=2,
            context=128,
            batch_size=8,
            steps=12,
            warmup_steps=2,
            checkpoint_every=4,
            max_train_paragraphs=400,
        )


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    parameters: int
    validation_perplexity: float
    corpus_sha256: str
    train_tokens: int
    seconds: float


def train_tokenizer(corpus: Corpus, vocab_size: int) -> Any:
    """Byte-level BPE over the training paragraphs, with the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.train, trainer=trainer)
    return tokenizer


def _token_stream(tokenizer: Any, paragraphs: tuple[str, ...], end_of_text: int) -> np.ndarray:
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(paragraphs)):
        ids.extend(encoding.ids)
        ids.append(end_of_text)
    return np.asarray(ids, dtype=np.int64)


def model_config(config: TrainConfig, end_of_text: int) -> Any:
    """The GPT-2 configuration a TrainConfig describes (also used for forensics students)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context,
        n_embd=config.width,
        n_layer=config.layers,
        n_head=config.heads,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        pad_token_id=end_of_text,
    )


@torch.no_grad()
def validation_perplexity(
    model: Any, stream: np.ndarray, context: int, batch_size: int = 16
) -> float:
    """exp(mean next-token loss) over non-overlapping windows of the validation stream."""
    model.eval()
    usable = (stream.size - 1) // context * context
    inputs = torch.from_numpy(stream[:usable].reshape(-1, context))
    targets = torch.from_numpy(stream[1 : usable + 1].reshape(-1, context))
    total, count = 0.0, 0
    for first in range(0, inputs.shape[0], batch_size):
        window = inputs[first : first + batch_size]
        logits = model(input_ids=window, attention_mask=torch.ones_like(window)).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets[first : first + batch_size].reshape(-1),
            reduction="sum",
        )
        total += float(loss)
        count += targets[first : first + batch_size].numel()
    if count == 0:
        raise ConfigError("the validation split is shorter than one context window")
    return math.exp(total / count)


def _learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(
    output_dir: Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the embedded model into `output_dir` (a Hugging Face model directory).

    Checkpoints go to ``output_dir/checkpoint``; with `resume` a run continues from the last one
    (same configuration required) and the result is the same as an uninterrupted run.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(config)
    run = _new_run(config, data.end_of_text)
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    checkpoint_file = checkpoint_dir / "state.pt"
    if resume and checkpoint_file.is_file():
        _resume(run, checkpoint_file, config)
    _train(run, data.train_stream, config, checkpoint_file, progress=progress, on_step=on_step)

    model = run.model
    if config.fp16_weights:
        model = model.half().float()  # what the shipped fp16 file will hold
    perplexity = validation_perplexity(model, data.validation_stream, config.context)
    if config.fp16_weights:
        model = model.half()
    _save_model(output_dir, model, data.tokenizer, config)
    seconds = time.perf_counter() - started
    result = TrainResult(
        output_dir=output_dir,
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        validation_perplexity=perplexity,
        corpus_sha256=data.corpus.sha256,
        train_tokens=int(data.train_stream.size),
        seconds=seconds,
    )
    _write_card(output_dir, config, result, data.corpus, int(data.validation_stream.size))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return result


@dataclass(frozen=True)
class _Data:
    """The corpus, the tokenizer trained on it, and both splits as token streams."""

    corpus: Corpus
    tokenizer: Any
    end_of_text: int
    train_stream: np.ndarray
    validation_stream: np.ndarray


def _prepare_data(config: TrainConfig) -> _Data:
    corpus = build_corpus()
    if config.max_train_paragraphs is not None:
        corpus = replace(corpus, train=corpus.train[: config.max_train_paragraphs])
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    return _Data(
        corpus=corpus,
        tokenizer=tokenizer,
        end_of_text=end_of_text,
        train_stream=_token_stream(tokenizer, corpus.train, end_of_text),
        validation_stream=_token_stream(tokenizer, corpus.validation, end_of_text),
    )


@dataclass
class _Run:
    """The training state a checkpoint saves (with the configuration and torch's RNG state)."""

    model: Any
    optimizer: Any
    batches: np.random.Generator
    step: int = 0


def _new_run(config: TrainConfig, end_of_text: int) -> _Run:
    """A freshly initialized model and AdamW (no weight decay on biases and norms), seeded."""
    from transformers import GPT2LMHeadModel

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model: Any = GPT2LMHeadModel(model_config(config, end_of_text))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    return _Run(model=model, optimizer=optimizer, batches=np.random.default_rng(config.seed))


def _resume(run: _Run, checkpoint_file: Path, config: TrainConfig) -> None:
    # weights_only: tensors, numbers, strings and containers, never arbitrary objects; a
    # checkpoint is a pickle, and reading an untrusted pickle runs whatever code it names
    try:
        state = torch.load(checkpoint_file, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first_line = str(exc).strip().split("\n")[0] or type(exc).__name__
        raise ConfigError(
            f"{checkpoint_file} is not a checkpoint this version writes ({first_line}); "
            "remove it or pass --no-resume"
        ) from None
    if state["config"] != asdict(config):
        raise ConfigError(
            f"{checkpoint_file} was written with another configuration; "
            "remove it or pass --no-resume"
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.batches.bit_generator.state = state["batches"]
    torch.set_rng_state(state["torch_rng"])
    run.step = state["step"]


def _save_checkpoint(run: _Run, checkpoint_file: Path, config: TrainConfig) -> None:
    checkpoint_file.parent.mkdir(exist_ok=True)
    temporary = checkpoint_file.with_suffix(".tmp")
    torch.save(
        {
            "config": asdict(config),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "batches": run.batches.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": run.step,
        },
        temporary,
    )
    os.replace(temporary, checkpoint_file)


def _train(
    run: _Run,
    stream: np.ndarray,
    config: TrainConfig,
    checkpoint_file: Path,
    *,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> None:
    """Train from `run.step` to `config.steps`, checkpointing every `checkpoint_every` steps."""
    bar = _progress(config.steps, run.step, enabled=progress)
    run.model.train()
    for step in range(run.step, config.steps):
        loss = _step(run, stream, config, step)
        run.step = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(step, loss)
        if run.step % config.checkpoint_every == 0 and run.step < config.steps:
            _save_checkpoint(run, checkpoint_file, config)
    bar.close()


def _step(run: _Run, stream: np.ndarray, config: TrainConfig, step: int) -> float:
    """One optimizer step on a batch of random windows of the stream; returns the loss."""
    for group in run.optimizer.param_groups:
        group["lr"] = _learning_rate(config, step)
    starts = run.batches.integers(0, stream.size - config.context, size=config.batch_size)
    windows = np.stack([stream[start : start + config.context] for start in starts])
    tokens = torch.from_numpy(windows)
    # the model shifts the labels itself: position t predicts token t + 1
    loss = run.model(input_ids=tokens, attention_mask=torch.ones_like(tokens), labels=tokens).loss
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    return float(loss.detach())


def _save_model(output_dir: Path, model: Any, tokenizer: Any, config: TrainConfig) -> None:
    """The weights, the generation config and the tokenizer (with the chat template)."""
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(output_dir, safe_serialization=True)
    model.generation_config.save_pretrained(output_dir)
    fast: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=config.context,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(output_dir)


def _write_card(
    output_dir: Path,
    config: TrainConfig,
    result: TrainResult,
    corpus: Corpus,
    validation_tokens: int,
) -> None:
    card = {
        "name": "distillguard-embedded",
        "architecture": "GPT-2 (transformers GPT2LMHeadModel)",
        "parameters": result.parameters,
        "weights": "float16" if config.fp16_weights else "float32",
        "validation_perplexity": round(result.validation_perplexity, 4),
        "corpus": {
            "source": "CPython standard library docstrings and pydoc_data.topics, prose paragraphs",
            "python_version": corpus.python_version,
            "sha256": corpus.sha256,
            "train_paragraphs": len(corpus.train),
            "validation_paragraphs": len(corpus.validation),
            "train_tokens": result.train_tokens,
            "validation_tokens": validation_tokens,
        },
        "train_config": asdict(config),
        "train_seconds": round(result.seconds, 1),
        "trained_on": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reproduce": "distillguard model train --output DIR",
    }
    (output_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


def _progress(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="training")
