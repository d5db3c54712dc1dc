"""Named prompt sets for the traffic simulator, read at run time from files (never shipped).

`PromptSources.from_dir` names the four files of the project's data folder (SOURCES.md);
each is read by `forensics.prompts.load_prompts`, whatever its shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from distillguard.errors import ConfigError
from distillguard.forensics.prompts import load_prompts

__all__ = ["BENIGN_SOURCES", "HARVEST_SOURCES", "SOURCE_FILES", "PromptSources", "fold_of"]

SOURCE_FILES = {
    "open-assistant": "LAION-AI_Open-Assistant__prompt_lottery_en_250_text.jsonl",
    "awesome-chatgpt": "f_awesome-chatgpt-prompts__prompts.csv",
    "gsm8k": "openai_grade-school-math__test.jsonl",
    "self-instruct": "yizhongw_self-instruct__seed_tasks.jsonl",
}
BENIGN_SOURCES = ("open-assistant", "awesome-chatgpt")
HARVEST_SOURCES = ("gsm8k", "self-instruct")


def fold_of(text: str, folds: int = 2) -> int:
    """A prompt's fold, fixed by its content (SHA-256), the same on every machine."""
    return hashlib.sha256(text.encode()).digest()[0] % folds


@dataclass(frozen=True)
class PromptSources:
    """Named prompt lists: what benign users send and what harvesters sweep."""

    benign: dict[str, list[str]]
    harvest: dict[str, list[str]]

    @classmethod
    def from_dir(cls, data_dir: Path) -> PromptSources:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise ConfigError(f"data folder {data_dir} does not exist")
        loaded = {name: load_prompts(data_dir / file) for name, file in SOURCE_FILES.items()}
        return cls(
            benign={name: loaded[name] for name in BENIGN_SOURCES},
            harvest={name: loaded[name] for name in HARVEST_SOURCES},
        )

    def select(
        self, benign: tuple[str, ...], harvest: tuple[str, ...], fold: int | None = None
    ) -> tuple[list[str], list[str]]:
        """The benign and harvest prompts of the named sources, of one fold or all."""

        def pick(pool: dict[str, list[str]], names: tuple[str, ...]) -> list[str]:
            chosen = []
            for name in names:
                if name not in pool:
                    raise ConfigError(f"unknown prompt source {name!r}; have {sorted(pool)}")
                chosen += [p for p in pool[name] if fold is None or fold_of(p) == fold]
            return chosen

        return pick(self.benign, benign), pick(self.harvest, harvest)
