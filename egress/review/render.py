"""Rendering a review ``Report``: a terminal table, JSON, Markdown, SARIF 2.1.0 or HTML.

``render(report, fmt)`` is the one entry point; every format says the same thing, read
from egress/review/model.py only. Output is deterministic (same report, same bytes), so
golden files are stable. ``sources`` (``egress.review.domains.data_sources()``) adds a
footer naming the data the findings come from; it is left out by default because its
versions change with the installed packages.

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
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from egress.review.model import (
    SEVERITIES,
    AuditSummary,
    DeniedDestination,
    Finding,
    HostEntry,
    Location,
    ReachEntry,
    Report,
    TimeBucket,
)

FORMATS = ("text", "json", "markdown", "sarif", "html")
JSON_VERSION = 1
WIDTH = 100  # the text report fits a 100-column terminal
GAP = "  "
DECISIONS = ("allow", "deny", "error")  # shown in this order; any other after, sorted
DataSource = Mapping[str, str]  # name, licence, version, url


def render(report: Report, fmt: str, sources: Sequence[DataSource] = ()) -> str:
    """The report in one of FORMATS; ``sources`` adds the data-sources footer."""
    if fmt == "text":
        return render_text(report, sources)
    if fmt == "json":
        return render_json(report, sources)
    if fmt == "markdown":
        return render_markdown(report, sources)
    if fmt == "sarif":
        from egress.review.render_sarif import render_sarif

        return render_sarif(report, sources)
    if fmt == "html":
        from egress.review.render_html import render_html

        return render_html(report, sources)
    raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------
# What every format shows the same way


def sorted_findings(report: Report) -> list[Finding]:
    return sorted(report.findings, key=Finding.sort_key)


def severity_counts(report: Report) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in report.findings:
        counts[f.severity] += 1
    return counts


def severity_summary(report: Report) -> str:
    return ", ".join(f"{n} {sev}" for sev, n in severity_counts(report).items())


def counts_line(report: Report, sep: str) -> str:
    """ "3 secrets · 12 allow rules · 5 places a credential can be injected", singular where 1."""

    def n(count: int, one: str, many: str) -> str:
        return f"{count} {one if count == 1 else many}"

    return sep.join([
        n(len(report.secrets), "secret", "secrets"),
        n(len(report.hosts), "allow rule", "allow rules"),
        n(len(report.reach), "place a credential can be injected",
          "places a credential can be injected"),
    ])  # fmt: skip


def any_text(values: Sequence[object] | None) -> str:
    """A list for a cell: None is "any" (no restriction), empty is "none"."""
    if values is None:
        return "any"
    return ", ".join(str(v) for v in values) or "none"


def hosts_with_credentials(report: Report) -> list[HostEntry]:
    return [h for h in report.hosts if h.secrets]


def hosts_without_credentials(report: Report) -> list[HostEntry]:
    return [h for h in report.hosts if not h.secrets]


def secrets_in_order(report: Report) -> list[str]:
    """Every configured secret, then any the reach names that the list lacks."""
    names = list(report.secrets)
    names += [r.secret for r in report.reach if r.secret not in names]
    return list(dict.fromkeys(names))


def decision_keys(counts: Iterable[Mapping[str, int]]) -> list[str]:
    seen = {k for c in counts for k in c}
    return [d for d in DECISIONS if d in seen] + sorted(seen - set(DECISIONS))


def duration_text(seconds: int) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 and unit in ('week', 'day') else ''}"
    return f"{seconds} s"


def no_suggestion_text(dest: DeniedDestination) -> str:
    from egress.review.auditjoin import no_suggestion_reason

    return no_suggestion_reason(dest) or "no rule suggested"


def destination_text(dest: DeniedDestination) -> str:
    return f"{dest.scheme}://{dest.host}:{dest.port}"


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def reach_row(r: ReachEntry) -> list[str]:
    return [
        r.host, any_text(r.ports), any_text(r.schemes), any_text(r.methods),
        any_text(r.paths), any_text(r.surfaces), r.rule,
    ]  # fmt: skip


NOWHERE = "(injected nowhere)"
REACH_HEADERS = ["HOST", "PORTS", "SCHEMES", "METHODS", "PATHS", "SURFACES", "RULE"]


def reach_by_secret(report: Report) -> list[tuple[str, ReachEntry | None]]:
    """(secret, entry) for every secret and entry, the name on its first row only; a
    secret with no reach gets one row with no entry."""
    rows: list[tuple[str, ReachEntry | None]] = []
    for name in secrets_in_order(report):
        entries = [r for r in report.reach if r.secret == name]
        rows += [(name if i == 0 else "", r) for i, r in enumerate(entries)] or [(name, None)]
    return rows


def reach_rows_by_secret(report: Report) -> list[list[str]]:
    return [
        [name, *(reach_row(r) if r else [NOWHERE, "", "", "", "", "", ""])]
        for name, r in reach_by_secret(report)
    ]


def host_row(h: HostEntry) -> list[str]:
    return [
        h.rule, h.host, any_text(h.ports), any_text(h.schemes), any_text(h.methods),
        any_text(h.paths), "yes" if h.websocket else "no",
    ]  # fmt: skip


HOST_HEADERS = ["RULE", "HOST", "PORTS", "SCHEMES", "METHODS", "PATHS", "WS"]


def data_sources_footer(sources: Sequence[DataSource], fmt: str = "text") -> str:
    """The data the findings come from, each with its licence and version: text lines or
    a Markdown list (HTML builds its own from the same fields)."""
    if not sources:
        return ""
    lines = [
        f"{s.get('name', '')} ({s.get('licence', '')}; {s.get('version', '')}) "
        f"{s.get('url', '')}".rstrip()
        for s in sources
    ]
    if fmt == "markdown":
        return "\n".join(["#### Data sources", ""] + [f"- {md_escape(line)}" for line in lines])
    return "\n".join([*section_title("Data sources"), *(f"  {line}" for line in lines)])


# ---------------------------------------------------------------------------------------
# Text


def fit_widths(natural: list[int], words: list[int], minimum: list[int], budget: int) -> list[int]:
    """Shrink the widest column one character at a time until the row fits: first only
    down to each column's longest word (wrapping between words), then below it."""
    widths = list(natural)
    for floor in ([max(w, m) for w, m in zip(words, minimum, strict=True)], minimum):
        while sum(widths) > budget:
            shrinkable = [i for i, w in enumerate(widths) if w > floor[i]]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    return widths


