"""Prompt files: the prompts an audit sends to a suspect, or a simulator replays.

`load_prompts` reads one file whatever its shape: plain text (one prompt a line), JSONL (a
string a line, or objects with a `prompt`, `question`, `instruction` or `text` field; for
self-instruct seed tasks the first instance's input is appended), or CSV with a `prompt`
column (rows whose `type` column is not TEXT are skipped, as awesome-chatgpt-prompts wants).

Lines end at "\n" only (a "\r" before it is dropped with the rest of the line's whitespace).
`str.splitlines` would also split at U+2028, U+0085 and the like, which JSON carries raw
inside strings: a prompt holding one would become two broken lines.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from distillguard.errors import ConfigError

__all__ = ["load_prompts"]

_FIELDS = ("prompt", "question", "instruction", "text", "content", "query")


def _from_object(item: object) -> str | None:
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        return None
    for name in _FIELDS:
        value = item.get(name)
        if isinstance(value, str) and value.strip():
            instances = item.get("instances")
            if isinstance(instances, list) and instances and isinstance(instances[0], dict):
                extra = instances[0].get("input")
                if isinstance(extra, str) and extra.strip():
                    return f"{value}\n\n{extra}"
            return value
    return None


def load_prompts(path: Path) -> list[str]:
    """The prompts in one file, stripped, empty ones and exact duplicates dropped, in order."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read prompt file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"prompt file {path} is not UTF-8 text") from None
    suffix = Path(path).suffix.lower()
    prompts: list[str] = []
    if suffix in (".jsonl", ".ndjson"):
        for number, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                text = _from_object(json.loads(line))
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{number}: not a JSON line") from None
            if text is not None:
                prompts.append(text)
    elif suffix == ".csv":
        csv.field_size_limit(1 << 24)  # some prompts are longer than csv's 128 KiB default
        reader = csv.DictReader(io.StringIO(raw, newline=""))
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ConfigError(f"{path}: a CSV prompt file needs a 'prompt' column")
        for row in reader:
            if row.get("type") not in (None, "", "TEXT"):
                continue
            prompts.append(row["prompt"] or "")
        # a prompt over 20,000 characters is a document, not a chat prompt: keep its start
        prompts = [p[:20_000] for p in prompts]
    else:
        prompts = raw.split("\n")
    seen: set[str] = set()
    unique = []
    for prompt in (p.strip() for p in prompts):
        if prompt and prompt not in seen:
            seen.add(prompt)
            unique.append(prompt)
    if not unique:
        raise ConfigError(f"no prompts in {path}")
    return unique
