"""``egress review`` and ``egress learn``: the command-line side of the review."""

from __future__ import annotations

import argparse
import sys

from egress.review.model import Finding, at_least

FORMATS = ("text", "json", "markdown", "sarif", "html")

REVIEW_EPILOG = """\
examples:
  egress review --config egress.yaml
  egress review --config egress.yaml --format sarif --output egress.sarif
  egress review --config egress.yaml --fail-on high              # in CI
  egress review --diff HEAD~1:deploy/egress.yaml deploy/egress.yaml --fail-on-new-reach
  egress review --config egress.yaml --audit audit.jsonl --format html -o review.html

exit codes:
  0  reviewed; no finding at --fail-on or worse (and, with --fail-on-new-reach, no new reach)
  1  a finding at --fail-on or worse, or credentialed reach grew (--fail-on-new-reach)
  2  the config (or an audit file) cannot be read: the message names the file and key
"""

LEARN_EPILOG = """\
examples:
  egress learn audit.jsonl > allow.yaml
  egress learn audit.jsonl --config egress.yaml     # only the rules to add

exit codes:
  0  a draft was printed
  2  the audit log or the config cannot be read
"""


def add_parsers(sub: argparse._SubParsersAction, cfg_help: str) -> None:  # type: ignore[type-arg]
    rv = sub.add_parser(
        "review",
        help="report what the config lets an agent reach, with which credential, and findings",
        description="What a config lets an agent reach, with which credential and on which "
        "surfaces, and what is risky about it; or, with --diff, what a change opens and "
        "closes. Reads the config only: no secret is loaded, nothing is sent. "
        "docs/review.md explains every finding id.",
        epilog=REVIEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rv.add_argument("--config", "-c", help=cfg_help)
    rv.add_argument("--format", "-f", choices=FORMATS, default="text")
    rv.add_argument("--output", "-o", help="write the report to this file (default: stdout)")
    rv.add_argument(
        "--fail-on",
        choices=("critical", "high", "medium", "low", "info", "never"),
        default="never",
        help="exit 1 when a finding of this severity or worse is reported (for CI)",
    )
    rv.add_argument(
        "--diff", nargs=2, metavar=("OLD", "NEW"),
        help="what a change opens and closes: two files, or REV:PATH git revisions",
    )  # fmt: skip
    rv.add_argument(
        "--fail-on-new-reach",
        action="store_true",
        help="with --diff: exit 1 when credentialed reach grows",
    )
    rv.add_argument("--audit", metavar="AUDIT.jsonl", help="join the config with an audit log")
    ln = sub.add_parser(
        "learn",
        help="draft the smallest allowlist that would have allowed an audit log's traffic",
        description="Read the audit log of a `mode: report` run and draft the smallest "
        "allowlist (with --config: the rules to add) that would have allowed what was seen, "
        "each rule with the findings egress review gives it.",
        epilog=LEARN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ln.add_argument("audit", metavar="AUDIT.jsonl")
    ln.add_argument("--config", "-c", help="draft the change to this config instead")
    ln.add_argument("--format", "-f", choices=("yaml", "json"), default="yaml")


def _write(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _fails(findings: list[Finding], threshold: str) -> bool:
    return threshold != "never" and any(at_least(f.severity, threshold) for f in findings)


def run(args: argparse.Namespace) -> int:
    """Exit 0: done (and nothing at --fail-on or worse); 1: findings at --fail-on or worse,
    or with --fail-on-new-reach, reach that grows; 2: a config or file error."""
    from egress.errors import EgressError

    try:
        return _run(args)
    except EgressError as e:
        # 2, never 1: CI must tell a config that cannot be read from one with findings.
        print(f"egress: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "learn":
        from egress.review.learn import run_learn

        return run_learn(args)
    if args.diff:
        return _run_diff(args)
    from egress.config import load_or_default
    from egress.review.analyze import review_config
    from egress.review.render import render

    cfg = load_or_default(args.config)
    report = review_config(cfg)
    if args.audit:
        from egress.review.auditjoin import summarize
        from egress.review.auditrecords import read_lines

        try:
            report.audit = summarize(read_lines(args.audit), cfg, args.audit)
        except OSError as e:
            print(f"egress: error: --audit {args.audit}: {e.strerror}", file=sys.stderr)
            return 2
    _write(render(report, args.format), args.output)
    return 1 if _fails(report.findings, args.fail_on) else 0


def _run_diff(args: argparse.Namespace) -> int:
    from egress.review.diff import diff_configs
    from egress.review.render_diff import render_diff

    if args.format not in ("text", "json", "markdown"):
        print("egress: error: --diff writes text, json or markdown", file=sys.stderr)
        return 2
    if args.config or args.audit:
        print("egress: error: --diff takes its two configs itself (no --config/--audit)",
              file=sys.stderr)  # fmt: skip
        return 2
    d = diff_configs(*args.diff)
    _write(render_diff(d, args.format), args.output)
    if args.fail_on_new_reach and d.reach_grows:
        return 1
    return 1 if _fails(d.new_findings, args.fail_on) else 0
