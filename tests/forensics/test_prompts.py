from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard.errors import ConfigError
from distillguard.forensics.prompts import load_prompts


def test_every_file_shape_loads(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first prompt\n\nsecond prompt\nfirst prompt\n")
    (tmp_path / "b.jsonl").write_text(
        "\n".join(
            [
                json.dumps("a plain string"),
                json.dumps({"question": "a question?"}),
                json.dumps({"instruction": "do this", "instances": [{"input": "with this"}]}),
                json.dumps({"unrelated": 1}),
            ]
        )
    )
    (tmp_path / "c.csv").write_text('act,prompt,type\nx,"a text prompt",TEXT\ny,"an image",IMAGE\n')
    assert load_prompts(tmp_path / "a.txt") == ["first prompt", "second prompt"]
    assert load_prompts(tmp_path / "b.jsonl") == [
        "a plain string",
        "a question?",
        "do this\n\nwith this",
    ]
    assert load_prompts(tmp_path / "c.csv") == ["a text prompt"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "cannot read"),
        ("empty.txt", "\n\n", "no prompts"),
        ("bad.jsonl", "{not json\n", "not a JSON line"),
        ("bad.csv", "a,b\n1,2\n", "'prompt' column"),
    ],
)
def test_bad_prompt_files_raise_a_clear_error(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_prompts(tmp_path / name)
