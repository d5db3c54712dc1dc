"""Loading a local tokenizer (a Hugging Face model directory or a tokenizer.json file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError, require

__all__ = ["load_tokenizer"]


def load_tokenizer(path: str | Path) -> tuple[Any, int]:
    """(tokenizer, vocabulary size) from a model directory or a tokenizer.json file.

    The vocabulary size is the model's ``vocab_size`` from config.json when the directory has
    one (the width of its logits), else the tokenizer's size with added tokens.
    """
    require("tokenizers", "model")
    from tokenizers import Tokenizer

    location = Path(path).expanduser()
    file = location / "tokenizer.json" if location.is_dir() else location
    if not file.is_file():
        raise ConfigError(
            f"no tokenizer at {location} (expected a tokenizer.json file or a model directory)"
        )
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise ConfigError(f"{file} is not a valid tokenizer.json: {exc}") from None
    vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
    model_config = file.parent / "config.json"
    if model_config.is_file():
        try:
            vocab_size = int(json.loads(model_config.read_text())["vocab_size"])
        except (KeyError, ValueError, TypeError):
            raise ConfigError(f"{model_config} has no integer vocab_size") from None
    return tokenizer, vocab_size
