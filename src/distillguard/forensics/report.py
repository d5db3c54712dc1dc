"""The evidence report: one self-contained HTML file (plots inline as SVG) and its JSON twin.

Built from an audit (`distillguard audit suspect --json`) and the data directory: the key
commitment of the attributed tenant, the audit chain's verification, and the tenant's usage
and tier history. A tampered audit log is stated on the first page, above everything else.
The JSON validates against `report.schema.json`, shipped with the package.

The audit file is input like any other: every field the page shows is HTML-escaped, numbers
included (a hand-edited file can put markup anywhere), and the recorded command and the
suspect's URL are shown with their secrets redacted.
"""

from __future__ import annotations

import html
import json
import math
import shlex
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from distillguard import __version__
from distillguard.errors import InputError
from distillguard.redact import redact, redact_command

__all__ = [
    "SCHEMA_FILE",
    "build_report",
    "load_schema",
    "render_html",
    "report_paths",
    "write_report",
]

SCHEMA_FILE = "report.schema.json"


def load_schema() -> dict[str, Any]:
    text = resources.files("distillguard.forensics").joinpath(SCHEMA_FILE).read_text()
    return dict(json.loads(text))


def build_report(
    audit: dict[str, Any], home: Path, *, database: str | None = None
) -> dict[str, Any]:
    """The report's content, from an audit's JSON and the data directory's records."""
    results = audit.get("results")
    if not isinstance(results, list) or not results:
        raise InputError("not an audit result: run `distillguard audit suspect --json` first")
    primary = results[0]
    best = primary["best"]
    tenant = best.get("tenant")
    records = _read_records(home, database, tenant, best["key_id"])
    significant = float(best["adjusted_log10_p"]) <= -3.0
    return {
        "report_version": 1,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "generator": f"distillguard {__version__}",
        "suspect": redact(str(audit.get("suspect", ""))),
        "mode": audit.get("mode", ""),
        "summary": _summary(audit, best, significant, records.audit_chain["ok"]),
        "null_hypothesis": (
            f"The suspect model never learned from text watermarked with tenant {tenant}'s "
            "key. Under this hypothesis each scored (context, token) pair is green with "
            "probability gamma, independently of the others, because the keyed hash is "
            "independent of anything the suspect computes."
        ),
        "methods": {
            "parameters": audit.get("parameters", {}),
            "statistics": [
                {
                    "statistic": result["statistic"],
                    "exact": result["exact"],
                    "scored": result["scored"],
                    "dropped": result["dropped"],
                }
                for result in results
            ],
            "description": _METHODS,
        },
        "attribution": _attribution(primary, significant),
        "results": results,
        "controls": audit.get("controls") or [],
        "commitment": records.commitment,
        "audit_chain": records.audit_chain,
        "account_timeline": {"daily": records.daily, "tier_changes": records.tier_changes},
        "reproduce": _recorded_command(audit.get("command", "")),
    }


def _recorded_command(command: Any) -> str:
    """The audit's command line with its secrets redacted (audits written before redaction
    was added may hold them)."""
    text = str(command or "")
    try:
        return redact_command(shlex.split(text)) if text else ""
    except ValueError:  # unbalanced quotes: redact it as plain text
        return redact(text)


_METHODS = (
    "Black-box: the suspect's completions to our prompts, tokenized with our "
    "tokenizer; each (context, token) tuple scored once; tuples whose context occurs "
    "in the query's prompt dropped. Open weights: our logged outputs teacher-forced "
    "through the suspect; its top-1 prediction scored per distinct (context, "
    "prediction) pair; the probability mass it puts on green tokens; and, with a "
    "reference model, how much more mass it puts on green tokens than the "
    "reference (the green mass shift). Predictions that copy a tuple from the "
    "model's input are not scored. P-values: exact binomial upper tails (the two "
    "mass lines: Chernoff bounds, valid and a little conservative). Attribution: "
    "Holm-Bonferroni over every tenant tested."
)


@dataclass(frozen=True)
class _Records:
    """What the data directory holds on the attributed key, in the report's shape."""

    audit_chain: dict[str, Any]  # the verification of the whole audit chain
    commitment: list[dict[str, Any]]  # the key's recorded commitments
    daily: list[dict[str, Any]]  # the tenant's requests and completion tokens per day
    tier_changes: list[dict[str, Any]]  # the monitor's tier changes of the tenant's API keys


