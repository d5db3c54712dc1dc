"""What a distiller does to a harvest before and after training, with its own base model.

- `steal`: the green lists estimated from the harvest (Jovanovic et al., ICML 2024): per
  context (the previous token, h = 1), how often each token follows it in the harvested outputs
  against how often the base expects it to; a pair seen at least `min_count` times at `ratio` x
  the base's expectation is believed green.
- `scrub`: every harvested token the estimate flags is redrawn from the base, flagged tokens
  excluded; `StolenGreenLists.penalty` is the bias a distiller subtracts at inference
  (neutralization, Pan et al., ACL 2025).
- `paraphrase`: the base redraws a random share of the harvested output tokens.

Redrawing is teacher-forced: a token is drawn from the base given the original prefix and the
rest of the text is kept, so one base pass per document does it. `perplexity` reads a model's
perplexity of outputs the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["StolenGreenLists", "paraphrase", "perplexity", "scrub", "steal"]

Documents = list[list[int]]


def _base_passes(
    model: Any,
    documents: Sequence[Sequence[int]],
    visit: Callable[[int, npt.NDArray[np.int64], Any], None],
    *,
    batch_size: int = 32,
) -> None:
    """Teacher-force every document through `model` and call `visit(document, positions,
    probabilities)` with each position's next-token distribution, (n, V). Documents longer
    than the model's context run as windows overlapping by one token."""
    import torch

    limit = int(model.config.n_positions)
    windows = [
        (index, start)
        for index, document in enumerate(documents)
        for start in range(0, max(len(document) - 1, 1), limit - 1)
    ]
    model.eval()
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            rows = [documents[index][start : start + limit] for index, start in batch]
            longest = max(len(row) for row in rows)
            ids = torch.zeros((len(rows), longest), dtype=torch.long)
            for row, tokens in enumerate(rows):
                ids[row, : len(tokens)] = torch.tensor(tokens)
            probabilities = torch.softmax(model(input_ids=ids).logits.float(), dim=-1)
            for row, ((index, start), tokens) in enumerate(zip(batch, rows, strict=True)):
                positions = np.arange(start + 1, start + len(tokens), dtype=np.int64)
                visit(index, positions, probabilities[row, : len(tokens) - 1])


@dataclass(frozen=True)
class StolenGreenLists:
    """A distiller's estimate of the green lists (h = 1), from its harvest and its base.

    `observed[c, v]` counts token v after token c in the harvested outputs; `expected[c, v]`
    sums the base's probability of v at the same positions. A flagged pair is believed green.
    """

    observed: npt.NDArray[np.float32]  # (V, V)
    expected: npt.NDArray[np.float32]  # (V, V)
    flagged: npt.NDArray[np.bool_]  # (V, V)

    def penalty(self, cap: float) -> npt.NDArray[np.float32]:
        """log(observed / expected) on flagged pairs, capped: the logit bias to subtract."""
        ratio = (self.observed + 0.5) / (self.expected + 0.5)
        return np.where(self.flagged, np.minimum(np.log(ratio), cap), 0.0).astype(np.float32)


def steal(
    base: Any,
    documents: Documents,
    prompt_lengths: Sequence[int],
    *,
    vocab: int,
    min_count: int,
    ratio: float,
) -> StolenGreenLists:
    """Estimate the green lists from the harvest's per-context frequencies against the base."""
    import torch

    expected = torch.zeros((vocab, vocab), dtype=torch.float32)
    observed = np.zeros(vocab * vocab, dtype=np.float64)

    def visit(index: int, positions: npt.NDArray[np.int64], probabilities: Any) -> None:
        output = positions >= prompt_lengths[index]
        if not output.any():
            return
        tokens = np.asarray(documents[index], dtype=np.int64)
        previous = tokens[positions[output] - 1]
        np.add.at(observed, previous * vocab + tokens[positions[output]], 1.0)
        expected.index_add_(0, torch.from_numpy(previous), probabilities[torch.from_numpy(output)])

    _base_passes(base, documents, visit)
    counts = observed.reshape(vocab, vocab).astype(np.float32)
    means = expected.numpy()
    flagged = (counts >= min_count) & ((counts + 0.5) / (means + 0.5) >= ratio)
    return StolenGreenLists(counts, means, flagged)


def _resample(
    base: Any,
    end_of_text: int,
    documents: Documents,
    prompt_lengths: Sequence[int],
    choose: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
    forbidden: npt.NDArray[np.bool_] | None,
    seed: int,
) -> tuple[Documents, int]:
    """Documents whose chosen output tokens (`choose(previous, token)` over output positions)
    are redrawn from the base given the original prefix, `forbidden[previous]` excluded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rewritten = [list(document) for document in documents]
    changed = 0

    def visit(index: int, positions: npt.NDArray[np.int64], probabilities: Any) -> None:
        nonlocal changed
        tokens = np.asarray(documents[index], dtype=np.int64)
        output = positions >= prompt_lengths[index]
        at = positions[output]
        picked = choose(tokens[at - 1], tokens[at])
        if not picked.any():
            return
        rows = probabilities[torch.from_numpy(output)][torch.from_numpy(picked)].clone()
        if forbidden is not None:
            rows[torch.from_numpy(forbidden[tokens[at[picked] - 1]])] = 0.0
        rows[:, end_of_text] = 0.0
        rows = rows + 1e-12  # a row whose every likely token is forbidden still draws
        drawn = torch.multinomial(rows, 1, generator=generator).squeeze(1).numpy()
        for position, token in zip(at[picked].tolist(), drawn.tolist(), strict=True):
            rewritten[index][position] = int(token)
        changed += int(picked.sum())

    _base_passes(base, documents, visit)
    return rewritten, changed


def scrub(
    base: Any,
    documents: Documents,
    prompt_lengths: Sequence[int],
    stolen: StolenGreenLists,
    *,
    end_of_text: int,
    seed: int = 0,
) -> tuple[Documents, int]:
    """Resample every harvested token the stolen estimate flags as green (flagged excluded)."""
    flagged = stolen.flagged
    return _resample(
        base,
        end_of_text,
        documents,
        prompt_lengths,
        lambda previous, token: flagged[previous, token],
        flagged,
        seed,
    )


def paraphrase(
    base: Any,
    documents: Documents,
    prompt_lengths: Sequence[int],
    share: float,
    *,
    end_of_text: int,
    seed: int = 0,
) -> tuple[Documents, int]:
    """The base rewrites a random `share` of the harvested output tokens, in context."""
    rng = np.random.default_rng(seed)
    return _resample(
        base,
        end_of_text,
        documents,
        prompt_lengths,
        lambda previous, token: rng.random(token.size) < share,
        None,
        seed,
    )


def perplexity(model: Any, documents: Documents, prompt_lengths: Sequence[int]) -> float:
    """The model's perplexity of the output tokens given their prompts (teacher-forced)."""
    total, count = 0.0, 0

    def visit(index: int, positions: npt.NDArray[np.int64], probabilities: Any) -> None:
        nonlocal total, count
        import torch

        output = positions >= prompt_lengths[index]
        tokens = torch.tensor(documents[index])[torch.from_numpy(positions[output])]
        chosen = probabilities[torch.from_numpy(output)].gather(1, tokens[:, None])
        total -= float(torch.log(chosen.clamp(min=1e-30)).sum())
        count += int(output.sum())

    _base_passes(model, documents, visit)
    return math.exp(total / max(count, 1))
