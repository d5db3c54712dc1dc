"""The evidence report: content, schema, the tampered-log warning, the CLI and a rendering."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("jsonschema")

import jsonschema
from click.testing import CliRunner

from distillguard.cli import main
from distillguard.experiments.distill import ExperimentConfig, harvest
from distillguard.forensics.audit import run_audit
from distillguard.forensics.report import build_report, load_schema, render_html
from distillguard.watermark.vocab import load_tokenizer


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """A harvest on the tiny model, and an open-weights audit of the tiny model itself."""
    home = tmp_path_factory.mktemp("report-home")
    config = ExperimentConfig(harvest_max_tokens=24, tenants=4)
    run = harvest(
        [f"Module {i} provides the" for i in range(16)], home, config, model=tiny_model_dir
    )
    tokenizer, _ = load_tokenizer(tiny_model_dir)
    outcome = run_audit(
        home,
        run.scheme,
        tokenizer,
        weights=tiny_model_dir,
        reference=str(tiny_model_dir),
        contexts=200,
    )
    return home, outcome.to_json() | {"command": "distillguard audit suspect --weights tiny"}


def test_the_report_carries_every_section_and_validates(
    audited: tuple[Path, dict[str, Any]],
) -> None:
    home, audit = audited
    statistics = [result["statistic"] for result in audit["results"]]
    assert statistics == ["green mass shift", "top-1 green", "green mass"]  # shift leads
    # the suspect is its own reference here: nothing moved, so nothing to see
    assert all(key["log10_p"] == 0.0 for key in audit["results"][0]["keys"])
    assert [result["statistic"] for result in audit["controls"]] == ["top-1 green", "green mass"]
    report = build_report(audit, home)
    jsonschema.validate(report, load_schema())
    assert report["audit_chain"]["ok"] and report["audit_chain"]["records"] == 16
    assert report["attribution"]["tenants_tested"] == 4
    assert report["commitment"] and report["commitment"][0]["commitment"]
    assert report["controls"] and report["reproduce"].startswith("distillguard audit")
    page = render_html(report)
    for heading in (
        "Summary",
        "null hypothesis",
        "Attribution",
        "Methods",
        "Key commitment",
        "Audit log",
        "Reproduce",
    ):
        assert heading in page
    assert page.count("<svg") == 3
    assert "Plots: the top-1 green test" in page  # the shift leads, but has no binomial curve
    assert "failed verification" not in page


def test_a_tampered_audit_log_is_stated_on_the_first_page(
    audited: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, audit = audited
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    with closing(sqlite3.connect(copy / "distillguard.db")) as connection, connection:
        connection.execute(
            "UPDATE usage SET completion_tokens = completion_tokens + 1 WHERE rowid = 3"
        )
    report = build_report(audit, copy)
    assert not report["audit_chain"]["ok"]
    assert report["summary"].startswith("THE AUDIT LOG FAILED VERIFICATION")
    page = render_html(report)
    assert page.index("failed verification") < page.index("<h2>Summary</h2>")


def test_the_report_command_writes_html_and_json(
    audited: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, audit = audited
    source = tmp_path / "audit.json"
    source.write_text(json.dumps(audit))
    out = tmp_path / "evidence.html"
    result = CliRunner().invoke(
        main, ["--home", str(home), "report", str(source), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    jsonschema.validate(json.loads(out.with_suffix(".json").read_text()), load_schema())
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = CliRunner().invoke(main, ["--home", str(home), "report", str(bad)])
    assert refused.exit_code == 1 and "audit suspect --json" in refused.stderr


def test_the_report_renders_in_headless_chromium(
    audited: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    home, audit = audited
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(audit, home)))

    def chromium(*flags: str) -> None:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                f"--user-data-dir={tmp_path / 'profile'}",
                *flags,
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2000")
    assert shot.stat().st_size > 10_000
    pdf = tmp_path / "report.pdf"
    chromium("--no-pdf-header-footer", f"--print-to-pdf={pdf}")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 10_000


def test_a_black_box_audit_with_a_base_leads_with_the_focused_test(
    audited: tuple[Path, dict[str, Any]], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import distillguard.forensics.audit as audit_module

    home, _ = audited
    asked: list[str] = []

    def answer(url: str, model: str, prompts: list[str], **options: Any) -> list[str]:
        asked.append(url)
        return [f"{prompt} and then the module returns a value" for prompt in prompts]

    monkeypatch.setattr(audit_module, "query_suspect", answer)
    monkeypatch.setattr(audit_module, "_first_model", lambda url: "reference")
    tokenizer, vocab = load_tokenizer(tiny_model_dir)
    from distillguard.watermark.scheme import SchemeConfig, tokenizer_fingerprint

    scheme = SchemeConfig().bind(vocab, tokenizer_fingerprint(tokenizer))
    outcome = run_audit(
        home,
        scheme,
        tokenizer,
        url="http://suspect/v1",
        suspect_model="theirs",
        reference="http://reference/v1",
        base=tiny_model_dir,
        our_model=tiny_model_dir,
    )
    statistics = [result.statistic for result in outcome.results]
    assert statistics == ["green tuples, focused", "green tuples"]
    assert [result.statistic for result in outcome.controls] == statistics
    assert asked == ["http://suspect/v1", "http://reference/v1"]
    # our model is its own base here: it explains no tuple better, so none is scored
    focused, plain = outcome.results
    assert focused.scored == 0 and plain.scored > 0
    assert all(detection.p_value == 1.0 for detection in focused.detections)
    assert outcome.to_json()["parameters"]["base"] == str(tiny_model_dir)
