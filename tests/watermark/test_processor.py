"""The logits processor: parity with the detector, per-row tenants, and round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from distillguard.watermark import Detector, Scheme, SchemeConfig, Seeding, WatermarkKey, hashing  # noqa: E402
from distillguard.watermark.processor import TenantWatermarkProcessor  # noqa: E402

VOCAB = 2003


def tenant_keys(count: int, seed: int = 0) -> list[WatermarkKey]:
    rng = np.random.default_rng(seed)
    return [
        WatermarkKey(f"wk_{index}", rng.bytes(32), tenant=f"tenant-{index}")
        for index in range(count)
    ]


def numpy_green(
    config: SchemeConfig, key: WatermarkKey, context: list[int], vocab: int
) -> np.ndarray:
    """Green mask over the vocabulary as the detector would compute it for this context."""
    candidates = np.arange(vocab, dtype=np.uint32)
    words = np.array(key.words, dtype=np.uint32)
    if config.seeding is Seeding.LEFT_HASH:
        columns = [
            np.full(vocab, token, dtype=np.uint32) for token in context[-config.context_width :]
        ]
        digests = hashing.context_digest(columns)
    else:
        lookback = config.context_width - 1
        window = np.array(context[len(context) - lookback :] if lookback else [], dtype=np.uint32)
        anchors = candidates.copy()
        if window.size:  # the lowest public rank among the window and the candidate wins
            ranks = hashing.anchor_rank(window)
            window_anchor, window_rank = window[np.argmin(ranks)], ranks.min()
            candidate_wins = hashing.anchor_rank(candidates) < window_rank
            anchors = np.where(candidate_wins, candidates, window_anchor).astype(np.uint32)
        digests = hashing.context_digest([anchors])
    uniforms = hashing.keyed_uniform(words, digests, candidates)
    return uniforms < np.uint32(config.green_threshold)


BACKENDS = ["kernel", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("seeding", "width"),
    [
        (Seeding.LEFT_HASH, 3),
        (Seeding.LEFT_HASH, 1),
        (Seeding.SELF_HASH, 3),
        (Seeding.SELF_HASH, 1),
    ],
)
@pytest.mark.parametrize("vocab", [VOCAB, 65_536])  # the larger one runs the parallel kernel
def test_processor_green_lists_match_the_detector_per_row(
    seeding: Seeding, width: int, backend: str, vocab: int
) -> None:
    config = SchemeConfig(seeding=seeding, context_width=width).bind(vocab)
    keys = tenant_keys(3)
    rows = [keys[0], None, keys[1], keys[2], keys[0]]  # tenants mixed in one batch, one unkeyed
    processor = TenantWatermarkProcessor(config, rows, backend=backend)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    input_ids = torch.from_numpy(rng.integers(0, vocab, size=(5, 7)))
    scores = torch.zeros(5, vocab)
    out = processor(input_ids, scores)
    for row, key in enumerate(rows):
        if key is None:
            assert torch.equal(out[row], scores[row])
            continue
        expected = numpy_green(config, key, input_ids[row].tolist(), vocab)
        assert np.array_equal(out[row].numpy() == config.delta, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gumbel_processor_picks_the_argmax_of_r_to_the_one_over_p(backend: str) -> None:
    config = SchemeConfig(scheme=Scheme.GUMBEL, context_width=2).bind(VOCAB)
    key = tenant_keys(1)[0]
    processor = TenantWatermarkProcessor(config, [key], backend=backend)  # type: ignore[arg-type]
    rng = np.random.default_rng(4)
    input_ids = torch.from_numpy(rng.integers(0, VOCAB, size=(1, 5)))
    scores = torch.from_numpy(rng.normal(size=(1, VOCAB)).astype(np.float32))
    out = processor(input_ids, scores)
    chosen = int(torch.argmax(out[0]))
    assert torch.isinf(out[0]).sum() == VOCAB - 1
    probabilities = torch.softmax(scores[0].double(), dim=-1).numpy()
    columns = [np.full(VOCAB, token, dtype=np.uint32) for token in input_ids[0, -2:].tolist()]
    uniforms = hashing.keyed_uniform(
        np.array(key.words, dtype=np.uint32),
        hashing.context_digest(columns),
        np.arange(VOCAB, dtype=np.uint32),
    )
    r = (uniforms.astype(np.float64) + 0.5) / 2.0**32
    assert chosen == int(np.argmax(np.log(r) / probabilities))


def test_rows_expand_for_several_sequences_per_prompt() -> None:
    config = SchemeConfig().bind(VOCAB)
    keys = tenant_keys(2)
    processor = TenantWatermarkProcessor(config, keys)
    out = processor(torch.zeros(4, 6, dtype=torch.int64), torch.zeros(4, VOCAB))
    assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3])
    assert not torch.equal(out[0], out[2])


def random_model(vocab: int) -> object:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [Scheme.GREEN_LIST, Scheme.GUMBEL])
def test_round_trip_detects_and_attributes_200_samples_among_1000_tenants(scheme: Scheme) -> None:
    config = SchemeConfig(scheme=scheme, gamma=0.25, delta=2.0).bind(VOCAB)
    model = random_model(VOCAB)
    keys = tenant_keys(1000, seed=1)
    detector = Detector(config)
    rng = np.random.default_rng(8)
    detected = attributed = 0
    samples = 200
    batch = 50
    for _ in range(samples // batch):
        row_keys = [keys[int(index)] for index in rng.choice(1000, size=batch, replace=False)]
        prompts = torch.from_numpy(rng.integers(0, VOCAB, size=(batch, 8)))
        output = model.generate(  # type: ignore[attr-defined]
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            max_new_tokens=200,
            min_new_tokens=200,
            logits_processor=[TenantWatermarkProcessor(config, row_keys)],
            pad_token_id=0,
        )
        for row, truth in enumerate(row_keys):
            completion = output[row, 8:].numpy()  # detection without the prompt
            assert completion.size == 200
            detection = detector.detect([completion], [truth]).total[0]
            detected += detection.p_value < 1e-6
            attribution = detector.attribute([completion], keys)
            attributed += (
                attribution.best.key_id == truth.key_id and attribution.corrected_p_value < 1e-6
            )
    assert detected >= 0.99 * samples
    assert attributed >= 0.99 * samples


def test_text_round_trip_through_a_tokenizer(word_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from distillguard.watermark import tokenizer_fingerprint

    tokenizer, _ = word_tokenizer
    vocab = tokenizer.get_vocab_size()
    config = SchemeConfig().bind(vocab, tokenizer_fingerprint(tokenizer))
    model = random_model(vocab)
    key = WatermarkKey("wk_text", os.urandom(32), tenant="text")
    prompt = torch.tensor([tokenizer.encode("w1 w2 w3 w4 w5").ids])
    output = model.generate(  # type: ignore[attr-defined]
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        max_new_tokens=120,
        min_new_tokens=120,
        logits_processor=[TenantWatermarkProcessor(config, [key])],
        pad_token_id=0,
    )
    text = tokenizer.decode(output[0, prompt.shape[1] :].tolist())
    report = Detector(config).detect_text([text], [key], tokenizer)
    assert report.total[0].p_value < 1e-6
