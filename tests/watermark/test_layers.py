"""The provider layer beside the tenant layer: twins, processor parity, exact layer and ring
tests, and their calibration under the null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from distillguard.errors import InputError, SchemeError  # noqa: E402
from distillguard.integrations.batch import BatchRow, BatchWatermark  # noqa: E402
from distillguard.watermark import SchemeConfig, WatermarkKey, hashing, hashing_torch  # noqa: E402
from distillguard.watermark.key import key_word_array  # noqa: E402
from distillguard.watermark.layers import (  # noqa: E402
    coin_key,
    green_counts,
    layer_mask,
    ring_detection,
)
from distillguard.watermark.processor import TenantWatermarkProcessor  # noqa: E402
from distillguard.watermark.scheme import Layering, Scheme, layered_scheme  # noqa: E402

from .test_processor import numpy_green, tenant_keys  # noqa: E402

VOCAB = 2003
LAYERED = [layered_scheme(Layering.SPLIT), layered_scheme(Layering.STACKED)]


def provider_key(seed: int = 99) -> WatermarkKey:
    return WatermarkKey("wk_provider", np.random.default_rng(seed).bytes(32), tenant="provider")


def expected_marked(
    config: SchemeConfig,
    logits: np.ndarray,
    tenant: WatermarkKey,
    provider: WatermarkKey,
    context: list[int],
) -> np.ndarray:
    """One row's marked logits, computed from the numpy twin alone."""
    vocab = logits.size
    tenant_green = numpy_green(config, tenant, context, vocab).astype(np.float32)
    provider_green = numpy_green(config, provider, context, vocab).astype(np.float32)
    if config.layering is Layering.STACKED:
        marked = logits + tenant_green * np.float32(config.delta)
        return marked + provider_green * np.float32(config.provider_delta)
    digest = hashing.context_digest([np.array([token], dtype=np.uint32) for token in context])
    on_provider = bool(layer_mask(config, provider, digest, "provider")[0])
    return logits + (provider_green if on_provider else tenant_green) * np.float32(config.delta)


def test_the_coin_twins_are_bit_identical() -> None:
    rng = np.random.default_rng(1)
    digests = rng.integers(0, 2**32, size=100_000, dtype=np.uint64).astype(np.uint32)
    words = key_word_array([coin_key(provider_key())])[0]
    from_numpy = hashing.position_coin(words, digests)
    from_torch = hashing_torch.position_coin(
        torch.tensor(words.astype(np.int64)), torch.from_numpy(digests.astype(np.int64))
    )
    assert np.array_equal(from_numpy.astype(np.int64), from_torch.numpy())


def test_the_split_coin_gives_the_provider_its_share_of_contexts() -> None:
    config = SchemeConfig(layering=Layering.SPLIT, provider_share=0.3)
    digests = hashing.context_digest([np.arange(50_000, dtype=np.uint32)])
    share = layer_mask(config, provider_key(), digests, "provider").mean()
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 50_000)
    tenant = layer_mask(config, provider_key(), digests, "tenant")
    assert not np.any(tenant & layer_mask(config, provider_key(), digests, "provider"))


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("config", LAYERED, ids=lambda c: c.layering.value)
def test_layered_processor_matches_the_numpy_twin_per_row(
    config: SchemeConfig, backend: str
) -> None:
    keys = tenant_keys(4, seed=3)
    provider = provider_key()
    rng = np.random.default_rng(5)
    input_ids = torch.from_numpy(rng.integers(0, VOCAB, size=(64, 3)))
    logits = rng.standard_normal((64, VOCAB)).astype(np.float32)
    rows: list[WatermarkKey | None] = [keys[i % 4] if i % 5 else None for i in range(64)]
    processor = TenantWatermarkProcessor(
        config,
        rows,
        backend=backend,  # type: ignore[arg-type]
        provider_key=provider,
    )
    marked = processor(input_ids, torch.from_numpy(logits.copy())).numpy()
    for row, key in enumerate(rows):
        if key is None:
            assert np.array_equal(marked[row], logits[row])
            continue
        context = input_ids[row, -1:].tolist()
        expected = expected_marked(config, logits[row], key, provider, context)
        assert np.allclose(marked[row], expected, atol=1e-6), row


@pytest.mark.parametrize("config", LAYERED, ids=lambda c: c.layering.value)
def test_the_serving_engine_batch_marks_exactly_like_the_engine(config: SchemeConfig) -> None:
    """What the vLLM processor runs (`BatchWatermark`) against the engine's processor."""
    keys = tenant_keys(3, seed=8)
    provider = provider_key()
    rng = np.random.default_rng(9)
    watermark = BatchWatermark(config, provider)
    rows = 12
    for index in range(rows):
        prompt = rng.integers(0, VOCAB, size=int(rng.integers(1, 4))).tolist()
        output = rng.integers(0, VOCAB, size=int(rng.integers(0, 3))).tolist()
        watermark.rows[index] = BatchRow(keys[index % 3] if index != 4 else None, prompt, output)
    logits = torch.from_numpy(rng.standard_normal((rows, VOCAB)).astype(np.float32))
    from_batch = watermark.apply(logits.clone())
    engine = TenantWatermarkProcessor(
        config, [row.key for row in watermark.rows.values()], provider_key=provider
    )
    last = torch.tensor([[row.context(1) or [0]][0] for row in watermark.rows.values()])
    from_engine = engine(last, logits.clone())  # type: ignore[arg-type]
    assert torch.equal(from_batch, from_engine)
    assert torch.equal(from_batch[4], logits[4])


