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
    monkeypatch.setattr(audit_module, "_first_model", lambda url, api_key: "reference")
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


SCRIPT = "<script>alert(1)</script>"


def test_every_field_the_page_shows_is_escaped(audited: tuple[Path, dict[str, Any]]) -> None:
    # result['scored'] went into the page as it was; a hand-edited audit file can put
    # markup in any field, numbers included
    home, audit = audited
    report = build_report(json.loads(json.dumps(audit)), home)  # a copy: it is changed below
    report["suspect"] = report["mode"] = report["reproduce"] = SCRIPT
    shift = report["results"][0]  # not the plotted line (the shift is not an exact test)
    shift["scored"] = shift["statistic"] = SCRIPT
    shift["best"] |= {"tenant": SCRIPT, "log10_p": SCRIPT, "adjusted_log10_p": SCRIPT}
    report["controls"][0]["scored"] = SCRIPT
    attribution = report["attribution"]
    attribution |= {"tenant": SCRIPT, "tenants_tested": SCRIPT, "log10_p": SCRIPT}
    attribution["ranking"][0] |= {"score": SCRIPT, "expected": SCRIPT, "log10_p": SCRIPT}
    report["methods"]["parameters"] = {SCRIPT: SCRIPT}
    report["commitment"][0] |= {"tenant": SCRIPT, "commitment": SCRIPT}
    report["audit_chain"]["checkpoint_public_key"] = SCRIPT
    report["account_timeline"]["tier_changes"] = [
        {
            "changed_at": SCRIPT,
            "key_id": SCRIPT,
            "previous": SCRIPT,
            "tier": SCRIPT,
            "requests": SCRIPT,
            "reasons": [SCRIPT],
        }
    ]
    page = render_html(report)
    assert "<script" not in page and "&lt;script&gt;" in page
    report["audit_chain"] |= {"ok": False, "first_bad_seq": SCRIPT, "reason": SCRIPT}
    page = render_html(report)
    assert "failed verification" in page and "<script" not in page


def test_the_report_redacts_the_secrets_an_older_audit_recorded(
    audited: tuple[Path, dict[str, Any]],
) -> None:
    home, audit = audited
    recorded = audit | {
        "command": "distillguard --database postgresql://auditor:hunter2@db/evidence audit "
        "suspect --url http://suspect/v1 --suspect-api-key sk-live-0123456789 --json",
        "suspect": "theirs at http://user:pw-4567@suspect/v1",
    }
    report = build_report(recorded, home)
    page = render_html(report)
    for secret in ("hunter2", "0123456789", "pw-4567"):
        assert secret not in json.dumps(report) and secret not in page
    assert "postgresql://auditor:***@db/evidence" in report["reproduce"]
    assert "--suspect-api-key '***'" in report["reproduce"]


def test_out_never_overwrites_its_twin_or_the_audit(
    audited: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, audit = audited
    source = tmp_path / "audit.json"
    source.write_text(json.dumps(audit))
    for out, fragment in (
        (tmp_path / "report.json", "report.html"),  # its twin was itself: JSON over the HTML
        (tmp_path / "audit.html", "over the audit"),  # its twin was the audit
    ):
        result = CliRunner().invoke(
            main, ["--home", str(home), "report", str(source), "--out", str(out)]
        )
        assert result.exit_code == 1, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
        assert not out.exists()
    assert json.loads(source.read_text()) == audit


def test_the_key_plot_labels_stay_whole_and_never_overlap() -> None:
    """The middle plot named tenant-007 "tenant-0" and its labels ran into each other."""
    import re

    from distillguard.forensics.report import _green_svg

    keys = [
        {"tenant": f"tenant-{index:03d}", "log10_p": -index, "score": 30.0, "expected": 25.0}
        for index in range(8)
    ]
    svg = _green_svg({"keys": keys, "scored": 100})
    labels = re.findall(r'<text x="([\d.]+)" y="(\d+)" font-size="8"[^>]*>([^<]*)</text>', svg)
    assert sorted(text for _, _, text in labels) == sorted(k["tenant"] for k in keys)
    rows: dict[str, list[float]] = {}
    for x, y, _ in labels:
        rows.setdefault(y, []).append(float(x))
    character_width = 8 * 0.6  # a generous average width at font-size 8
    for xs in rows.values():
        gaps = [b - a for a, b in zip(sorted(xs), sorted(xs)[1:], strict=False)]
        assert min(gaps) >= 14 * character_width  # room for 14 characters, centred
