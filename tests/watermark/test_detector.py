"""Detection behaviour: dedup, prompts, fingerprints, vocabularies and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.errors import FingerprintMismatchError, InputError, VocabularyMismatchError
from distillguard.watermark import Detector, Scheme, SchemeConfig, WatermarkKey
from distillguard.watermark.detector import attribute_detections, log10_to_text


def key(name: str, fill: int) -> WatermarkKey:
    return WatermarkKey(name, bytes([fill]) * 32, tenant=name)


def test_each_unique_tuple_is_scored_once_across_documents() -> None:
    rng = np.random.default_rng(0)
    document = rng.integers(0, 1000, size=300)
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    single = detector.detect([document], [key("a", 1)])
    doubled = detector.detect([document, document.copy()], [key("a", 1)])
    assert doubled.total[0].scored_tokens == single.total[0].scored_tokens
    assert doubled.total[0].score == single.total[0].score
    # but each document, on its own, keeps its own tuples
    assert [item.detections[0].scored_tokens for item in doubled.documents] == [296, 296]


def test_prompt_tokens_are_never_scored() -> None:
    rng = np.random.default_rng(1)
    document = rng.integers(0, 1000, size=100)
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    no_prompt = detector.detect([document], [key("a", 1)])
    with_prompt = detector.detect([document], [key("a", 1)], prompt_lengths=[30])
    assert no_prompt.total[0].scored_tokens == 96  # first 4 tokens are context only
    assert with_prompt.total[0].scored_tokens == 70


def test_mismatched_fingerprint_raises() -> None:
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    other = SchemeConfig(gamma=0.5).bind(1000).fingerprint
    with pytest.raises(FingerprintMismatchError, match="does not match"):
        detector.detect([[1, 2, 3, 4, 5, 6]], [key("a", 1)], fingerprint=other)
    # the right fingerprint passes
    detector.detect([[1, 2, 3, 4, 5, 6]], [key("a", 1)], fingerprint=detector.fingerprint)


def test_fingerprint_covers_every_parameter() -> None:
    base = SchemeConfig(context_width=4).bind(1000, "sha256:abc")
    variants = [
        SchemeConfig(gamma=0.5).bind(1000, "sha256:abc"),
        SchemeConfig(delta=1.0).bind(1000, "sha256:abc"),
        SchemeConfig(context_width=2).bind(1000, "sha256:abc"),
        SchemeConfig(seeding="self_hash").bind(1000, "sha256:abc"),  # type: ignore[arg-type]
        SchemeConfig(scheme=Scheme.GUMBEL).bind(1000, "sha256:abc"),
        SchemeConfig(context_width=4).bind(1001, "sha256:abc"),
        SchemeConfig(context_width=4).bind(1000, "sha256:abd"),
    ]
    assert len({base.fingerprint, *(variant.fingerprint for variant in variants)}) == 8


def test_token_ids_outside_the_vocabulary_raise() -> None:
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    with pytest.raises(VocabularyMismatchError, match="outside the scheme's vocabulary"):
        detector.detect([[1, 2, 3, 4, 5, 1000]], [key("a", 1)])


def test_unbound_scheme_cannot_detect() -> None:
    with pytest.raises(VocabularyMismatchError, match="not bound"):
        Detector(SchemeConfig(context_width=4))


def test_bad_input_raises_clear_errors() -> None:
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    with pytest.raises(InputError, match="no documents"):
        detector.detect([], [key("a", 1)])
    with pytest.raises(InputError, match="empty"):
        detector.detect([[]], [key("a", 1)])
    with pytest.raises(InputError, match="shorter than the scheme's context"):
        detector.detect([[1, 2, 3]], [key("a", 1)])
    with pytest.raises(InputError, match="no keys"):
        detector.detect([[1, 2, 3, 4, 5, 6]], [])
    with pytest.raises(InputError, match="integer token ids"):
        detector.detect([np.array([0.5, 1.5, 2.5, 3.5, 4.5])], [key("a", 1)])


def test_tokenizer_mismatch_raises(word_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer, _ = word_tokenizer
    detector = Detector(SchemeConfig(context_width=4).bind(2002, "sha256:" + "0" * 64))
    with pytest.raises(VocabularyMismatchError, match="not the one the scheme was bound to"):
        detector.detect_text(["w1 w2 w3 w4 w5 w6"], [key("a", 1)], tokenizer)


def test_detections_are_frozen_and_explain_their_null_hypothesis() -> None:
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    detection = detector.detect([list(range(50))], [key("a", 1)]).total[0]
    with pytest.raises(AttributeError):
        detection.score = 0.0  # type: ignore[misc]
    assert "Binomial(46, 0.25)" in detection.null_hypothesis
    assert detection.to_dict()["green_tokens"] == detection.green_tokens


def test_attribution_corrects_for_the_number_of_keys() -> None:
    detector = Detector(SchemeConfig(context_width=4).bind(1000))
    keys = [key(f"t{index}", index + 1) for index in range(10)]
    report = detector.detect([np.arange(500) % 997], keys)
    attribution = attribute_detections(report.total)
    assert attribution.keys_tested == 10
    assert attribution.corrected_log10_p == pytest.approx(min(0.0, attribution.best.log10_p + 1.0))
    assert attribution.ranking[0].detection is attribution.best


def test_p_values_print_far_below_float_range() -> None:
    assert log10_to_text(-1034.92) == "1.20e-1035"
    assert log10_to_text(0.0) == "1"
    assert log10_to_text(-1.0) == "0.1000"


@pytest.mark.parametrize("repeats", [False, True])
def test_each_document_row_equals_detecting_that_document_alone(repeats: bool) -> None:
    # both per-document paths (no repeated tuple in the call / repeats) against the oracle
    rng = np.random.default_rng(21 if repeats else 22)
    vocab = 12 if repeats else 50_000
    documents = [rng.integers(0, vocab, size=int(rng.integers(1, 120))) for _ in range(40)]
    if repeats:
        documents += [documents[2], np.tile(documents[3][:6], 9)]
    detector = Detector(SchemeConfig(context_width=4).bind(vocab))
    keys = [key("a", 1), key("b", 2)]
    together = detector.detect(documents, keys)
    for index, document in enumerate(documents):
        if document.size <= 4:
            assert all(d.scored_tokens == 0 for d in together.documents[index].detections)
            continue
        alone = detector.detect([document], keys).total
        assert [d.to_dict() for d in together.documents[index].detections] == [
            d.to_dict() for d in alone
        ]
