"""Shared fixtures: data paths, tokenizers and tiny random models built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("DISTILLGUARD_DATA", REPO_ROOT.parent / "shared" / "data"))


SHAKESPEARE = "karpathy_char-rnn__input.txt"


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    path = data_dir() / SHAKESPEARE
    if not path.is_file():
        pytest.skip(f"{path} is absent: set DISTILLGUARD_DATA to the shared data folder")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A word-level tokenizer whose decode -> encode round-trips, saved as tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    words = [f"w{index}" for index in range(1990)] + list(".,;:!?'-()\"")
    vocab = {"[UNK]": 0} | {word: index + 1 for index, word in enumerate(words)}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory = tmp_path_factory.mktemp("word_tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    return tokenizer, directory
