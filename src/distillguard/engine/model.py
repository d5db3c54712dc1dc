"""Loading a local Hugging Face causal-LM directory (the embedded model when none is given)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import ModelLoadError, require

__all__ = ["EMBEDDED_MODEL_DIR", "LoadedModel", "load_model", "load_model_tokenizer", "model_card"]

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


@dataclass(frozen=True)
class LoadedModel:
    """A model and its tokenizer, in evaluation mode on the CPU, float32."""

    path: Path
    name: str
    model: Any
    tokenizer: Any
    context_length: int
    vocab_size: int  # width of the logits
    eos_token_ids: tuple[int, ...]
    pad_token_id: int


def load_model(path: str | Path | None = None) -> LoadedModel:
    """Load `path` (a directory with config.json, weights and a tokenizer) or the embedded model."""
    require("torch", "model")
    require("transformers", "model")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    hf_logging: Any = transformers_logging

    directory = Path(path).expanduser() if path is not None else EMBEDDED_MODEL_DIR
    if not directory.is_dir():
        raise ModelLoadError(f"{directory} is not a directory")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} is not a Hugging Face model directory (no config.json)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # loading chatter is not the user's business
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            directory, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load a causal LM from {directory}: {first_line}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.eval()
    context_length = _context_length(config, tokenizer)
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return LoadedModel(
        path=directory,
        name=_model_name(directory),
        model=model,
        tokenizer=tokenizer,
        context_length=context_length,
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        eos_token_ids=eos,
        pad_token_id=int(pad),
    )


def load_model_tokenizer(path: str | Path) -> tuple[Any, int]:
    """A model directory's tokenizer and the width of its logits (config `vocab_size`), without
    its weights: what a gateway in front of another engine serving that model needs."""
    require("transformers", "model")
    from transformers import AutoConfig, AutoTokenizer

    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} is not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load a tokenizer from {directory}: {first_line}") from None
    width = getattr(config.get_text_config(), "vocab_size", None)
    if not isinstance(width, int):
        raise ModelLoadError(f"{directory}/config.json has no integer vocab_size")
    return tokenizer, width


def model_card(path: str | Path | None = None) -> dict[str, Any]:
    """The model card (card.json) of a model directory; the embedded model has one."""
    directory = Path(path).expanduser() if path is not None else EMBEDDED_MODEL_DIR
    card = directory / "card.json"
    if not card.is_file():
        raise ModelLoadError(f"{directory} has no card.json")
    data: dict[str, Any] = json.loads(card.read_text())
    return data


def _model_name(directory: Path) -> str:
    if directory == EMBEDDED_MODEL_DIR:
        return "distillguard-embedded"
    return directory.name


def _context_length(config: Any, tokenizer: Any) -> int:
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    raise ModelLoadError("cannot tell the model's context length from its config")


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    candidates = getattr(model.generation_config, "eos_token_id", None)
    if candidates is None:
        candidates = tokenizer.eos_token_id
    if candidates is None:
        return ()
    if isinstance(candidates, int):
        return (candidates,)
    return tuple(int(item) for item in candidates)
