"""Generated documentation stays in step with the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _render(script: str) -> str:
    spec = importlib.util.spec_from_file_location(script, REPO_ROOT / "scripts" / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.render())


def test_cli_reference_is_generated_from_the_current_code() -> None:
    actual = (REPO_ROOT / "docs" / "cli.md").read_text()
    assert actual == _render("gen_cli_docs"), "docs/cli.md is stale: run `make docs`"


def test_architecture_page_is_generated_from_the_current_code() -> None:
    actual = (REPO_ROOT / "docs" / "architecture.md").read_text()
    assert actual == _render("gen_architecture_docs"), "docs/architecture.md is stale: `make docs`"
