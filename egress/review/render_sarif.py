"""A review ``Report`` as SARIF 2.1.0, for GitHub code scanning and other SARIF viewers.

One run; ``tool.driver`` is "egress review" with one rule per finding id in the report
(sorted by id). Each result has the rule's id and index, a level (critical/high: error,
medium: warning, low/info: note), the severity in ``properties.severity`` and, as GitHub
code scanning reads it, ``properties.security-severity`` (a number as a string), the
config file as ``artifactLocation.uri`` with ``region.startLine`` when the line is known,
and the key path as a logical location. tests/test_review_render.py validates the output
against the official schema (tests/data/sarif-schema-2.1.0.json).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from egress import __version__
from egress.review.model import Finding, Report
from egress.review.render import DataSource, severity_counts, sorted_findings

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
TOOL_NAME = "egress review"
LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.0", "low": "3.0", "info": "1.0"}
FINGERPRINT = "egressFinding/v1"


def render_sarif(report: Report, sources: Sequence[DataSource] = ()) -> str:
    return json.dumps(sarif_log(report, sources), indent=2, sort_keys=True) + "\n"


def sarif_log(report: Report, sources: Sequence[DataSource] = ()) -> dict[str, Any]:
    findings = sorted_findings(report)
    rule_ids = sorted({f.id for f in findings})
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    driver = {
        "name": TOOL_NAME,
        "version": __version__,
        "rules": [sarif_rule(rule_id, findings) for rule_id in rule_ids],
    }
    run: dict[str, Any] = {
        "tool": {"driver": driver},
        "results": [sarif_result(f, index[f.id]) for f in findings],
        "properties": {
            "config": report.config,
            "mode": report.mode,
            "summary": severity_counts(report),
            "dataSources": [dict(s) for s in sources],
        },
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def rule_summary(rule_id: str) -> str | None:
    """The finding id's one-line description, from the findings catalogue."""
    from egress.review.findings import KINDS

    kind = KINDS.get(rule_id)
    return kind.summary if kind else None


def sarif_rule(rule_id: str, findings: Sequence[Finding]) -> dict[str, Any]:
    """A reportingDescriptor; ``findings`` is sorted most severe first, so the first of
    this id gives the rule's severity and its example text."""
    first = next(f for f in findings if f.id == rule_id)
    return {
        "id": rule_id,
        "name": rule_id,
        "shortDescription": {"text": rule_summary(rule_id) or first.title},
        "fullDescription": {"text": first.explanation},
        "help": {"text": first.fix},
        "defaultConfiguration": {"level": LEVELS[first.severity]},
        "properties": {
            "severity": first.severity,
            "security-severity": SECURITY_SEVERITY[first.severity],
            "tags": ["security", "egress"],
        },
    }


def sarif_result(f: Finding, rule_index: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": f.id,
        "ruleIndex": rule_index,
        "level": LEVELS[f.severity],
        "message": {"text": f"{f.title}\n\n{f.explanation}\n\nFix: {f.fix}"},
        "partialFingerprints": {FINGERPRINT: finding_fingerprint(f)},
        "properties": {
            "severity": f.severity,
            "security-severity": SECURITY_SEVERITY[f.severity],
            "subject": f.subject,
        },
    }
    location = sarif_location(f)
    if location:
        result["locations"] = [location]
    return result


def sarif_location(f: Finding) -> dict[str, Any]:
    """The file (and line, when known: SARIF lines start at 1) and the key path."""
    location: dict[str, Any] = {}
    if f.location.file:
        physical: dict[str, Any] = {"artifactLocation": {"uri": artifact_uri(f.location.file)}}
        if f.location.line is not None and f.location.line >= 1:
            physical["region"] = {"startLine": f.location.line}
        location["physicalLocation"] = physical
    if f.location.key:
        location["logicalLocations"] = [{"fullyQualifiedName": f.location.key}]
    return location


def artifact_uri(file: str) -> str:
    """A relative path stays relative (as given, '/'-separated and percent-encoded); an
    absolute one becomes a file: URI."""
    path = file.replace("\\", "/")
    if path.startswith("/"):
        return PurePosixPath(posixpath.normpath(path)).as_uri()
    return quote(path, safe="/")


def finding_fingerprint(f: Finding) -> str:
    """Stable across runs while the finding is the same, even when its line moves."""
    key = "\0".join((f.id, f.location.file, f.location.key, f.subject))
    return hashlib.sha256(key.encode()).hexdigest()[:32]
