"""The watermark over a serving engine's batch: the engine's green lists, rows that come and go,
and unkeyed rows left bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distillguard.errors import SchemeError  # noqa: E402
from distillguard.integrations.batch import BatchRow, BatchWatermark  # noqa: E402
from distillguard.watermark import Scheme, SchemeConfig, Seeding  # noqa: E402

from ..watermark.test_processor import numpy_green, tenant_keys  # noqa: E402


@pytest.mark.parametrize("vocab", [4_096, 50_257, 151_936])
@pytest.mark.parametrize(
    ("seeding", "width"), [(Seeding.LEFT_HASH, 1), (Seeding.LEFT_HASH, 2), (Seeding.SELF_HASH, 2)]
)
def test_green_lists_match_the_numpy_twin(vocab: int, seeding: Seeding, width: int) -> None:
    config = SchemeConfig(gamma=0.25, delta=3.0, context_width=width, seeding=seeding)
    rng = np.random.default_rng(vocab + width)
    keys = tenant_keys(3, seed=vocab)
    watermark = BatchWatermark(config)
    rows = 5
    for index in range(rows):
        prompt = rng.integers(0, vocab, size=int(rng.integers(1, 4))).tolist()
        output = rng.integers(0, vocab, size=int(rng.integers(0, 3))).tolist()
        key = keys[index % 3] if index != 3 else None
        watermark.rows[index] = BatchRow(key, prompt, output)
    logits = torch.from_numpy(rng.standard_normal((rows, vocab)).astype(np.float32))
    marked = watermark.apply(logits.clone())
    lookback = width if seeding is Seeding.LEFT_HASH else width - 1
    for index, row in watermark.rows.items():
        context = row.context(lookback)
        if row.key is None or context is None:
            assert torch.equal(marked[index], logits[index])
            continue
        green = numpy_green(config, row.key, context, vocab)
        expected = logits[index] + torch.from_numpy(green.astype(np.float32)) * 3.0
        assert torch.equal(marked[index], expected), (vocab, index)


def test_contexts_come_from_the_prompt_at_first_and_then_the_live_output() -> None:
    output: list[int] = []
    row = BatchRow(None, [5, 6, 7], output)
    assert row.context(2) == [6, 7]
    output.append(8)  # the engine appends to its own list; the row sees it
    assert row.context(2) == [7, 8]
    output.extend([9, 10])
    assert row.context(2) == [9, 10]
    assert BatchRow(None, [5], []).context(2) is None


def test_rows_added_removed_and_moved_keep_their_own_keys() -> None:
    config = SchemeConfig(context_width=1)
    first, second = tenant_keys(2, seed=9)
    watermark = BatchWatermark(config)
    vocab = 4_096
    logits = torch.zeros((3, vocab))
    watermark.rows = {0: BatchRow(first, [1], []), 2: BatchRow(second, [1], [])}
    before = watermark.apply(logits.clone())
    assert torch.equal(before[1], logits[1])  # no row at index 1
    watermark.rows = {1: watermark.rows[2]}  # index 2 moved to 1, index 0 removed
    after = watermark.apply(logits.clone())
    assert torch.equal(after[1], before[2]) and torch.equal(after[0], logits[0])


def test_unkeyed_rows_are_bit_identical_beside_keyed_ones() -> None:
    (key,) = tenant_keys(1, seed=4)
    watermark = BatchWatermark(SchemeConfig())
    logits = torch.randn((4, 50_257), dtype=torch.float32)
    watermark.rows = {1: BatchRow(key, [3, 4], [7]), 2: BatchRow(None, [3], [])}
    marked = watermark.apply(logits.clone())
    for index in (0, 2, 3):
        assert marked[index].numpy().tobytes() == logits[index].numpy().tobytes()
    assert not torch.equal(marked[1], logits[1])


def test_gumbel_cannot_run_inside_a_serving_engine() -> None:
    with pytest.raises(SchemeError, match="green-list"):
        BatchWatermark(SchemeConfig(scheme=Scheme.GUMBEL))


def test_an_empty_batch_or_no_keys_returns_the_logits_untouched() -> None:
    watermark = BatchWatermark(SchemeConfig())
    logits = torch.randn((2, 100))
    assert watermark.apply(logits) is logits
    watermark.rows = {0: BatchRow(None, [1], [])}
    assert watermark.apply(logits) is logits
