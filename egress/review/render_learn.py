"""The draft of ``egress learn`` (egress/review/learn.py) as YAML to review and paste, or
as JSON."""

from __future__ import annotations

import json
import re
from typing import Any

from egress.review.drafting import MIN_CHILDREN, method_key
from egress.review.learner import Draft
from egress.review.topk import most_first

HEADER_LINES = 12  # refused destinations listed in the YAML header (JSON lists up to 50)


def render_draft(draft: Draft, fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(_json(draft), indent=2) + "\n"
    if fmt != "yaml":
        raise ValueError(f"unknown format {fmt!r}: yaml or json")
    return _yaml(draft)


def _json(draft: Draft) -> dict[str, Any]:
    return {
        "source": draft.source,
        "config": draft.config,
        "records": draft.records,
        "skipped": draft.skipped,
        "drafted_requests": draft.drafted,
        "already_allowed": draft.already_allowed,
        "scored": not draft.scored,
        "not_scored_because": draft.scored or None,
        "rules": [
            {
                "rule": p.rule.as_dict(),
                "requests": p.requests,
                "hosts": list(p.hosts),
                "reasons": p.reasons,
                "notes": p.rule.notes,
                "findings": [{"id": i, "severity": s, "title": t} for i, s, t in p.findings],
            }  # fmt: skip
            for p in draft.rules
        ],
        "refused_for_secret_reasons": [
            {
                "scheme": r.scheme,
                "host": r.host,
                "port": r.port,
                "reason": r.reason,
                "count": r.count,
            }
            for r in draft.refused
        ],  # fmt: skip
        "refused_connects": [
            {"host": h, "port": p, "reason": r, "count": n} for h, p, r, n in draft.connects
        ],
        "refused_for_other_reasons": draft.other,
        "notes": draft.notes,
    }


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in most_first(d).items())


def _yaml(draft: Draft) -> str:
    out: list[str] = []
    c = out.append
    if draft.config is None:
        c(f"# egress learn: a draft allowlist from {_comment(draft.source)}")
    else:
        c(f"# egress learn: the rules to ADD to the allow: list of {_comment(draft.config)}")
        c(f"# (it has {draft.config_rules} rule(s); append these after them)")
    c(f"# {draft.records} audit record(s) read, {draft.skipped} line(s) skipped; "
      f"{draft.drafted} request(s) drafted from"
      + (f", {draft.already_allowed} already allowed by the config" if draft.config else "")
      + ".")  # fmt: skip
    c("# Each rule allows only what was seen: its methods (GET brings HEAD) and its paths,")
    c(f"# generalised to PREFIX/ only where {MIN_CHILDREN} or more distinct children were "
      "seen. Review before use.")  # fmt: skip
    for n in draft.notes:
        c(f"# NOTE: {n}")
    if draft.refused:
        c("#")
        c("# Not proposed: refused for a secret reason (a credential went where it must not;")
        c("# an allow rule would not change that, and none is proposed):")
        for r in draft.refused[:HEADER_LINES]:
            c(f"#   {r.scheme}://{r.host}:{r.port}  {r.reason} x{r.count}")
        if len(draft.refused) > HEADER_LINES:
            c(f"#   ... and {len(draft.refused) - HEADER_LINES} more (--format json lists them)")
    if draft.connects:
        c("#")
        c("# Refused CONNECTs (no method or path known; run with mode: report to learn them):")
        for h, p, r, n in draft.connects[:HEADER_LINES]:
            c(f"#   {h}:{p}  {r} x{n}")
        if len(draft.connects) > HEADER_LINES:
            c(f"#   ... and {len(draft.connects) - HEADER_LINES} more (--format json lists them)")
    if draft.other:
        c("#")
        c(f"# Left out, refused for other reasons: {_counts(draft.other)}")
    if draft.scored:
        c("#")
        c(f"# Findings not scored: {_comment(draft.scored)}")
    if not draft.rules:
        c("#")
        c("# Nothing to add: " + ("the config allows every request seen." if draft.config
                                  else "no request to draft from."))  # fmt: skip
        c("allow: []")
        return "\n".join(out) + "\n"
    c("allow:")
    for p in draft.rules:
        c("")
        seen = sorted({m for k, _ in p.rule.sources for m in k.split(",")}, key=method_key)
        c(f"  # {p.requests} request(s) seen ({', '.join(seen)}); {_counts(p.reasons)}")
        for n in p.rule.notes:
            c(f"  # {_comment(n)}")
        if not draft.scored:
            if p.findings:
                for i, s, t in p.findings:
                    c(f"  # finding {i} ({s}): {_comment(t)}")
            else:
                c("  # findings: none")
        c(p.rule.to_yaml("  "))
    return "\n".join(out) + "\n"


def _comment(text: str) -> str:
    """Text safe inside a one-line YAML comment."""
    return re.sub(r"[\x00-\x1f\x7f\u0085\u2028\u2029]", " ", text)
