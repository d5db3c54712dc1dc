"""The generation engine: batched decoding of any local causal LM, watermarked per request.

One worker thread owns the model. Requests are prepared (tokenized and checked) on the
caller's side, queued, and gathered into a batch for a short window (`batch_window`, up to
`max_batch_size` rows, a request with n choices takes n rows). The batch is decoded with a KV
cache; rows finish independently (EOS, a stop string, max_tokens) and leave the batch, and each
step's tokens are pushed to their requests as they are produced. The asyncio interface never
blocks the event loop: results cross threads through `loop.call_soon_threadsafe`.

Per step, for each row: logits -> the tenant's green-list watermark (raw logits, as in
Kirchenbauer et al.) -> temperature -> top-p -> (Gumbel watermark, which needs the final
distribution) -> sample. Logprobs and top_logprobs are read from that final distribution, the
one actually sampled, so they do not reveal the unwatermarked one; a token it cannot pick
(-inf) is reported at OpenAI's floor, -9999.0, so that every response is valid JSON. With
temperature 0 the row is greedy and its logprobs are those of the watermarked,
top-p-filtered distribution at temperature 1.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.engine.model import LoadedModel, load_model
from distillguard.engine.params import (
    Choice,
    Completion,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    finite_logprob,
)
from distillguard.errors import (
    ConfigError,
    ContextLengthError,
    DistillGuardError,
    EngineError,
    InputError,
)
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import Scheme, SchemeConfig, tokenizer_fingerprint

__all__ = ["Engine", "PreparedRequest"]

log = logging.getLogger("distillguard.engine")

Keyring = Callable[[str], WatermarkKey]


@dataclass(frozen=True)
class PreparedRequest:
    """A checked request: its prompt token ids and the key its outputs are watermarked with."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    watermark_key: WatermarkKey | None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


@dataclass
class _End:
    error: BaseException | None = None


