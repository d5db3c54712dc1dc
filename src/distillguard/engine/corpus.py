"""The embedded model's training corpus: English prose from the running CPython itself.

Every CPython install carries its standard library's docstrings and `pydoc_data.topics` (the
text of the language reference that `help()` shows). The corpus is built from those alone, so
training needs no download. Steps, all deterministic for a given Python build:

1. Docstrings of every module, class and function in the standard library's ``.py`` files,
   read with `ast` (never imported), files in sorted order; test suites, `idlelib`,
   `lib2to3` and `site-packages` are skipped. Then the `pydoc_data.topics` texts, by topic name.
2. Each text is split into paragraphs; a paragraph is kept when it reads as prose: at least
   8 words, mostly letters, no doctest prompts, few code-like lines.
3. Exact duplicate paragraphs are dropped (first occurrence kept).
4. A paragraph goes to the validation split when the first byte of SHA-256 of its text is below
   13 (about 5%); everything else is training text.

The corpus hash (SHA-256 over the training text, then the validation text) identifies it on the
model card.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Corpus", "build_corpus", "is_prose"]

_SKIPPED_DIRECTORIES = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "lib2to3",
    "site-packages",
    "__pycache__",
}
_VALIDATION_BYTE = 13  # sha256(paragraph)[0] < 13: 13/256 ~ 5% held out
_MIN_WORDS = 8
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    python_version: str

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for paragraph in (*self.train, "\0", *self.validation):
            digest.update(paragraph.encode())
            digest.update(b"\n\n")
        return "sha256:" + digest.hexdigest()

    @property
    def characters(self) -> int:
        return sum(len(paragraph) for paragraph in self.train)


def is_prose(paragraph: str) -> bool:
    """Whether a paragraph reads as English prose rather than code, tables or signatures."""
    words = _WORD.findall(paragraph)
    if len(words) < _MIN_WORDS:
        return False
    if ">>>" in paragraph or "..." in paragraph.splitlines()[0][:4]:
        return False
    letters = sum(character.isalpha() for character in paragraph)
    if letters < 0.7 * len(paragraph.replace(" ", "").replace("\n", "")):
        return False
    lines = paragraph.splitlines()
    code_like = sum(
        1
        for line in lines
        if line.startswith(("    ", "\t"))
        or (line.rstrip().endswith((":", ";", "{", "}", ")")) and "(" in line)
    )
    return code_like <= len(lines) // 3


def _paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines()]
        paragraph = " ".join(line for line in lines if line)
        if paragraph:
            yield paragraph


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts[:-1])
        if parts & _SKIPPED_DIRECTORIES or path.name.startswith("test_"):
            continue
        files.append(path)
    return files


def _docstrings(path: Path) -> Iterator[str]:
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                yield docstring


def _topics() -> Iterator[str]:
    from pydoc_data import topics

    for name in sorted(topics.topics):
        yield topics.topics[name]


def build_corpus() -> Corpus:
    """Build the corpus from this interpreter's standard library (see the module docstring)."""
    seen: set[str] = set()
    train: list[str] = []
    validation: list[str] = []

    def texts() -> Iterator[str]:
        for path in _stdlib_files():
            yield from _docstrings(path)
        yield from _topics()

    for text in texts():
        for paragraph in _paragraphs(text):
            if paragraph in seen or not is_prose(paragraph):
                continue
            seen.add(paragraph)
            if hashlib.sha256(paragraph.encode()).digest()[0] < _VALIDATION_BYTE:
                validation.append(paragraph)
            else:
                train.append(paragraph)
    version = ".".join(str(part) for part in sys.version_info[:3])
    return Corpus(tuple(train), tuple(validation), version)
