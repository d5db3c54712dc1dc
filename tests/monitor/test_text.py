from __future__ import annotations

import numpy as np

from distillguard.monitor.text import asks_for_reasoning, embed, prompt_features, words


def test_features_are_deterministic_and_the_embedding_has_unit_norm() -> None:
    text = "Janet's ducks lay 16 eggs per day. How much does she make?"
    first, second = prompt_features(text), prompt_features(text)
    assert np.array_equal(first.embedding, second.embedding)
    assert first.bands == second.bands and first.topic == second.topic
    assert abs(float(np.linalg.norm(first.embedding)) - 1.0) < 1e-5
    assert first.word_count == len(words(text))


def test_an_empty_prompt_has_a_zero_embedding_and_no_bands() -> None:
    features = prompt_features("")
    assert not features.embedding.any()
    assert features.bands == ()
    assert embed([]).shape == features.embedding.shape


def test_reasoning_requests_are_recognized() -> None:
    for text in (
        "Solve this. Think step by step.",
        "Explain your reasoning in detail, then answer.",
        "Walk me through your thought process.",
        "Give a chain-of-thought before the final answer.",
    ):
        assert asks_for_reasoning(text), text
    for text in ("What is the capital of France?", "Write a haiku about the sea."):
        assert not asks_for_reasoning(text), text


def test_prompts_built_on_one_template_share_template_shingles() -> None:
    template = "Solve the following problem carefully and completely please: {q}"
    first = prompt_features(template.format(q="a farmer has nine cows and buys three more"))
    second = prompt_features(template.format(q="how many minutes are there in a week"))
    unrelated = prompt_features("tell me a story about a dragon who learns to bake bread")
    assert first.template_shingles & second.template_shingles
    assert not first.template_shingles & unrelated.template_shingles


def test_near_duplicates_share_a_minhash_band_and_distinct_prompts_do_not() -> None:
    base = "Write a short poem about the autumn leaves falling in the quiet park at dusk"
    near = base + " please"
    other = "Explain how a bicycle gear system converts pedal force into forward motion"
    assert set(prompt_features(base).bands) & set(prompt_features(near).bands)
    assert not set(prompt_features(base).bands) & set(prompt_features(other).bands)