@dataclass
class _Job:
    prepared: PreparedRequest
    sink: Callable[[TokenEvent | _End], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    """One choice being decoded."""

    job: _Job
    choice: int
    generator: np.random.Generator
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded text already sent
    finished: bool = False


class Engine:
    """Serve generations from one model; thread-safe; async and blocking interfaces.

    `model` is a model directory (the embedded model when None) or a `LoadedModel`. `scheme` is
    the watermark scheme, bound here to the model's vocabulary and tokenizer. `keyring` turns
    a request's tenant into its watermark key (raising KeyNotFoundError for an unknown one).
    `provider_key` is the provider layer's key, required when the scheme has one
    (`SchemeConfig.layering`).
    """

    def __init__(
        self,
        model: str | Path | LoadedModel | None = None,
        *,
        scheme: SchemeConfig | None = None,
        keyring: Keyring | None = None,
        provider_key: WatermarkKey | None = None,
        max_batch_size: int = 32,
        batch_window: float = 0.005,
    ) -> None:
        import torch

        from distillguard.watermark.processor import TenantWatermarkProcessor

        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        tokenizer = self.loaded.tokenizer
        self.scheme = (scheme or SchemeConfig()).bind(
            self.loaded.vocab_size, tokenizer_fingerprint(tokenizer)
        )
        self.keyring = keyring
        if max_batch_size < 1:
            raise ConfigError("max_batch_size must be at least 1")
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window
        self._torch = torch
        self._processor = TenantWatermarkProcessor(self.scheme, [None], provider_key=provider_key)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="distillguard-engine", daemon=True)
        self._thread.start()

    # -- public interface -------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Tokenize and check a request; raises InputError, ContextLengthError, KeyNotFoundError."""
        params = request.params
        prompt_ids = self._prompt_ids(request.prompt)
        limit = self.loaded.context_length
        if len(prompt_ids) + params.max_tokens > limit:
            raise ContextLengthError(
                f"this model's context is {limit} tokens; the prompt has {len(prompt_ids)} and "
                f"max_tokens asks for {params.max_tokens} more"
            )
        key = request.watermark_key
        if key is None and request.tenant is not None:
            if self.keyring is None:
                raise ConfigError("this engine has no keyring to resolve tenants with")
            key = self.keyring(request.tenant)
        return PreparedRequest(tuple(prompt_ids), params, key)

    async def stream(
        self, request: GenerationRequest | PreparedRequest
    ) -> AsyncIterator[TokenEvent]:
        """Events as tokens are produced; stopping the iteration cancels the request."""
        prepared = request if isinstance(request, PreparedRequest) else self.prepare(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | _End] = asyncio.Queue()

        def sink(item: TokenEvent | _End) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        job = _Job(prepared, sink)
        self._submit(job)
        try:
            while True:
                item = await events.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            job.cancelled.set()

    async def generate(self, request: GenerationRequest | PreparedRequest) -> Completion:
        prepared = request if isinstance(request, PreparedRequest) else self.prepare(request)
        collector = _Collector(prepared, self.scheme)
        async for event in self.stream(prepared):
            collector.add(event)
        return collector.completion()

    def generate_sync(self, request: GenerationRequest | PreparedRequest) -> Completion:
        """Blocking twin of `generate`, for scripts and the CLI."""
        prepared = request if isinstance(request, PreparedRequest) else self.prepare(request)
        events: queue.Queue[TokenEvent | _End] = queue.Queue()
        self._submit(_Job(prepared, events.put))
        collector = _Collector(prepared, self.scheme)
        while True:
            item = events.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return collector.completion()
            collector.add(item)

    def close(self) -> None:
        """Finish queued work, then stop the worker thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- preparation ------------------------------------------------------------------------

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        tokenizer = self.loaded.tokenizer
        if isinstance(prompt, str):
            ids = [int(token) for token in tokenizer.encode(prompt, add_special_tokens=False)]
        else:
            ids = []
            for token in prompt:
                if isinstance(token, bool) or not isinstance(token, int | np.integer):
                    raise InputError("a token-id prompt must be a list of integers")
                if not 0 <= int(token) < self.loaded.vocab_size:
                    raise InputError(f"token id {int(token)} is outside the vocabulary")
                ids.append(int(token))
        if not ids:
            # an empty prompt starts from the start-of-text token, as GPT-2 style models expect
            start = tokenizer.bos_token_id
            if start is None:
                start = self.loaded.eos_token_ids[0] if self.loaded.eos_token_ids else 0
            ids = [int(start)]
        return ids

    def _submit(self, job: _Job) -> None:
        if self._closed:
            raise EngineError("the engine is closed")
        self._queue.put(job)

    # -- the worker thread ------------------------------------------------------------------

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            rows = first.prepared.params.n
            deadline = time.monotonic() + self.batch_window
            while rows < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    job = (
                        self._queue.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if rows + job.prepared.params.n > self.max_batch_size:
                    self._queue.put(job)  # the next batch takes it
                    break
                jobs.append(job)
                rows += job.prepared.params.n
            self._run_batch(jobs)

    def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            with self._torch.inference_mode():
                self._decode(jobs)
        except Exception as exc:  # one failing batch must not stop the engine
            log.exception("generation failed for a batch of %d requests", len(jobs))
            error = (
                exc
                if isinstance(exc, DistillGuardError)
                else EngineError(f"generation failed: {exc}")
            )
            for job in jobs:
                job.sink(_End(error))
            return
        for job in jobs:
            job.sink(_End())

    def _decode(self, jobs: list[_Job]) -> None:
        torch = self._torch
        loaded = self.loaded
        rows: list[_Row] = []
        for job in jobs:
            params = job.prepared.params
            for choice in range(params.n):
                # any integer seed (OpenAI allows negatives) maps to a 64-bit entropy word
                seed = [params.seed % (1 << 64), choice] if params.seed is not None else None
                rows.append(_Row(job, choice, np.random.default_rng(seed)))
        prompts = [row.job.prepared.prompt_ids for row in rows]
        width = max(len(prompt) for prompt in prompts)
        pad = loaded.pad_token_id
        input_ids = torch.tensor(
            [[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long
        )
        attention = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long
        )
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        self._processor.reset_rows([row.job.prepared.watermark_key for row in rows])
        watermarked = any(row.job.prepared.watermark_key is not None for row in rows)

        output = loaded.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,  # the prompt's other positions need no vocabulary projection
        )
        cache = output.cache
        logits = output.logits[:, -1, :].float()
        sequences = input_ids
        alive = list(range(len(rows)))  # batch position -> index into rows
        while True:
            batch_rows = [rows[index] for index in alive]
            tokens, logprobs = self._sample(batch_rows, sequences, logits, watermarked)
            for position, row in enumerate(batch_rows):
                self._advance(row, int(tokens[position]), logprobs, position)
            keep = [position for position, row in enumerate(batch_rows) if not row.finished]
            if not keep:
                return
            if len(keep) < len(batch_rows):
                index = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(index)
                sequences, attention, positions = (
                    sequences[index],
                    attention[index],
                    positions[index],
                )
                tokens = tokens[index]
                alive = [alive[position] for position in keep]
                self._processor.reset_rows([rows[i].job.prepared.watermark_key for i in alive])
            next_ids = tokens.unsqueeze(1)
            sequences = torch.cat([sequences, next_ids], dim=1)
            attention = torch.cat([attention, torch.ones_like(next_ids)], dim=1)
            positions = positions[:, -1:] + 1
            output = loaded.model(
                input_ids=next_ids,
                attention_mask=attention,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            cache = output.cache
            logits = output.logits[:, -1, :].float()

    def _sample(
        self, rows: list[_Row], sequences: Any, logits: Any, watermarked: bool
    ) -> tuple[Any, Any]:
        """Next token per row and the log-probabilities of the distribution it came from."""
        torch = self._torch
        scheme = self.scheme.scheme
        scores = logits
        no_eos = [
            position for position, row in enumerate(rows) if row.job.prepared.params.ignore_eos
        ]
        if no_eos and self.loaded.eos_token_ids:
            scores = scores.clone()
            rows_index = torch.tensor(no_eos).unsqueeze(1)
            scores[rows_index, torch.tensor(self.loaded.eos_token_ids).unsqueeze(0)] = float("-inf")
        # A row whose own tokens (prompt + completion, pads excluded) are fewer than the seeding
        # context stays unwatermarked at this step, exactly as it would alone in a batch: its
        # left padding must not become watermark context.
        lookback = self._processor.lookback
        short = torch.tensor(
            [row.job.prepared.prompt_tokens + len(row.token_ids) < lookback for row in rows]
        )
        short_rows = bool(short.any())
        if watermarked and scheme is Scheme.GREEN_LIST:
            marked = self._processor(sequences, scores)
            scores = torch.where(short.unsqueeze(1), scores, marked) if short_rows else marked
        temperatures = torch.tensor(
            [row.job.prepared.params.temperature or 1.0 for row in rows], dtype=scores.dtype
        )
        scores = scores / temperatures.unsqueeze(1)
        top_ps = [row.job.prepared.params.top_p for row in rows]
        if any(top_p < 1.0 for top_p in top_ps):
            scores = _top_p_filter(torch, scores, torch.tensor(top_ps, dtype=scores.dtype))
        if watermarked and scheme is Scheme.GUMBEL:
            marked = self._processor(sequences, scores)
            scores = torch.where(short.unsqueeze(1), scores, marked) if short_rows else marked
        logprobs = torch.log_softmax(scores, dim=-1)
        greedy = torch.argmax(scores, dim=-1)
        draws = np.array([row.generator.random() for row in rows])
        cumulative = logprobs.exp().cumsum(dim=-1)
        targets = torch.from_numpy(draws).to(cumulative.dtype).unsqueeze(1) * cumulative[:, -1:]
        sampled = torch.searchsorted(cumulative, targets).squeeze(1).clamp(max=scores.shape[-1] - 1)
        use_greedy = torch.tensor([row.job.prepared.params.temperature == 0.0 for row in rows])
        return torch.where(use_greedy, greedy, sampled), logprobs

    def _advance(self, row: _Row, token: int, logprobs: Any, position: int) -> None:
        """Append a sampled token to a row, decide whether it finished, and emit its event.

        An end-of-sequence token finishes the row without joining its text (its event has
        `token_id` None); a stop string finishes it with the text cut where the stop begins.
        """
        params = row.job.prepared.params
        if row.job.cancelled.is_set():
            row.finished = True
            return
        is_end = token in self.loaded.eos_token_ids
        finish: FinishReason | None = "stop" if is_end else None
        if not is_end:
            row.token_ids.append(token)
            if len(row.token_ids) >= params.max_tokens:
                finish = "length"
        text = self.loaded.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        end = len(text)
        stop_at = _find_stop(text, params.stop, row.emitted)
        if stop_at is not None:
            end, finish = stop_at, "stop"
        elif finish is None:
            end -= _held_back(text, params.stop)
        delta = text[row.emitted : end] if end > row.emitted else ""
        row.emitted = max(row.emitted, end)
        entry = None
        if params.logprobs and not is_end:
            entry = self._logprob_entry(token, logprobs[position], params.top_logprobs)
        row.finished = finish is not None
        row.job.sink(TokenEvent(row.choice, None if is_end else token, delta, entry, finish))

    def _logprob_entry(self, token: int, row_logprobs: Any, top: int) -> TokenLogprob:
        """The sampled token's logprob and the `top` most likely; tokens top_p masked out
        (and end-of-sequence under ignore_eos) have -inf, reported at LOGPROB_FLOOR."""
        tokenizer = self.loaded.tokenizer
        alternatives: tuple[tuple[int, str, float], ...] = ()
        if top:
            values, indices = self._torch.topk(row_logprobs, top)
            alternatives = tuple(
                (int(index), tokenizer.decode([int(index)]), finite_logprob(float(value)))
                for value, index in zip(values.tolist(), indices.tolist(), strict=True)
            )
        return TokenLogprob(
            token,
            tokenizer.decode([token]),
            finite_logprob(float(row_logprobs[token])),
            alternatives,
        )


def _top_p_filter(torch: Any, scores: Any, top_ps: Any) -> Any:
    """Keep, per row, the smallest set of tokens whose probability reaches top_p."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probabilities = torch.softmax(sorted_scores, dim=-1)
    before = probabilities.cumsum(dim=-1) - probabilities
    drop_sorted = before >= top_ps.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def _find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Where the earliest stop string starts in the text not yet emitted, if any."""
    if not stops:
        return None
    longest = max(len(stop) for stop in stops)
    search_from = max(0, emitted - longest + 1)
    positions = [text.find(stop, search_from) for stop in stops]
    found = [position for position in positions if position >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end to hold back: a possible stop-string start, or a partial UTF-8 char."""
    held = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-length:]):
                held = max(held, length)
                break
    return held


