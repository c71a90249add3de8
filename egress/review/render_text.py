"""The review ``Report`` as text for a terminal (egress/review/render.py dispatches)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from egress.review.model import AuditSummary, Report, TimeBucket
from egress.review.render import (
    HOST_HEADERS,
    NOWHERE,
    REACH_HEADERS,
    DataSource,
    any_text,
    counts_line,
    counts_text,
    data_source_lines,
    decision_keys,
    destination_text,
    duration_text,
    host_row,
    hosts_with_credentials,
    hosts_without_credentials,
    no_suggestion_text,
    reach_by_secret,
    reach_row,
    severity_summary,
    sorted_findings,
    tripwire_text,
)

WIDTH = 100  # the text report fits a 100-column terminal
GAP = "  "


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
    parts.append(text_sources(sources))
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


def reach_rows_by_secret(report: Report) -> list[list[str]]:
    return [
        [name, *(reach_row(r) if r else [NOWHERE, "", "", "", "", "", ""])]
        for name, r in reach_by_secret(report)
    ]


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
    out += ["", f"Tripwires ({len(audit.tripwires)})"]
    out += [f"  {tripwire_text(t)}" for t in audit.tripwires] or ["  none"]
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


def text_sources(sources: Sequence[DataSource]) -> str:
    """The data the findings come from, each with its licence and version ("" for none)."""
    if not sources:
        return ""
    lines = data_source_lines(sources)
    return "\n".join([*section_title("Data sources"), *(f"  {line}" for line in lines)])
