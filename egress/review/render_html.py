"""A review ``Report`` as one self-contained HTML page, for reviewers who would rather look
than read.

Inline CSS and inline SVG charts, no JavaScript, and nothing fetched: no fonts, images,
scripts or links off the page, and a Content-Security-Policy of ``default-src 'none'`` so
the browser refuses any fetch that slipped in. Every string from the report goes through
``html.escape``: hosts, paths and names come from a config an agent's owner may not have
written, and must show as text.

Sections: summary (counts by severity), findings, the reach matrix (credential x host),
allowed hosts and those with no credential, and with an audit log: traffic by decision and
by host over time (stacked SVG bars per time bucket), decisions by reason, rules never
used, credentials never injected and the most-denied destinations with suggested rules.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

from egress import __version__
from egress.review.model import AuditSummary, Finding, ReachEntry, Report
from egress.review.render import (
    DataSource,
    any_text,
    counts_line,
    counts_text,
    decision_keys,
    destination_text,
    duration_text,
    host_row,
    hosts_with_credentials,
    hosts_without_credentials,
    no_suggestion_text,
    reach_row,
    secrets_in_order,
    severity_counts,
    sorted_findings,
)

CSP = "default-src 'none'; style-src 'unsafe-inline'"
DECISION_COLOURS = {"allow": "#2e7d32", "deny": "#d32f2f", "error": "#f29900"}
OTHER_COLOUR = "#78909c"
REASON_COLOUR = "#5c6bc0"
NOWHERE_HTML = '<br><span class="muted">injected nowhere</span>'
CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--panel:#f6f8fa;--link:#0969da}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;
 font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans","DejaVu Sans",sans-serif}
main{max-width:1280px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:36px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:22px 0 8px}
code,pre,.mono{font:12.5px/1.45 ui-monospace,Menlo,Consolas,"Liberation Mono","DejaVu Sans Mono",monospace}
code,.mono{overflow-wrap:break-word}
pre{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:8px 10px;
 margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
p{margin:0 0 8px}.muted,.meta{color:var(--muted)}
nav{margin:8px 0 0}nav a{margin-right:16px;color:var(--link);text-decoration:none}
.banner{background:#fff4e5;border:1px solid #f0b429;border-radius:6px;padding:8px 12px;margin:12px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0 8px}
.card{border:1px solid var(--line);border-left:6px solid var(--c);border-radius:6px;
 padding:6px 16px;min-width:120px}
.card .n{display:block;font-size:28px;font-weight:700;color:var(--c)}
.card .l{color:var(--muted);text-transform:uppercase;font-size:12px;letter-spacing:.06em}
.card.zero{opacity:.45}
.sev-critical{--c:#7b1113}.sev-high{--c:#d32f2f}.sev-medium{--c:#e65100}
.sev-low{--c:#1565c0}.sev-info{--c:#546e7a}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;background:var(--c);color:#fff;
 font-size:11.5px;font-weight:700;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{background:var(--panel);font-weight:600}
.findings tr{border-left:4px solid var(--c)}
.findings .title{font-weight:600}
.findings td.loc{min-width:15em;max-width:22em}.findings td.sev{width:7em}
.findings .fix{background:#f0f7f0;border-radius:4px;padding:4px 8px;margin:0}
.scroll{overflow-x:auto}
.matrix th.host{font-weight:600;min-width:9em;max-width:16em}
.matrix td{min-width:9em}
.matrix td.on{background:#fdeeee}
.matrix td.off{color:#b8c0c8;text-align:center}
.matrix .rule{font-weight:600}
.chips span{display:inline-block;border:1px solid var(--line);border-radius:4px;padding:1px 6px;
 margin:0 6px 6px 0;background:var(--panel)}
.chart{width:100%;max-width:1100px;height:auto;display:block}
.chart text{font:11px sans-serif;fill:#59636e}
.lanes{display:grid;grid-template-columns:minmax(8em,18em) 1fr 6em;gap:6px 12px;
 align-items:center;max-width:1100px}
.lanes svg{width:100%;height:28px;display:block;background:var(--panel)}
.lanes .total{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}
footer{margin-top:40px;color:var(--muted);font-size:12.5px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros (deterministic output)."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def render_html(report: Report, sources: Sequence[DataSource] = ()) -> str:
    body = [html_header(report), html_findings(report), html_reach(report), html_hosts(report)]
    if report.audit is not None:
        body.append(html_audit(report.audit))
    body.append(html_footer(sources))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>egress review: {esc(report.config)}</title>\n<style>{CSS}</style>\n"
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def html_header(report: Report) -> str:
    cards = "".join(
        f'<div class="card sev-{sev}{" zero" if n == 0 else ""}">'
        f'<span class="n">{n}</span><span class="l">{sev}</span></div>'
        for sev, n in severity_counts(report).items()
    )
    banner = (
        '<p class="banner"><strong>mode: report</strong>: the allowlist is not enforced; '
        "requests it would refuse are let through and only logged.</p>"
        if report.mode == "report"
        else ""
    )
    links = ["findings", "reach", "hosts"] + (["audit"] if report.audit else [])
    nav = "".join(f'<a href="#{a}">{a.title()}</a>' for a in links)
    return (
        f'<header id="summary"><h1>egress review</h1>\n<p class="meta">config '
        f"<code>{esc(report.config)}</code> · mode <strong>{esc(report.mode)}</strong> · "
        f"{esc(counts_line(report, ' · '))}</p>\n{banner}"
        f'<div class="cards">{cards}</div>\n<nav>{nav}</nav></header>'
    )


def html_findings(report: Report) -> str:
    findings = sorted_findings(report)
    head = f'<section id="findings"><h2>Findings ({len(findings)})</h2>\n'
    if not findings:
        return head + "<p>No findings.</p></section>"
    rows = "\n".join(finding_row(f) for f in findings)
    return (
        head + '<table class="findings"><thead><tr><th>Severity</th><th>Finding</th>'
        "<th>Location</th><th>Why, and the fix</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody></table></section>"
    )


def finding_row(f: Finding) -> str:
    line = f":{f.location.line}" if f.location.line else ""
    return (
        f'<tr class="sev-{esc(f.severity)}"><td class="sev"><span class="badge">{esc(f.severity)}</span></td>'
        f'<td><div class="title">{esc(f.title)}</div><code>{esc(f.id)}</code></td>'
        f'<td class="loc"><code>{esc(f.location.file)}{line}</code><br><code>{esc(f.location.key)}</code></td>'
        f'<td><p>{esc(f.explanation)}</p><p class="fix"><strong>Fix:</strong> {esc(f.fix)}</p>'
        "</td></tr>"
    )


def html_reach(report: Report) -> str:
    secrets = secrets_in_order(report)
    hosts = list(dict.fromkeys(r.host for r in report.reach))
    out = ['<section id="reach"><h2>Reach matrix</h2>']
    out.append(
        "<p>Where each credential can be injected: a filled cell names the rule, the methods "
        "and the surfaces (header, query, body, WebSocket) for that credential on that host.</p>"
    )
    if not secrets or not hosts:
        out.append("<p>No credential can be injected anywhere.</p></section>")
        return "\n".join(out)
    head = "".join(f'<th class="host"><code>{esc(h)}</code></th>' for h in hosts)
    out.append(
        '<div class="scroll"><table class="matrix"><thead><tr><th>credential \\ host</th>'
        f"{head}</tr></thead><tbody>"
    )
    for name in secrets:
        cells = "".join(matrix_cell(report.reach, name, h) for h in hosts)
        nowhere = "" if any(r.secret == name for r in report.reach) else NOWHERE_HTML
        out.append(f"<tr><th><code>{esc(name)}</code>{nowhere}</th>{cells}</tr>")
    out.append("</tbody></table></div>")
    out.append("<h3>Every place a credential can be injected</h3>")
    rows = [[r.secret, *reach_row(r)] for r in report.reach]
    heads = ["Credential", "Host", "Ports", "Schemes", "Methods", "Paths", "Surfaces", "Rule"]
    out.append(table(heads, rows) + "</section>")
    return "\n".join(out)


def methods_text(methods: Sequence[str] | None) -> str:
    return "any method" if methods is None else any_text(methods)


def matrix_cell(reach: Sequence[ReachEntry], secret: str, host: str) -> str:
    entries = [r for r in reach if r.secret == secret and r.host == host]
    if not entries:
        return '<td class="off">·</td>'
    parts = [
        f'<div><span class="rule">{esc(r.rule)}</span> {esc(methods_text(r.methods))} '
        f'<span class="muted">on {esc(any_text(r.surfaces))}</span></div>'
        for r in entries
    ]
    return f'<td class="on">{"".join(parts)}</td>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>" + "".join(f'<td class="mono">{esc(c)}</td>' for c in row) + "</tr>" for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


def html_hosts(report: Report) -> str:
    heads = ["Rule", "Host", "Ports", "Schemes", "Methods", "Paths", "WebSocket"]
    with_cred = hosts_with_credentials(report)
    without = hosts_without_credentials(report)
    out = ['<section id="hosts"><h2>Allowed hosts</h2>', "<h3>Hosts a credential rides on</h3>"]
    rows = [[*host_row(h), ", ".join(h.secrets)] for h in with_cred]
    out.append(table([*heads, "Credentials"], rows) if rows else "<p>None.</p>")
    out.append(f'<h3 id="no-credential">Hosts with no credential ({len(without)})</h3>')
    out.append(table(heads, [host_row(h) for h in without]) if without else "<p>None.</p>")
    return "\n".join(out) + "</section>"


# ---------------------------------------------------------------------------------------
# Audit: charts and tables


def colour_of(key: str) -> str:
    return DECISION_COLOURS.get(key, OTHER_COLOUR)


def stacked_bars(
    series: Sequence[Mapping[str, int]], keys: Sequence[str], x0: float, slot: float,
    bottom: float, scale: float, label: Sequence[str], colour: Callable[[str], str] | None = None,
) -> list[str]:  # fmt: skip
    """One stacked bar per bucket: ``keys`` from the bottom up, ``scale`` units per count,
    each part titled (a hover tooltip) with its bucket label and count."""
    bar = slot * 0.8 if slot >= 3 else slot
    colour = colour or colour_of
    rects = []
    for i, counts in enumerate(series):
        y = bottom
        for key in keys:
            n = counts.get(key, 0)
            if n <= 0:
                continue
            h = n * scale
            y -= h
            rects.append(
                f'<rect class="bar bar-{esc(key)}" x="{num(x0 + i * slot)}" y="{num(y)}" '
                f'width="{num(bar)}" height="{num(h)}" fill="{colour(key)}">'
                f"<title>{esc(label[i])}: {esc(key)} {n}</title></rect>"
            )
    return rects


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value``."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def short_time(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("Z").removesuffix("+00:00")


def timeline_chart(audit: AuditSummary) -> str:
    """All traffic by decision over time: stacked bars, a y axis, time labels, a legend."""
    series = [b.by_decision for b in audit.timeline]
    keys = decision_keys(series)
    labels = [short_time(b.start) for b in audit.timeline]
    width, height, left, right, top, bottom = 960, 240, 52, 12, 34, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice_ceiling(max((sum(c.values()) for c in series), default=0) or 1)
    out = [f'<svg class="chart" id="timeline-chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Traffic by decision over time">']  # fmt: skip
    for frac in (0, 0.5, 1):
        y = num(top + plot_h * (1 - frac))
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y}" y2="{y}" stroke="#d1d9e0"/>')
        out.append(
            f'<text x="{left - 6}" y="{y}" text-anchor="end" dy="4">{num(peak * frac)}</text>'
        )
    slot = plot_w / max(len(series), 1)
    out += stacked_bars(series, keys, left, slot, top + plot_h, plot_h / peak, labels)
    for i in sorted({0, len(labels) // 2, len(labels) - 1} if labels else set()):
        anchor = "start" if i == 0 else "end" if i == len(labels) - 1 else "middle"
        x = num(
            left + i * slot + (slot if anchor == "end" else slot / 2 if anchor == "middle" else 0)
        )
        out.append(
            f'<text x="{x}" y="{height - 10}" text-anchor="{anchor}">{esc(labels[i])}</text>'
        )
    out += svg_legend(keys, left, 14)
    return "\n".join(out) + "\n</svg>"


def svg_legend(keys: Sequence[str], x: float, y: float) -> list[str]:
    out = ['<g class="legend">']
    for key in keys:
        out.append(
            f'<rect x="{num(x)}" y="{num(y - 9)}" width="11" height="11" fill="{colour_of(key)}"/>'
        )
        out.append(f'<text x="{num(x + 16)}" y="{num(y)}">{esc(key)}</text>')
        x += 28 + 7 * len(key)
    return out + ["</g>"]


def lane_svg(series: Sequence[Mapping[str, int]], keys: Sequence[str], labels: Sequence[str],
             label: str, colour: str | None = None) -> str:  # fmt: skip
    """A small stacked-bar timeline scaled to its own peak, stretched to the lane's width."""
    peak = max((sum(c.get(k, 0) for k in keys) for c in series), default=0) or 1
    slot, height = 10, 30
    paint = (lambda _key: colour) if colour else colour_of
    bars = stacked_bars(series, keys, 1, slot, height, (height - 2) / peak, labels, paint)
    return (
        f'<svg class="lane" viewBox="0 0 {slot * max(len(series), 1)} {height}" '
        f'preserveAspectRatio="none" role="img" aria-label="{esc(label)}">'
        + "".join(bars)
        + "</svg>"
    )