def _verify_log(connection: Any, home: Path) -> dict[str, Any]:
    """The audit log's verification, with what was verified and against which checkpoint."""
    from distillguard.config import data_dir
    from distillguard.errors import SecretError
    from distillguard.keys import load_master_secret
    from distillguard.store.checkpoint import ANCHOR_FILE
    from distillguard.store.integrity import verify_log
    from distillguard.store.timestamp import tsa_trust_from_env

    try:
        master = load_master_secret(home)
    except SecretError as exc:
        return {"ok": False, "records": 0, "first_bad_seq": None, "reason": str(exc)}
    # timestamp tokens' signatures are checked when $DISTILLGUARD_ANCHOR_TSA_CERT names the TSA's CA
    result = verify_log(connection, master, data_dir(home) / ANCHOR_FILE, tsa_trust_from_env())
    last = result.checkpoints.last
    stamp, stamped = result.checkpoints.last_timestamp, result.checkpoints.last_timestamped
    return {
        "ok": result.ok,
        "records": result.chain.records,
        "first_bad_seq": result.chain.first_bad_seq,
        "reason": result.failure(),
        "verified": result.summary(),
        "keyed_records": result.chain.keyed,
        "unkeyed_records": result.chain.unkeyed,
        "purge_events": result.chain.purges,
        "checkpoint": None
        if last is None
        else {
            "seq": last.seq,
            "records": last.records,
            "created_at": last.created_at,
            "head_hash": last.head_hash,
        },
        "unanchored_records": result.checkpoints.unanchored,
        "checkpoint_public_key": result.public_key,
        "timestamp": None  # the TSA's RFC 3161 timestamp of the newest stamped checkpoint
        if stamp is None or stamped is None
        else {
            "seq": stamped.seq,
            "gen_time": stamp.gen_time,
            "authority": stamp.authority,
            "signature_checked": stamp.signature_checked,
            "timestamped_checkpoints": result.checkpoints.timestamped,
        },
    }


def _read_records(home: Path, database: str | None, tenant: str | None, key_id: str) -> _Records:
    """The audit chain's verification, and (with a tenant) the key's commitments and the
    tenant's usage and tier history."""
    from distillguard.keys import recorded_commitments
    from distillguard.monitor.history import TierHistory
    from distillguard.store import connect
    from distillguard.store.usage import read_usage

    with closing(connect(home, url=database)) as connection:
        audit_chain = _verify_log(connection, home)
        commitments = (
            [c for c in recorded_commitments(connection, tenant=tenant) if c.key_id == key_id]
            if tenant
            else []
        )
        usage = read_usage(connection, tenant=tenant) if tenant else []
        daily = _daily_usage(usage)
    history = TierHistory(lambda: connect(home, url=database)).changes() if tenant else []
    key_ids = {row.key_id for row in usage}
    return _Records(
        audit_chain=audit_chain,
        commitment=[
            {
                "tenant": c.tenant,
                "key_id": c.key_id,
                "key_version": c.key_version,
                "scheme_fingerprint": c.fingerprint,
                "created_at": c.created_at,
                "commitment": c.commitment,
            }
            for c in commitments
        ],
        daily=daily,
        tier_changes=[change for change in history if change["key_id"] in key_ids],
    )


def _attribution(primary: dict[str, Any], significant: bool) -> dict[str, Any]:
    """The best key of the leading result, and the ten keys with the smallest p-values."""
    best = primary["best"]
    return {
        "tenant": best.get("tenant"),
        "key_id": best["key_id"],
        "log10_p": best["log10_p"],
        "adjusted_log10_p": float(best["adjusted_log10_p"]),
        "tenants_tested": len(primary["keys"]),
        "significant": significant,
        "ranking": sorted(
            (
                {
                    "tenant": k["tenant"],
                    "key_id": k["key_id"],
                    "log10_p": k["log10_p"],
                    "score": k["score"],
                    "expected": k["expected"],
                }
                for k in primary["keys"]
            ),
            key=lambda k: k["log10_p"],
        )[:10],
    }


def _summary(audit: dict[str, Any], best: dict[str, Any], significant: bool, chain_ok: bool) -> str:
    suspect = redact(str(audit.get("suspect") or "the suspect model"))
    tenant = best.get("tenant") or best["key_id"]
    adjusted = float(best["adjusted_log10_p"])
    tested = len(audit["results"][0]["keys"])
    if significant:
        text = (
            f"{suspect} reproduces the statistical watermark that our service wove into the "
            f"outputs it gave tenant {tenant}. If the model had never learned from those "
            f"outputs, a result this strong would occur with probability {_p_text(adjusted)} "
            f"(already corrected for testing {tested} tenants). The most likely explanation "
            f"is that it was trained on outputs harvested through tenant {tenant}'s account."
        )
    else:
        text = (
            f"{suspect} shows no significant trace of any tenant's watermark "
            f"(smallest corrected p-value {_p_text(adjusted)} over {tested} tenants). This "
            "does not prove it was not trained on our outputs; it means this audit found no "
            "evidence that it was."
        )
    text = text[:1].upper() + text[1:]
    if not chain_ok:
        text = "THE AUDIT LOG FAILED VERIFICATION; see below. " + text
    return text


