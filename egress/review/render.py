"""Rendering a review ``Report``: a terminal table, JSON, Markdown, SARIF 2.1.0 or HTML.

``render(report, fmt)`` is the one entry point; every format says the same thing, read
from egress/review/model.py only. Output is deterministic (same report, same bytes), so
golden files are stable. ``sources`` (``egress.review.domains.data_sources()``) adds a
footer naming the data the findings come from; it is left out by default because its
versions change with the installed packages.

Each format has its module (``render_text``, ``render_json``, ``render_markdown``,
``render_sarif``, ``render_html``); this one holds what they show the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from egress.review.model import (
    SEVERITIES,
    DeniedDestination,
    Finding,
    HostEntry,
    ReachEntry,
    Report,
)
from egress.review.topk import most_first

FORMATS = ("text", "json", "markdown", "sarif", "html")
DECISIONS = ("allow", "deny", "error")  # shown in this order; any other after, sorted
DataSource = Mapping[str, str]  # name, licence, version, url


def render(report: Report, fmt: str, sources: Sequence[DataSource] = ()) -> str:
    """The report in one of FORMATS; ``sources`` adds the data-sources footer."""
    if fmt == "text":
        from egress.review.render_text import render_text

        return render_text(report, sources)
    if fmt == "json":
        from egress.review.render_json import render_json

        return render_json(report, sources)
    if fmt == "markdown":
        from egress.review.render_markdown import render_markdown

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
    return ", ".join(f"{k} {v}" for k, v in most_first(counts).items())


def reach_row(r: ReachEntry) -> list[str]:
    rule = r.rule if r.agent is None else f"{r.rule} (agent {r.agent})"
    return [
        r.host, any_text(r.ports), any_text(r.schemes), any_text(r.methods),
        any_text(r.paths), any_text(r.surfaces), rule,
    ]  # fmt: skip


NOWHERE = "(injected nowhere)"
REACH_HEADERS = ["HOST", "PORTS", "SCHEMES", "METHODS", "PATHS", "SURFACES", "RULE"]


def reach_by_secret(report: Report) -> list[tuple[str, ReachEntry | None]]:
    """(secret, entry) for every secret and entry, the name on its first row only; a
    secret with no reach gets one row with no entry."""
    rows: list[tuple[str, ReachEntry | None]] = []
    for name in secrets_in_order(report):
        entries = [r for r in report.reach if r.secret == name]
        kind = entries[0].kind if entries else "static"
        label = name if kind == "static" else f"{name} ({kind})"  # what egress injects
        rows += [(label if i == 0 else "", r) for i, r in enumerate(entries)] or [(name, None)]
    return rows


def host_row(h: HostEntry) -> list[str]:
    return [
        h.rule, h.host, any_text(h.ports), any_text(h.schemes), any_text(h.methods),
        any_text(h.paths), "yes" if h.websocket else "no",
    ]  # fmt: skip


HOST_HEADERS = ["RULE", "HOST", "PORTS", "SCHEMES", "METHODS", "PATHS", "WS"]


def data_source_lines(sources: Sequence[DataSource]) -> list[str]:
    """One line per data source: its name, licence, version and url (the text and Markdown
    footers; HTML builds its own from the same fields)."""
    return [
        f"{s.get('name', '')} ({s.get('licence', '')}; {s.get('version', '')}) "
        f"{s.get('url', '')}".rstrip()
        for s in sources
    ]


def tripwire_text(t: dict[str, Any]) -> str:
    """One tripwire record in a line (docs/tripwires.md)."""
    if t["event"] == "tripwire_cleared":
        return f"{t['time']}  cleared: {', '.join(t.get('agents', [])) or 'nobody'}"
    if "lease" in t:
        return f"{t['time']}  {t.get('trigger', '?')}: secret {t.get('secret', '?')}: {t['lease']}"
    who = t.get("quarantined") or t.get("agent") or "unidentified"
    secret = f", secret {t['secret']}" if t.get("secret") else ""
    return (f"{t['time']}  {t.get('trigger', '?')} by {who}{secret}: "
            f"{', '.join(t.get('actions', [])) or 'recorded'}")  # fmt: skip
