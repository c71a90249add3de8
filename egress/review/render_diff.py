"""Rendering ``egress review --diff``: credential terms first, then rules, then findings."""

from __future__ import annotations

import json
from dataclasses import asdict

from egress.review.diff import Change, Diff
from egress.review.model import Finding


def _finding_line(f: Finding) -> str:
    return f"[{f.severity}] {f.id} {f.location.text()}: {f.title}"


def _sections(d: Diff) -> list[tuple[str, list[str]]]:
    return [
        ("Credentialed reach opened", [c.line for c in d.opened_reach]),
        ("Credentialed reach closed", [c.line for c in d.closed_reach]),
        ("Rules opened", [c.line for c in d.opened_rules]),
        ("Rules closed", [c.line for c in d.closed_rules]),
        ("New findings", [_finding_line(f) for f in d.new_findings]),
        ("Resolved findings", [_finding_line(f) for f in d.resolved_findings]),
    ]


def _verdict(d: Diff) -> str:
    if d.reach_grows:
        n = len(d.opened_reach)
        return f"credentialed reach GROWS ({n} new reach entr{'y' if n == 1 else 'ies'})"
    if d.opened_rules:
        return "credentialed reach does not grow; the allowlist grows"
    if d.closed_reach or d.closed_rules:
        return "this change only narrows what the agent can reach"
    return "no change in what the agent can reach"


def render_text(d: Diff) -> str:
    out = [f"egress review --diff: {d.old.config} -> {d.new.config}", _verdict(d), ""]
    for title, lines in _sections(d):
        out.append(f"{title}: {len(lines) if lines else 'none'}")
        out += [f"  {line}" for line in lines]
    return "\n".join(out) + "\n"


def _md_text(line: str) -> str:
    """A line of plain text in a pull-request comment: no HTML (a path such as
    '<details>' would fold the rest of the comment away) and no table breaks."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def render_markdown(d: Diff) -> str:
    out = [f"### egress review: {_md_text(d.old.config)} → {_md_text(d.new.config)}", "",
           f"**{_verdict(d)}**", ""]  # fmt: skip
    for title, lines in _sections(d):
        if lines:
            out.append(f"#### {title}")
            out += ["- " + _md_text(line) for line in lines]
            out.append("")
    return "\n".join(out) + "\n"


def _change(c: Change) -> dict[str, object]:
    return asdict(c)


def render_json(d: Diff) -> str:
    doc = {
        "version": 1,
        "old": d.old.config,
        "new": d.new.config,
        "verdict": _verdict(d),
        "reach_grows": d.reach_grows,
        "opened_reach": [_change(c) for c in d.opened_reach],
        "closed_reach": [_change(c) for c in d.closed_reach],
        "opened_rules": [_change(c) for c in d.opened_rules],
        "closed_rules": [_change(c) for c in d.closed_rules],
        "new_findings": [asdict(f) for f in d.new_findings],
        "resolved_findings": [asdict(f) for f in d.resolved_findings],
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def render_diff(d: Diff, fmt: str) -> str:
    renderers = {"text": render_text, "markdown": render_markdown, "json": render_json}
    if fmt not in renderers:
        raise ValueError(f"--diff writes text, markdown or json, not {fmt}")
    return renderers[fmt](d)