def wrap_cell(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = ""
) -> list[str]:
    """Fixed-width columns within WIDTH; a long cell wraps inside its column; a column of
    numbers is right-aligned."""
    n = len(headers)
    columns = [[r[i] for r in rows] for i in range(n)]
    natural = [max(len(c) for c in [headers[i], *columns[i]]) for i in range(n)]
    words = [max((len(w) for c in columns[i] for w in c.split()), default=0) for i in range(n)]
    minimum = [min(natural[i], max(len(headers[i]), 6)) for i in range(n)]
    widths = fit_widths(natural, words, minimum, WIDTH - len(indent) - len(GAP) * (n - 1))
    numeric = [all(c.isdigit() for c in col if c) and any(col) for col in columns]

    def line(cells: Sequence[str], align: Sequence[bool] = (False,) * n) -> str:
        padded = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, align, strict=True)
        ]
        return (indent + GAP.join(padded)).rstrip()

    out = [line(headers, numeric), line(["-" * w for w in widths])]
    for row in rows:
        wrapped = [wrap_cell(cell, w) for cell, w in zip(row, widths, strict=True)]
        for k in range(max(len(c) for c in wrapped)):
            out.append(line([c[k] if k < len(c) else "" for c in wrapped], numeric))
    return out


def section_title(title: str) -> list[str]:
    return [title, "=" * len(title)]


def wrapped(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    ) or [first.rstrip()]


def render_text(report: Report, sources: Sequence[DataSource] = ()) -> str:
    parts = [text_header(report), text_reach(report), text_hosts(report), text_findings(report)]
    if report.audit is not None:
        parts.append(text_audit(report.audit))
    parts.append(data_sources_footer(sources))
    return "\n\n".join(p for p in parts if p) + "\n"


def text_header(report: Report) -> str:
    return "\n".join([
        f"egress review: {report.config}",
        f"mode: {report.mode} | {counts_line(report, ' | ')}",
        f"findings: {severity_summary(report)}",
    ])  # fmt: skip


def text_reach(report: Report) -> str:
    rows = reach_rows_by_secret(report)
    if not rows:
        return "\n".join([*section_title("Reach by credential"), "no secrets configured"])
    return "\n".join(
        [*section_title("Reach by credential"), *text_table(["SECRET", *REACH_HEADERS], rows)]
    )


def text_hosts(report: Report) -> str:
    out = section_title("Reach by host")
    with_cred = hosts_with_credentials(report)
    rows = [[*host_row(h), ", ".join(h.secrets)] for h in with_cred]
    out += (
        text_table([*HOST_HEADERS, "CREDENTIALS"], rows) if rows else ["no host gets a credential"]
    )
    without = hosts_without_credentials(report)
    out += ["", f"Hosts with no credential ({len(without)})"]
    out += text_table(HOST_HEADERS, [host_row(h) for h in without], "  ") if without else ["  none"]
    return "\n".join(out)


