"""The training corpus: prose from this Python's standard library, deterministic, split."""

from __future__ import annotations

import sys

from distillguard.engine.corpus import build_corpus, is_prose


def test_prose_filter_keeps_sentences_and_drops_code() -> None:
    assert is_prose("Return a new list containing all items from the iterable in ascending order.")
    assert not is_prose(">>> sorted([3, 1, 2])\n[1, 2, 3]")
    assert not is_prose("x = 1")
    assert not is_prose("(PY_MAJOR_VERSION, # the 2; an int PY_MINOR_VERSION, # 1; 0x1f = {0:1}")


def test_corpus_is_deterministic_deduplicated_and_held_out() -> None:
    first = build_corpus()
    second = build_corpus()
    assert first.sha256 == second.sha256
    assert first.python_version == ".".join(map(str, sys.version_info[:3]))
    assert len(first.train) > 1000
    assert len(set(first.train)) == len(first.train)
    assert not set(first.train) & set(first.validation)
    share = len(first.validation) / (len(first.train) + len(first.validation))
    assert 0.03 < share < 0.08
