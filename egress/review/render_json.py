"""The review ``Report`` as JSON, and read back (egress/review/render.py dispatches).

The JSON shape (``"version": 1``; keys sorted, two-space indent)::

    {"version": 1, "config": str, "mode": "enforce" | "report",
     "secrets": [name, ...],                       # every configured secret, in order
     "reach": [ReachEntry], "hosts": [HostEntry],  # model fields; tuples as lists,
                                                   # methods/paths null = any
     "findings": [Finding],                        # most severe first; location is
                                                   # {"file", "line" (null: unknown), "key"}
     "audit": AuditSummary | null,                 # with --audit
     "summary": {"critical": n, "high": n, "medium": n, "low": n, "info": n},
     "data_sources": [{"name", "licence", "version", "url"}]}   # [] unless asked for

``report_from_dict`` reads that shape back into a ``Report``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from egress.review.model import (
    AuditSummary,
    DeniedDestination,
    Finding,
    HostEntry,
    Location,
    ReachEntry,
    Report,
    TimeBucket,
)
from egress.review.render import DataSource, severity_counts, sorted_findings

JSON_VERSION = 1


def report_to_dict(report: Report, sources: Sequence[DataSource] = ()) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "config": report.config,
        "mode": report.mode,
        "secrets": list(report.secrets),
        # "agent" only with agents: a config without them reads as before.
        "reach": [
            {k: v for k, v in asdict(r).items() if k != "agent" or v is not None}
            for r in report.reach
        ],  # fmt: skip
        "hosts": [asdict(h) for h in report.hosts],
        "findings": [asdict(f) for f in sorted_findings(report)],
        "audit": asdict(report.audit) if report.audit is not None else None,
        "summary": severity_counts(report),
        "data_sources": [dict(s) for s in sources],
    }


def render_json(report: Report, sources: Sequence[DataSource] = ()) -> str:
    data = report_to_dict(report, sources)
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _tuple(values: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


def report_from_dict(data: Mapping[str, Any]) -> Report:
    """The ``Report`` a JSON report holds (findings come back most severe first)."""
    if data.get("version") != JSON_VERSION:
        raise ValueError(f"not an egress review JSON report of version {JSON_VERSION}")
    reach = [
        ReachEntry(**{**r, "ports": tuple(r["ports"]), "schemes": tuple(r["schemes"]),
                      "methods": _tuple(r["methods"]), "paths": _tuple(r["paths"]),
                      "surfaces": tuple(r["surfaces"])})
        for r in data["reach"]
    ]  # fmt: skip
    hosts = [
        HostEntry(**{**h, "ports": tuple(h["ports"]), "schemes": tuple(h["schemes"]),
                     "methods": _tuple(h["methods"]), "paths": _tuple(h["paths"]),
                     "secrets": tuple(h["secrets"]), "location": Location(**h["location"])})
        for h in data["hosts"]
    ]  # fmt: skip
    findings = [Finding(**{**f, "location": Location(**f["location"])}) for f in data["findings"]]
    audit = data.get("audit")
    return Report(
        config=data["config"], mode=data["mode"], hosts=hosts, reach=reach, findings=findings,
        secrets=list(data["secrets"]), audit=_audit_from_dict(audit) if audit else None,
    )  # fmt: skip


def _audit_from_dict(a: Mapping[str, Any]) -> AuditSummary:
    denied = [DeniedDestination(**{**d, "methods": tuple(d["methods"])}) for d in a["denied"]]
    timeline = [TimeBucket(**b) for b in a["timeline"]]
    return AuditSummary(**{**a, "denied": denied, "timeline": timeline})
