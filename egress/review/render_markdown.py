"""The review ``Report`` as Markdown, for a pull-request comment (egress/review/render.py
dispatches)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from egress.review.model import AuditSummary, ReachEntry, Report
from egress.review.render import (
    NOWHERE,
    REACH_HEADERS,
    DataSource,
    any_text,
    counts_line,
    counts_text,
    data_source_lines,
    destination_text,
    hosts_without_credentials,
    no_suggestion_text,
    reach_by_secret,
    severity_summary,
    sorted_findings,
    tripwire_text,
)

MD_SPECIAL = "\\`*_[]<>|~#&"


def md_escape(text: str) -> str:
    """Text safe in a Markdown table cell: no pipe ends the cell, no backtick opens code,
    no emphasis, link or HTML tag; a line break becomes a space."""
    out = "".join("\\" + c if c in MD_SPECIAL else c for c in text)
    return " ".join(out.split())


class Safe(str):
    """Markdown already escaped, or built from parts that need no escaping."""


def md_cell(cell: str) -> str:
    return cell if isinstance(cell, Safe) else md_escape(cell)


def md_code(text: str) -> Safe:
    """A name, host, path or location as inline code (a pipe still escaped: GFM splits
    cells first); text with a backtick or a line break is escaped instead."""
    if not text or "`" in text or "\n" in text or "\r" in text:
        return Safe(md_escape(text))
    return Safe("`" + text.replace("|", "\\|") + "`")


def md_codes(values: Sequence[str]) -> str:
    return ", ".join(md_code(v) for v in values) or "none"


def md_severity(severity: str) -> Safe:
    return Safe(f"**{severity}**" if severity in ("critical", "high") else md_escape(severity))


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A table; every cell escaped unless it is ``Safe``."""
    out = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return out + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]


def md_fence(text: str) -> list[str]:
    """A fenced YAML block whose fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "yaml", *text.splitlines(), fence]


def md_reach_row(secret: str, r: ReachEntry | None) -> list[str]:
    """Names, hosts, paths and rules as code; the rest as escaped text."""
    name = md_code(secret) if secret else ""
    if r is None:
        return [name, Safe(f"*{NOWHERE}*"), "", "", "", "", "", ""]
    paths = Safe(md_codes(r.paths)) if r.paths is not None else "any"
    return [name, md_code(r.host), any_text(r.ports), any_text(r.schemes), any_text(r.methods),
            paths, any_text(r.surfaces), md_code(r.rule)]  # fmt: skip


def md_sources(sources: Sequence[DataSource]) -> str:
    """The data the findings come from, as a Markdown list ("" for none)."""
    if not sources:
        return ""
    lines = data_source_lines(sources)
    return "\n".join(["#### Data sources", ""] + [f"- {md_escape(line)}" for line in lines])


def render_markdown(report: Report, sources: Sequence[DataSource] = ()) -> str:
    worst = report.worst()
    out = [
        f"### egress review: {md_code(report.config)}",
        "",
        f"**{severity_summary(report)}**" + (f" (worst: **{worst}**)" if worst else "")
        + f" · mode **{md_escape(report.mode)}** · {counts_line(report, ' · ')}",
        "",
        f"#### Findings ({len(report.findings)})",
        "",
    ]  # fmt: skip
    rows = [
        [md_severity(f.severity), md_code(f.id), md_code(f.location.text()), f.title, f.fix]
        for f in sorted_findings(report)
    ]
    out += md_table(["Severity", "Id", "Location", "Title", "Fix"], rows) if rows else ["None."]
    out += ["", "#### Reach by credential", ""]
    reach = [md_reach_row(name, r) for name, r in reach_by_secret(report)]
    out += md_table(["Secret", *(h.title() for h in REACH_HEADERS)], reach) if reach else ["None."]
    without = hosts_without_credentials(report)
    out += ["", f"#### Hosts with no credential ({len(without)})", ""]
    out += [f"- {md_code(h.rule)}: {md_code(h.host)}" for h in without] or ["None."]
    if report.audit is not None:
        out += ["", *md_audit(report.audit)]
    footer = md_sources(sources)
    return "\n".join(out + (["", footer] if footer else [])) + "\n"


def md_audit(audit: AuditSummary) -> list[str]:
    out = [
        f"#### Audit: {md_code(audit.source)}",
        "",
        f"{audit.records} records ({audit.skipped} skipped lines), "
        f"{md_escape(audit.first_time or '?')} to {md_escape(audit.last_time or '?')}",
        "",
        f"- Rules never used: {md_codes(audit.unused_rules)}",
        f"- Credentials never injected: {md_codes(audit.uninjected_secrets)}",
        "",
    ]
    rows = [[code, str(n)] for code, n in audit.by_reason.items()]
    out += md_table(["Reason", "Count"], rows) if rows else []
    if audit.tripwires:
        out += ["", f"**Tripwires** ({len(audit.tripwires)})", ""]
        out += [f"- {md_escape(tripwire_text(t))}" for t in audit.tripwires]
    for dest in audit.denied:
        out += ["", f"{md_code(destination_text(dest))}: {dest.count} denied "
                f"({md_escape(counts_text(dest.reasons))})", ""]  # fmt: skip
        out += (
            md_fence(dest.suggestion) if dest.suggestion else [md_escape(no_suggestion_text(dest))]
        )
    return out