class _Collector:
    """Assembles a Completion from a request's events."""

    def __init__(self, prepared: PreparedRequest, scheme: SchemeConfig) -> None:
        self.prepared = prepared
        self.scheme = scheme
        count = prepared.params.n
        self.texts: list[list[str]] = [[] for _ in range(count)]
        self.ids: list[list[int]] = [[] for _ in range(count)]
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(count)]
        self.finish: list[FinishReason] = ["length"] * count
        self.sampled = 0  # every sampled token, end-of-sequence included: what the model produced

    def add(self, event: TokenEvent) -> None:
        self.sampled += 1
        self.texts[event.choice].append(event.text)
        if event.token_id is not None:
            self.ids[event.choice].append(event.token_id)
        if event.logprob is not None:
            self.logprobs[event.choice].append(event.logprob)
        if event.finish_reason is not None:
            self.finish[event.choice] = event.finish_reason

    def completion(self) -> Completion:
        key = self.prepared.watermark_key
        wants_logprobs = self.prepared.params.logprobs
        choices = tuple(
            Choice(
                index=index,
                text="".join(self.texts[index]),
                token_ids=tuple(self.ids[index]),
                finish_reason=self.finish[index],
                logprobs=tuple(self.logprobs[index]) if wants_logprobs else None,
            )
            for index in range(self.prepared.params.n)
        )
        return Completion(
            choices=choices,
            prompt_tokens=self.prepared.prompt_tokens,
            completion_tokens=self.sampled,
            watermark_key_id=key.key_id if key is not None else None,
            fingerprint=self.scheme.fingerprint if key is not None else None,
        )