def host_lanes(audit: AuditSummary) -> str:
    totals: dict[str, int] = {}
    for b in audit.timeline:
        for host, counts in b.by_host.items():
            totals[host] = totals.get(host, 0) + sum(counts.values())
    order = sorted(totals, key=lambda h: (h == "(other)", -totals[h], h))
    keys = decision_keys(c for b in audit.timeline for c in b.by_host.values())
    labels = [short_time(b.start) for b in audit.timeline]
    rows = []
    for host in order:
        series = [b.by_host.get(host, {}) for b in audit.timeline]
        svg = lane_svg(series, keys, [f"{t} {host}" for t in labels], f"Traffic to {host}")
        rows.append(
            f'<div class="mono">{esc(host)}</div>{svg}<div class="total">{totals[host]}</div>'
        )
    legend = "".join(
        f'<span><i style="background:{colour_of(k)}"></i>{esc(k)}</span>' for k in keys
    )
    return (
        f'<p class="legend">{legend}<span class="muted">each lane scaled to its own peak</span>'
        f'</p>\n<div class="lanes" id="host-lanes">{"".join(rows)}</div>'
    )


def reason_rows(audit: AuditSummary) -> str:
    labels = [short_time(b.start) for b in audit.timeline]
    rows = []
    for code, n in audit.by_reason.items():
        series = [{code: b.by_reason.get(code, 0)} for b in audit.timeline]
        svg = lane_svg(series, [code], labels, f"{code} over time", REASON_COLOUR)
        rows.append(f'<div class="mono">{esc(code)}</div>{svg}<div class="total">{n}</div>')
    return f'<div class="lanes" id="reason-lanes">{"".join(rows)}</div>' if rows else "<p>None.</p>"


