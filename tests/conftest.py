"""Shared fixtures: data paths, tokenizers and tiny random models built on the fly."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by `distillguard model train --tiny` (seconds), shared by the session."""
    pytest.importorskip("torch")
    from distillguard.engine.train import TrainConfig, train_model

    directory = tmp_path_factory.mktemp("tiny_model")
    train_model(directory, TrainConfig.tiny(), progress=False)
    return directory


@pytest.fixture(scope="session")
def llama_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A randomly initialized Llama-architecture model with the tiny model's tokenizer."""
    torch = pytest.importorskip("torch")
    import shutil

    import transformers

    directory = tmp_path_factory.mktemp("llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, directory / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


# -- real services for the multi-replica mode ------------------------------------------------

REDIS_URL_VARIABLE = "DISTILLGUARD_TEST_REDIS_URL"
DATABASE_URL_VARIABLE = "DISTILLGUARD_TEST_DATABASE_URL"


def postgres_url() -> str:
    """The test database's URL, or skip with the reason."""
    url = os.environ.get(DATABASE_URL_VARIABLE)
    if not url:
        pytest.skip(f"{DATABASE_URL_VARIABLE} is unset: no PostgreSQL to test against")
    pytest.importorskip("psycopg")
    return url


def redis_url() -> str:
    """The test Redis's URL (a database the tests may flush), or skip with the reason."""
    url = os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        pytest.skip(f"{REDIS_URL_VARIABLE} is unset: no Redis to test against")
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {url} does not answer: {exc}")
    return url


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped afterwards."""
    import secrets

    import psycopg

    url = postgres_url()
    schema = "dg_test_" + secrets.token_hex(6)
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at {url} is unavailable: {exc}")
    separator = "&" if "?" in url else "?"
    yield f"{url}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each store backend in turn: None (the SQLite file) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url
