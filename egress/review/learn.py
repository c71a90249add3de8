"""``egress learn``: draft the allowlist an audit log's traffic needed.

From the audit log of a ``mode: report`` run (or any run), draft the smallest allowlist
that would have allowed every request seen; with ``--config``, only the rules to add to
that config. A reviewer approves a draft instead of writing one.

Which records are evidence
    A ``request`` record the proxy sent upstream or would have: ``decision: allow`` (with
    or without ``would_deny``), an ``error`` after the allowlist let it through
    (``upstream_error``, ``dns_failure``, ``secret_unavailable``, ``unscrubbable_response``),
    and, in an enforce-mode log, a ``deny`` by the allowlist itself (``host_not_allowed``,
    ``path_not_allowed``...). With a config, a request that config already allows is left
    out. Refused CONNECTs (enforce mode: no method or path known) are listed in the header,
    never drafted.

What is never proposed
    A rule for a request refused for a secret reason (``placeholder_to_unbound_host``,
    ``secret_to_unbound_host``, ``foreign_credential``...): those are listed in the header.
    And no generalisation (path prefix, ``HEAD`` next to ``GET``, wildcard host) is kept
    when it would newly allow such a request: a generalised rule that would is redrafted
    from the exact paths. The draft allows a secret-refused request only when a rule for
    the exact requests seen would allow it too.

How a rule is drawn
    Requests are grouped by (scheme, host, port); each group gets one rule per set of
    methods whose paths generalise to the same prefixes (a method is not allowed on paths
    it was not seen on). ``GET`` brings ``HEAD`` along. A WebSocket handshake (status 101, or
    ``websocket_not_allowed``) gets a rule with ``websocket: true``.

Paths, generalised only as far as the evidence supports (``generalise`` in drafting.py)
    Each path is split into segments. A path seen itself is its own prefix (egress
    prefixes cover everything below them). Below a prefix that was not itself seen, when
    ``MIN_CHILDREN`` (3) or more distinct next segments were seen, the rule lists ``prefix/``;
    otherwise it lists the distinct deeper prefixes. So ``/repos/a/b/issues`` and
    ``/repos/c/d/pulls`` stay two prefixes; ``/repos/a``, ``/repos/b``, ``/repos/c`` become
    ``/repos/``. The root is never generalised: a rule lists ``/`` only when ``/`` itself
    was requested (a prefix of ``/`` is every path) or more distinct first segments were
    seen than are kept; never a rule without ``paths``, which would also allow the paths
    egress cannot judge. Every reading of a path egress decides on (percent-decoded, NFKC,
    ``;params`` cut, slashes merged) is evidence, so the draft allows what the proxy will
    check; a path egress cannot judge (dot segments, encoded slashes) is counted, not
    drafted, since only a rule without paths allows it.

Wildcard hosts
    Only when at least ``WILDCARD_MIN_HOSTS`` (3) distinct subdomains of one registrable
    domain (Public Suffix List, private section included, as egress/hostnames.py uses it)
    were seen on one scheme and port, as ``*.<their longest common parent>``, and only when
    no secret-refused request would be newly allowed by it; a comment says so.

Scoring
    The draft is built into a config with ``egress.config.parse`` (with ``--config``, its
    rules are appended to that config's, secrets and all), and ``review_config``
    (egress/review/analyze.py) reviews it; each finding located on a proposed rule is
    written above it as a comment (id, severity, title).

Bounded memory: at most ``max_destinations`` destinations, ``max_paths`` paths per method of
one (cut to shorter prefixes beyond, see ``PathSet``), ``max_blocked`` secret-refused
requests per destination (beyond, that destination is drafted without generalisation).

The pass is egress/review/learner.py; the YAML and JSON output egress/review/render_learn.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from egress.config import Config, load_or_default, parse
from egress.errors import EgressError
from egress.review.auditrecords import feed_lines, read_lines
from egress.review.learner import Draft, Learner, ProposedRule, Refused
from egress.review.model import SEVERITIES
from egress.review.render_learn import render_draft

DRAFT_FILE = "egress-learn-draft.yaml"


# ---------------------------------------------------------------------------------------
# Scoring


def score(draft: Draft, cfg: Config | None) -> None:
    """Attach to each proposed rule the findings ``review_config`` reports on it.

    The draft is parsed as a config of its own (``egress.config.parse``: it must be one);
    with ``cfg``, its rules are appended to ``cfg``'s (after every rule, included ones
    too), so that the review sees them with the config's secrets. A finding whose key is
    ``allow[N]`` for one of those positions is the proposed rule's.
    """
    if not draft.rules:
        return
    try:
        from egress.review.analyze import review_config
    except ImportError as e:
        draft.scored = f"the review is not available ({e})"
        return
    try:
        drafted = parse({"allow": [p.rule.as_dict() for p in draft.rules]}, DRAFT_FILE, Path.cwd())
    except EgressError as e:
        draft.scored = f"the draft is not a valid config: {e}"  # a bug: say so, keep the draft
        return
    first = len(cfg.rules) if cfg else 0
    combined = drafted
    if cfg is not None:
        added = tuple(replace(r, index=first + r.index) for r in drafted.rules)
        combined = replace(cfg, rules=(*cfg.rules, *added))
    try:
        report = review_config(combined)
    except Exception as e:  # noqa: BLE001 (the draft is still useful without its scores)
        draft.scored = f"the review failed: {type(e).__name__}: {e}"
        return
    for f in report.findings:
        m = re.match(r"allow\[(\d+)\]", f.location.key)
        i = int(m.group(1)) - first if m else -1
        if 0 <= i < len(draft.rules):
            entry = (f.id, f.severity, f.title)
            if entry not in draft.rules[i].findings:
                draft.rules[i].findings.append(entry)
    for p in draft.rules:
        p.findings.sort(key=lambda x: (_severity_rank(x[1]), x[0]))


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


# ---------------------------------------------------------------------------------------
# Entry points


def learn(
    lines: Iterable[str | bytes], cfg: Config | None, source: str = "the audit log",
    **limits: int,
) -> Draft:  # fmt: skip
    """Draft the rules that would have allowed what ``lines`` (an audit log) shows.
    ``limits``: ``max_destinations``, ``max_paths``, ``max_blocked``, ``min_children``."""
    learner = Learner(cfg, **limits)
    feed_lines(lines, learner.feed)
    draft = learner.draft(source)
    score(draft, cfg)
    return draft


def run_learn(args: argparse.Namespace) -> int:
    """``egress learn AUDIT.jsonl [--config F] [--format yaml|json]``."""
    cfg: Config | None = None
    if getattr(args, "config", None):
        try:
            cfg = load_or_default(args.config)
        except EgressError as e:
            print(f"egress: error: {e}", file=sys.stderr)
            return 2
    try:
        draft = learn(read_lines(args.audit), cfg, source=args.audit)
    except OSError as e:
        print(f"egress learn: cannot read {args.audit}: {e.strerror or e}", file=sys.stderr)
        return 2
    if draft.records == 0 and draft.skipped:
        print(
            f"egress learn: {args.audit} holds no audit records ({draft.skipped} line(s) "
            "were not audit records; docs/audit.md describes the format)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(render_draft(draft, getattr(args, "format", "yaml") or "yaml"))
    return 0


__all__ = ["Draft", "Learner", "ProposedRule", "Refused", "learn", "render_draft", "run_learn"]
