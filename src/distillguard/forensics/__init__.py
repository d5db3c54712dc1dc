"""Prove it: did a suspect model learn from our watermarked outputs, and from whose?

`radioactivity` holds the tests (black-box and open weights, with attribution across tenants),
`audit` runs them on a suspect against the logged traffic, `report` writes the evidence (HTML
and its JSON twin), and `prompts` reads the prompt files an audit sends.
"""

from distillguard.forensics.audit import AuditOutcome, audit_suspect, run_audit
from distillguard.forensics.prompts import load_prompts
from distillguard.forensics.radioactivity import (
    OpenWeightsResults,
    RadioactivityResult,
    black_box_focused_test,
    black_box_test,
    open_weights_test,
)
from distillguard.forensics.report import build_report, write_report

__all__ = [
    "AuditOutcome",
    "OpenWeightsResults",
    "RadioactivityResult",
    "audit_suspect",
    "black_box_focused_test",
    "black_box_test",
    "build_report",
    "load_prompts",
    "open_weights_test",
    "run_audit",
    "write_report",
]
