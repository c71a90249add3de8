"""``egress review`` and ``egress learn``: the command-line side of the review."""

from __future__ import annotations

import argparse
import sys

FORMATS = ("text", "json", "markdown", "sarif", "html")


def add_parsers(sub: argparse._SubParsersAction, cfg_help: str) -> None:  # type: ignore[type-arg]
    rv = sub.add_parser(
        "review",
        help="report what the config lets an agent reach, with which credential, and findings",
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
        "learn", help="draft the smallest allowlist that would have allowed an audit log's traffic"
    )
    ln.add_argument("audit", metavar="AUDIT.jsonl")
    ln.add_argument("--config", "-c", help="draft the change to this config instead")
    ln.add_argument("--format", "-f", choices=("yaml", "json"), default="yaml")


def run(args: argparse.Namespace) -> int:
    print(f"egress: {args.command} is not built yet", file=sys.stderr)
    return 2
