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


def test_a_line_separator_inside_a_json_string_does_not_split_the_line(tmp_path: Path) -> None:
    # str.splitlines() also splits at U+2028, U+2029 and U+0085, which JSON carries raw
    prompt = "first part\u2028second part\u0085third part\u2029last part"
    path = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": prompt}, ensure_ascii=False), json.dumps("next")]
    path.write_text("\n".join(lines) + "\r\n", encoding="utf-8")
    assert load_prompts(path) == [prompt, "next"]
    text = tmp_path / "prompts.txt"
    text.write_text("one\u2028still the first\nsecond\r\n", encoding="utf-8")
    assert load_prompts(text) == ["one\u2028still the first", "second"]