def html_list(items: Sequence[str]) -> str:
    if not items:
        return "<p>None.</p>"
    return (
        '<p class="chips">' + "".join(f"<span class=mono>{esc(i)}</span>" for i in items) + "</p>"
    )


def denied_table(audit: AuditSummary) -> str:
    if not audit.denied:
        return "<p>None.</p>"
    rows = []
    for d in audit.denied:
        rule = (
            f"<pre>{esc(d.suggestion)}</pre>"
            if d.suggestion
            else f"<p class=muted>{esc(no_suggestion_text(d))}</p>"
        )
        rows.append(
            f'<tr><td class="mono">{esc(destination_text(d))}</td><td>{d.count}</td>'
            f'<td class="mono">{esc(counts_text(d.reasons))}</td>'
            f'<td class="mono">{esc(any_text(d.methods))}</td><td>{rule}</td></tr>'
        )
    return (
        '<div class="scroll"><table id="denied"><thead><tr><th>Destination</th><th>Denied</th><th>Reasons</th>'
        "<th>Methods</th><th>Suggested rule</th></tr></thead><tbody>\n"
        + "\n".join(rows) + "\n</tbody></table></div>"
    )  # fmt: skip


def html_audit(audit: AuditSummary) -> str:
    span = f"{audit.first_time or '?'} to {audit.last_time or '?'}"
    return "\n".join([
        '<section id="audit"><h2>Observed traffic</h2>',
        f'<p class="meta"><code>{esc(audit.source)}</code>: {audit.records} records '
        f"({audit.skipped} skipped lines), {esc(span)}, buckets of "
        f"{esc(duration_text(audit.bucket_seconds))}</p>",
        "<h3>Traffic by decision over time</h3>",
        timeline_chart(audit) if audit.timeline else "<p>No records.</p>",
        "<h3>Traffic by host and decision over time</h3>",
        host_lanes(audit) if audit.timeline else "<p>No records.</p>",
        "<h3>Decisions by reason over time</h3>",
        reason_rows(audit),
        '<div class="cols"><div><h3>Rules never used</h3>', html_list(audit.unused_rules),
        "</div><div><h3>Credentials never injected</h3>", html_list(audit.uninjected_secrets),
        "</div></div>",
        "<h3>Most-denied destinations</h3>",
        denied_table(audit),
        "</section>",
    ])  # fmt: skip


def html_footer(sources: Sequence[DataSource]) -> str:
    items = "".join(
        f"<li>{esc(s.get('name', ''))} ({esc(s.get('licence', ''))}; {esc(s.get('version', ''))})"
        f" <span class=mono>{esc(s.get('url', ''))}</span></li>"
        for s in sources
    )
    data = f"<p>Data sources:</p><ul>{items}</ul>" if items else ""
    return f"<footer>{data}<p>egress {esc(__version__)} · egress review</p></footer>"