def text_findings(report: Report) -> str:
    findings = sorted_findings(report)
    out = section_title(f"Findings ({len(findings)}), most severe first")
    if not findings:
        return "\n".join([*out, "no findings"])
    for f in findings:
        out += ["", f"{f.severity.upper():<8}  {f.id}  {f.location.text()}".rstrip()]
        out += wrapped(f.title, "  ", "  ")
        out += wrapped(f.explanation, "  why: ", "       ")
        out += wrapped(f.fix, "  fix: ", "       ")
    return "\n".join(out)


def text_audit(audit: AuditSummary) -> str:
    span = f"{audit.first_time or '?'} to {audit.last_time or '?'}"
    out = section_title(f"Audit: {audit.source}")
    out += [
        f"{audit.records} records ({audit.skipped} skipped lines), {span}",
        f"Rules never used: {', '.join(audit.unused_rules) or 'none'}",
        f"Credentials never injected: {', '.join(audit.uninjected_secrets) or 'none'}",
        "",
        "Decisions by reason",
    ]
    reasons = [[code, str(n)] for code, n in audit.by_reason.items()]
    out += text_table(["REASON", "COUNT"], reasons, "  ") if reasons else ["  none"]
    out += ["", f"Most-denied destinations ({len(audit.denied)})"]
    for dest in audit.denied:
        out += wrapped(
            f"{destination_text(dest)}  {dest.count} denied; reasons: "
            f"{counts_text(dest.reasons)}; methods: {any_text(dest.methods)}",
            "  ", "    ",
        )  # fmt: skip
        if dest.suggestion:
            out += ["    suggested rule:"] + [f"      {s}" for s in dest.suggestion.splitlines()]
        else:
            out += wrapped(no_suggestion_text(dest), "    no rule: ", "      ")
    if not audit.denied:
        out.append("  none")
    timeline, width = coarsen(audit.timeline, audit.bucket_seconds, TEXT_TIMELINE_ROWS)
    out += ["", f"Traffic over time (buckets of {duration_text(width)})"]
    out += text_timeline(timeline)
    return "\n".join(out)


TEXT_TIMELINE_ROWS = 24  # a terminal screen


def coarsen(timeline: list[TimeBucket], width: int, rows: int) -> tuple[list[TimeBucket], int]:
    """At most ``rows`` buckets, each merging ``k`` consecutive ones (k as small as fits)."""
    k = max(1, -(-len(timeline) // rows))
    if k == 1:
        return timeline, width
    out = []
    for i in range(0, len(timeline), k):
        group = timeline[i : i + k]
        merged: dict[str, dict[str, int]] = {"d": {}, "r": {}}
        hosts: dict[str, dict[str, int]] = {}
        for b in group:
            for name, src in (("d", b.by_decision), ("r", b.by_reason)):
                for key, n in src.items():
                    merged[name][key] = merged[name].get(key, 0) + n
            for host, counts in b.by_host.items():
                into = hosts.setdefault(host, {})
                for key, n in counts.items():
                    into[key] = into.get(key, 0) + n
        out.append(TimeBucket(group[0].start, merged["d"], merged["r"], hosts))
    return out, width * k


def text_timeline(timeline: list[TimeBucket]) -> list[str]:
    if not timeline:
        return ["  no records"]
    keys = decision_keys(b.by_decision for b in timeline)
    peak = max(sum(b.by_decision.values()) for b in timeline) or 1

    def would_deny(b: TimeBucket) -> int:  # report mode: allowed, but enforce would refuse
        return sum(n for r, n in b.by_reason.items() if r.startswith("would_deny:"))

    report_mode = any(would_deny(b) for b in timeline)
    rows = []
    for b in timeline:
        total = sum(b.by_decision.values())
        bar = "#" * round(30 * total / peak) if total else ""
        extra = [str(would_deny(b))] if report_mode else []
        rows.append([b.start, *(str(b.by_decision.get(k, 0)) for k in keys), *extra, bar])
    heads = [k.upper() for k in keys] + (["OF WHICH WOULD DENY"] if report_mode else [])
    return text_table(["START", *heads, "TRAFFIC"], rows, "  ")


# ---------------------------------------------------------------------------------------
# JSON


def report_to_dict(report: Report, sources: Sequence[DataSource] = ()) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "config": report.config,
        "mode": report.mode,
        "secrets": list(report.secrets),
        "reach": [asdict(r) for r in report.reach],
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


# ---------------------------------------------------------------------------------------
# Markdown (a pull-request comment)

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
    footer = data_sources_footer(sources, "markdown")
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
    for dest in audit.denied:
        out += ["", f"{md_code(destination_text(dest))}: {dest.count} denied "
                f"({md_escape(counts_text(dest.reasons))})", ""]  # fmt: skip
        out += (
            md_fence(dest.suggestion) if dest.suggestion else [md_escape(no_suggestion_text(dest))]
        )
    return out