def _p_text(log10_p: float) -> str:
    if log10_p >= -3:
        return f"{10**log10_p:.3g}"
    exponent = math.floor(log10_p)
    return f"{10 ** (log10_p - exponent):.2f}e{exponent}"


def _daily_usage(usage: list[Any]) -> list[dict[str, Any]]:
    days: dict[str, dict[str, int]] = {}
    for row in usage:
        day = row.created_at[:10]
        entry = days.setdefault(day, {"requests": 0, "completion_tokens": 0})
        entry["requests"] += 1
        entry["completion_tokens"] += row.completion_tokens
    return [{"day": day} | counts for day, counts in sorted(days.items())]


# -- HTML --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Any field as HTML text, escaped whatever its type."""
    return html.escape(str(value))


def _number(value: Any, spec: str) -> str:
    """A number formatted with `spec`; a field that is not a number, escaped as text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return _text(value)


def _p_html(log10_p: Any) -> str:
    """A p-value given as log10(p), as HTML text."""
    if isinstance(log10_p, int | float) and not isinstance(log10_p, bool):
        return _p_text(float(log10_p))
    return _text(log10_p)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (plots inline as SVG); every field escaped."""
    e = _text
    chain = report["audit_chain"]
    attribution = report["attribution"]
    # the plots need a binomial test (its curve and its null spread): the first exact line
    plotted = next((r for r in report["results"] if r.get("exact")), report["results"][0])
    result_rows = "".join(_result_row("suspect", r) for r in report["results"]) + "".join(
        _result_row("control", r) for r in report["controls"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evidence report: {e(report["suspect"])}</title>
{_STYLE}</head><body>
<h1>Evidence report: did {e(report["suspect"])} learn from our outputs?</h1>
<p>Generated {e(report["generated_at"])} by {e(report["generator"])}. Mode: {e(report["mode"])}.</p>
{_alarm(chain)}
<h2>Summary</h2>
<p class="summary">{e(report["summary"])}</p>
<h2>The question, as a null hypothesis</h2>
<p>{e(report["null_hypothesis"])} A p-value is the probability, under that hypothesis, of a
result at least as strong as the one observed.</p>
<h2>Attribution</h2>
<p>Best tenant: <strong>{e(attribution["tenant"])}</strong>, p {_p_html(attribution["log10_p"])},
{_p_html(attribution["adjusted_log10_p"])} after Holm-Bonferroni over {e(attribution["tenants_tested"])} tenants.</p>
<table><tr><th>tenant</th><th>key id</th><th>score</th><th>expected</th><th>p-value</th></tr>{_ranking_rows(attribution["ranking"])}</table>
<h2>Results and controls</h2>
<table><tr><th>run</th><th>statistic</th><th>scored</th><th>best</th><th>p-value</th><th>corrected</th></tr>{result_rows}</table>
<div class="plots">{_curve_svg(plotted)}{_green_svg(plotted)}{_usage_svg(report["account_timeline"]["daily"])}</div>
<p class="note">Plots: the {e(plotted["statistic"])} test (exact binomial), the first such line above.</p>
<h2>Methods and parameters</h2>
<p>{e(report["methods"]["description"])}</p>
<table>{_parameter_rows(report["methods"]["parameters"])}</table>
<h2>Key commitment</h2>
<p>The tenant's key was committed to (SHA-256 over the key, the scheme fingerprint and the
timestamp) when it was first used; the commitment can be checked without revealing the key.</p>
<table><tr><th>tenant</th><th>key id</th><th>committed at</th><th>commitment</th><th>scheme</th></tr>{_commitment_rows(report["commitment"])}</table>
<h2>Audit log</h2>
<p>{"The keyed hash chain over every usage record verifies" if chain["ok"] else "The audit log FAILED verification"}: {e(chain.get("verified") or chain["reason"] or "")}.</p>
<p>Checkpoints are signed with the Ed25519 public key <code>{e(chain.get("checkpoint_public_key", "unknown"))}</code>; anyone can check the anchored checkpoints with it, without the master secret.</p>
<h2>The account: usage and risk</h2>
<table><tr><th>when</th><th>key</th><th>tier</th><th>requests</th><th>reasons</th></tr>{_tier_rows(report["account_timeline"]["tier_changes"])}</table>
<h2>Reproduce</h2>
<p><code>{e(report["reproduce"] or "(command not recorded)")}</code></p>
<p>To print: <code>chromium --headless --no-sandbox --disable-gpu --print-to-pdf=report.pdf report.html</code></p>
</body></html>
"""


_STYLE = """<style>
body { font: 15px/1.5 Georgia, serif; max-width: 60rem; margin: 2rem auto; color: #111; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; font-size: .9rem; }
code { font-size: .8rem; word-break: break-all; }
.alarm { border: 3px solid #b00; background: #fee; padding: 1rem; margin: 1rem 0; }
.summary { font-size: 1.05rem; background: #f6f6f0; padding: 1rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
@media print { h2 { break-after: avoid; } }
</style>"""


def _alarm(chain: dict[str, Any]) -> str:
    """The warning above everything else when the audit log failed verification."""
    if chain["ok"]:
        return ""
    return (
        '<div class="alarm"><strong>The audit log failed verification</strong> at record '
        f"{_text(chain['first_bad_seq'])}: {_text(chain['reason'])}. The usage records behind this "
        "report may have been altered; treat every figure below with that in mind.</div>"
    )


def _ranking_rows(ranking: list[dict[str, Any]]) -> str:
    e = _text
    return "".join(
        f"<tr><td>{e(k['tenant'])}</td><td><code>{e(k['key_id'])}</code></td>"
        f"<td>{_number(k['score'], '.1f')}</td><td>{_number(k['expected'], '.1f')}</td><td>{_p_html(k['log10_p'])}</td></tr>"
        for k in ranking
    )


def _commitment_rows(commitments: list[dict[str, Any]]) -> str:
    e = _text
    return (
        "".join(
            f"<tr><td>{e(c['tenant'])}</td><td><code>{e(c['key_id'])}</code></td>"
            f"<td>{e(c['created_at'])}</td><td><code>{e(c['commitment'])}</code></td>"
            f"<td><code>{e(c['scheme_fingerprint'])}</code></td></tr>"
            for c in commitments
        )
        or '<tr><td colspan="5">no commitment recorded for this key</td></tr>'
    )


def _parameter_rows(parameters: dict[str, Any]) -> str:
    e = _text
    return "".join(
        f"<tr><th>{e(name)}</th><td>{e(value)}</td></tr>" for name, value in parameters.items()
    )


def _tier_rows(changes: list[dict[str, Any]]) -> str:
    e = _text
    return (
        "".join(
            f"<tr><td>{e(c['changed_at'])}</td><td><code>{e(c['key_id'])}</code></td>"
            f"<td>{e(c['previous'])} &rarr; {e(c['tier'])}</td><td>{e(c['requests'])}</td>"
            f"<td>{e('; '.join(str(reason) for reason in c['reasons']))}</td></tr>"
            for c in changes
        )
        or '<tr><td colspan="5">no tier changes recorded</td></tr>'
    )


def _result_row(label: str, result: dict[str, Any]) -> str:
    best = result["best"]
    bound = "" if result["exact"] else " (bound)"
    return (
        f"<tr><td>{_text(label)}</td><td>{_text(result['statistic'])}{bound}</td>"
        f"<td>{_text(result['scored'])}</td><td>{_text(best['tenant'])}</td>"
        f"<td>{_p_html(best['log10_p'])}</td><td>{_p_html(best['adjusted_log10_p'])}</td></tr>"
    )


def _svg(title: str, body: str, width: int = 300, height: int = 200) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" '
        f'role="img" aria-label="{_text(title)}">'
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">{_text(title)}</text>'
        f'<g transform="translate(0,24)">{body}</g></svg>'
    )


def _curve_svg(result: dict[str, Any]) -> str:
    points = result.get("curve") or []
    if len(points) < 2:
        return _svg("p-value against tuples scored", '<text x="20" y="90">no curve</text>')
    xs = [math.log10(max(n, 1)) for n, _ in points]
    ys = [-p for _, p in points]
    body = _line(xs, ys, "#036")
    body += '<text x="150" y="198" text-anchor="middle" font-size="10">log10 tuples scored</text>'
    body += '<text x="4" y="10" font-size="10">-log10 p</text>'
    return _svg("p-value against tuples scored (best key)", body)


def _green_svg(result: dict[str, Any]) -> str:
    """Each key's excess over its expected score, in standard deviations of the null law."""
    keys = sorted(result["keys"], key=lambda k: k["log10_p"])[:8]
    scored = max(int(result["scored"]), 1)
    if not keys:
        return ""
    excesses = []
    for k in keys:
        gamma = min(max(k["expected"] / scored, 1e-9), 1 - 1e-9)
        spread = math.sqrt(max(scored * gamma * (1 - gamma), 1e-9))
        excesses.append((k["score"] - k["expected"]) / spread)
    top = max(3.0, max(abs(e) for e in excesses))
    bars = '<line x1="10" x2="295" y1="100" y2="100" stroke="#b00" stroke-dasharray="4"/>'
    for index, (k, excess) in enumerate(zip(keys, excesses, strict=True)):
        height = 80 * abs(excess) / top
        x = 20 + index * 34
        y = 100 - height if excess > 0 else 100
        # labels alternate between two rows, so each has two bars' width (68 px, 14 characters
        # at this size) and names stay whole: "tenant-007" must not read "tenant-0"
        label_y = 186 if index % 2 == 0 else 196
        bars += (
            f'<rect x="{x}" y="{y:.1f}" width="24" height="{height:.1f}" fill="#69c"/>'
            f'<text x="{x + 12}" y="{label_y}" font-size="8" text-anchor="middle">'
            f"{_text(_short_label(str(k['tenant'])))}</text>"
        )
    bars += '<text x="296" y="96" font-size="9" text-anchor="end">expected</text>'
    bars += f'<text x="12" y="16" font-size="9">+{top:.1f} sd</text>'
    return _svg("green count above expectation, by key (sd)", bars)


def _short_label(name: str, limit: int = 14) -> str:
    """A key's label in the bar plot: whole when it fits, else its start and end."""
    return name if len(name) <= limit else name[: limit - 6] + "..." + name[-3:]


def _usage_svg(daily: list[dict[str, Any]]) -> str:
    if not daily:
        return _svg("the account's requests per day", '<text x="20" y="90">no usage</text>')
    top = max(int(d["requests"]) for d in daily) or 1
    width = max(2.0, min(40.0, 260.0 / len(daily)))
    bars = '<line x1="20" y1="180" x2="290" y2="180" stroke="#999"/>'
    for index, day in enumerate(daily):
        height = 160 * int(day["requests"]) / top
        x = 24 + index * (width + 2)
        bars += f'<rect x="{x:.1f}" y="{180 - height:.1f}" width="{width:.1f}" height="{height:.1f}" fill="#063"/>'
    bars += f'<text x="22" y="14" font-size="9">{top} requests</text>'
    bars += (
        f'<text x="22" y="194" font-size="9">{_text(daily[0]["day"])}</text>'
        f'<text x="290" y="194" font-size="9" text-anchor="end">{_text(daily[-1]["day"])}</text>'
    )
    return _svg("the account's requests per day", bars)


def _line(xs: list[float], ys: list[float], colour: str) -> str:
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    span_x = (x1 - x0) or 1.0
    span_y = (y1 - y0) or 1.0
    coordinates = " ".join(
        f"{20 + 270 * (x - x0) / span_x:.1f},{180 - 170 * (y - y0) / span_y:.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    axes = '<line x1="20" y1="180" x2="290" y2="180" stroke="#999"/><line x1="20" y1="10" x2="20" y2="180" stroke="#999"/>'
    labels = (
        f'<text x="22" y="20" font-size="9">{y1:.3g}</text>'
        f'<text x="290" y="176" font-size="9" text-anchor="end">{x1:.3g}</text>'
    )
    return (
        axes
        + labels
        + f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coordinates}"/>'
    )


def report_paths(output: Path) -> tuple[Path, Path]:
    """The HTML file `output` and its JSON twin beside it (`output` with the suffix .json).

    An `output` named .json is refused: its twin would be itself, and the JSON would
    overwrite the HTML just written."""
    html_path = Path(output)
    if html_path.suffix.lower() == ".json":
        raise InputError(
            f"--out {html_path} names the HTML file, and its JSON twin is written beside it as "
            f"{html_path.stem}.json: give the HTML a name of its own (e.g. {html_path.stem}.html)"
        )
    return html_path, html_path.with_suffix(".json")


def write_report(
    audit: dict[str, Any], home: Path, output: Path, *, database: str | None = None
) -> tuple[Path, Path]:
    """Write `output` (HTML) and its JSON twin beside it; returns both paths."""
    html_path, json_path = report_paths(output)
    report = build_report(audit, home, database=database)
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return html_path, json_path