def test_layered_schemes_need_a_provider_key_and_a_left_hash_green_list() -> None:
    with pytest.raises(SchemeError, match="provider key"):
        TenantWatermarkProcessor(layered_scheme("split"), [None])
    with pytest.raises(SchemeError, match="left-hash green-list"):
        SchemeConfig(scheme=Scheme.GUMBEL, layering=Layering.STACKED)
    with pytest.raises(SchemeError):
        SchemeConfig(layering=Layering.SPLIT, provider_share=1.0)
    with pytest.raises(SchemeError):
        layered_scheme("both")


def test_each_layering_has_its_own_fingerprint_and_tenant_keeps_the_old_one() -> None:
    fingerprints = {layered_scheme(layering).fingerprint for layering in Layering}
    assert len(fingerprints) == 3
    assert "layering" not in SchemeConfig().canonical()  # recorded commitments stay valid
    assert "layering" not in SchemeConfig().to_dict()  # and serialize as before
    split = layered_scheme("split")
    assert SchemeConfig.from_dict(split.to_dict()) == split
    assert split.fingerprint != SchemeConfig(layering="split", provider_share=0.4).fingerprint


def generate(
    config: SchemeConfig,
    rows: list[WatermarkKey | None],
    provider: WatermarkKey,
    steps: int,
    seed: int,
) -> np.ndarray:
    """Sample (rows, steps) tokens from random logits, watermarked by the processor."""
    generator = torch.Generator().manual_seed(seed)
    processor = TenantWatermarkProcessor(config, rows, provider_key=provider)
    ids = torch.randint(0, VOCAB, (len(rows), 1), generator=generator)
    for _ in range(steps):
        logits = torch.randn((len(rows), VOCAB), generator=generator) * 2.5
        marked = processor(ids, logits)  # type: ignore[arg-type]
        chosen = torch.multinomial(torch.softmax(marked, dim=-1), 1, generator=generator)
        ids = torch.cat([ids, chosen], dim=1)
    return ids.numpy()


def tuples(documents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (context digest, token) tuples of h = 1 documents."""
    contexts = documents[:, :-1].reshape(-1).astype(np.uint32)
    tokens = documents[:, 1:].reshape(-1).astype(np.uint32)
    packed = np.unique((contexts.astype(np.uint64) << np.uint64(32)) | tokens)
    digests = hashing.context_digest([(packed >> np.uint64(32)).astype(np.uint32)])
    return digests, (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)


@pytest.mark.parametrize("config", LAYERED, ids=lambda c: c.layering.value)
def test_a_ring_of_ten_is_found_by_the_provider_layer_and_the_ring_test(
    config: SchemeConfig,
) -> None:
    config = config.bind(VOCAB)
    provider = provider_key()
    ring = tenant_keys(10, seed=11)
    outsiders = tenant_keys(10, seed=12)
    documents = generate(config, [ring[i % 10] for i in range(40)], provider, 60, seed=1)
    digests, tokens = tuples(documents)
    on_provider = layer_mask(config, provider, digests, "provider")
    on_tenant = layer_mask(config, provider, digests, "tenant")
    provider_green = green_counts(config, [provider], digests[on_provider], tokens[on_provider])
    from distillguard.watermark import stats

    log10_p = stats.binomial_upper_tail(int(provider_green[0]), int(on_provider.sum()), 0.25)[1]
    assert log10_p < -20
    found = ring_detection(config, ring, digests[on_tenant], tokens[on_tenant])
    assert found.log10_p < -6
    assert found.pairs == 10 * int(on_tenant.sum())
    not_ring = ring_detection(config, outsiders, digests[on_tenant], tokens[on_tenant])
    assert not_ring.p_value > 1e-3
    assert "Binomial(" in found.null_hypothesis


def test_ring_p_values_are_uniform_on_text_no_ring_key_marked() -> None:
    """Null: text marked by other tenants and the provider (the realistic null for a ring of
    innocents), scored against 20 ring keys; the p-values must be uniform (discrete: checked
    through the rejection rate at several levels and a KS distance)."""
    config = layered_scheme("stacked").bind(VOCAB)
    provider = provider_key()
    writers = tenant_keys(4, seed=21)
    ring = tenant_keys(20, seed=22)
    documents = generate(config, [writers[i % 4] for i in range(300)], provider, 40, seed=2)
    p_values = []
    for trial in range(300):
        digests, tokens = tuples(documents[trial : trial + 1])
        p_values.append(ring_detection(config, ring, digests, tokens).p_value)
    p = np.array(p_values)
    for alpha in (0.01, 0.05, 0.2):
        rejected = int((p <= alpha).sum())
        # an exact discrete test rejects at most alpha; allow binomial sampling error
        assert rejected <= scipy_stats.binom.ppf(0.999, p.size, alpha), (alpha, rejected)
    assert (p <= 0.5).mean() > 0.35  # not degenerate (a test that can fail the other way)
    assert scipy_stats.kstest(p, "uniform").statistic < 0.12


def test_a_ring_that_lists_a_key_twice_is_refused() -> None:
    config = SchemeConfig().bind(VOCAB)
    key = tenant_keys(1)[0]
    digests = np.arange(10, dtype=np.uint32)
    with pytest.raises(InputError, match="twice"):
        ring_detection(config, [key, key], digests, digests)


def test_provider_positions_need_the_provider_key_under_split() -> None:
    with pytest.raises(SchemeError):
        layer_mask(layered_scheme("split"), None, np.arange(3, dtype=np.uint32), "provider")
    tenant_only = layer_mask(SchemeConfig(), None, np.arange(3, dtype=np.uint32), "provider")
    assert not tenant_only.any()
