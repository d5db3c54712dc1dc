"""`distillguard generate`: a watermarked completion, its detection, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import assert_one_line_error, run


def test_generate_prints_a_watermarked_completion_and_detects_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    code, out, _ = run(
        tmp_path,
        "generate",
        "The module",
        "--model",
        str(tiny_model_dir),
        "--max-tokens",
        "80",
        "--seed",
        "3",
        "--detect",
        "--json",
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["tenant"] == "demo"
    assert payload["watermark_key_id"].startswith("wk_")
    assert payload["detection"]["scored_tokens"] > 0
    if payload["detection"]["scored_tokens"] >= 40:
        assert payload["detection"]["p_value"] < 1e-3
    # the demo tenant's key was recorded under the engine's scheme
    code, out, _ = run(tmp_path, "keys", "tenant", "demo", "--json")
    assert code == 0


def test_generate_bad_input_gives_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = ["--model", str(tiny_model_dir)]
    assert_one_line_error(
        run(tmp_path, "generate", "hi", "--model", str(tmp_path)), "not a Hugging Face model"
    )
    assert_one_line_error(
        run(tmp_path, "generate", "hi", *model, "--max-tokens", "0"), "max_tokens"
    )
    assert_one_line_error(
        run(tmp_path, "generate", "hi", *model, "--temperature", "-1"), "temperature"
    )
    assert_one_line_error(run(tmp_path, "generate", "word " * 300, *model), "context")
    run(tmp_path, "keys", "init")
    assert_one_line_error(
        run(tmp_path, "generate", "hi", *model, "--tenant", "nobody"), "unknown tenant"
    )
