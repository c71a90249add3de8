"""The review's plain data: findings, reach entries and the report that holds them.

Every renderer (text, JSON, Markdown, SARIF, HTML) reads these and nothing else, so that
every format says the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Most severe first. ``--fail-on SEVERITY`` fails on that severity or a more severe one.
SEVERITIES = ("critical", "high", "medium", "low", "info")


def severity_rank(severity: str) -> int:
    """0 for the most severe; a larger number is less severe."""
    return SEVERITIES.index(severity)


def at_least(severity: str, threshold: str) -> bool:
    return severity_rank(severity) <= severity_rank(threshold)


@dataclass(frozen=True)
class Location:
    """Where in the config a finding points: the file, the line (1-based) and the key path
    inside that file (``allow[3].host``). An included file is named as itself."""

    file: str
    line: int | None
    key: str

    def text(self) -> str:
        line = f":{self.line}" if self.line else ""
        return f"{self.file}{line} {self.key}".rstrip()


@dataclass(frozen=True)
class Finding:
    id: str  # stable: EGR-<area>-<name>, e.g. "wildcard_broad"; never renamed
    severity: str  # one of SEVERITIES
    title: str  # one line
    location: Location
    explanation: str  # why it matters, in a sentence or two
    fix: str  # a concrete change to make
    subject: str = ""  # the host pattern, secret or rule it is about

    def sort_key(self) -> tuple[int, str, str, str]:
        return (severity_rank(self.severity), self.id, self.location.file, self.location.key)


@dataclass(frozen=True)
class ReachEntry:
    """One place a credential can be injected: a secret on a host pattern, under the rule
    that lets the request out."""

    secret: str
    host: str  # the host pattern, as in the config
    rule: str  # "allow[N]"
    ports: tuple[int, ...]
    schemes: tuple[str, ...]  # where injection happens (http only with allow_http)
    methods: tuple[str, ...] | None  # None: any method
    paths: tuple[str, ...] | None  # None: any path
    surfaces: tuple[str, ...]  # headers, query, body, websocket; "signature" for aws_sigv4
    # What egress puts there: "static" (the value), "aws_sigv4" (a new signature),
    # "minted <type>" (a token egress obtains, e.g. "minted github_app").
    kind: str = "static"
    # The agent this entry is for (agents:, docs/agents.md); None: the config has no agents.
    agent: str | None = None


@dataclass(frozen=True)
class HostEntry:
    """One allow rule: which credentials ride on it."""

    rule: str
    host: str
    ports: tuple[int, ...]
    schemes: tuple[str, ...]
    methods: tuple[str, ...] | None
    paths: tuple[str, ...] | None
    websocket: bool
    secrets: tuple[str, ...]  # names of secrets injectable on this rule's hosts
    location: Location


@dataclass(frozen=True)
class DeniedDestination:
    """A destination the audit log shows refused, with a rule that would allow it."""

    host: str
    port: int
    scheme: str
    count: int
    reasons: dict[str, int]  # reason code -> count
    methods: tuple[str, ...]  # methods seen, sorted
    suggestion: str  # a ready-to-paste YAML rule (or "" where none is safe, e.g. a secret leak)


@dataclass(frozen=True)
class TimeBucket:
    start: str  # ISO 8601, UTC
    by_decision: dict[str, int]  # allow / deny / error -> count
    by_reason: dict[str, int]
    # host (the top hosts, the rest as "(other)") -> decision -> count
    by_host: dict[str, dict[str, int]]


@dataclass
class AuditSummary:
    """What one streaming pass over an audit log says about the config."""

    source: str  # the audit file
    records: int
    skipped: int  # lines that were not audit records
    first_time: str | None
    last_time: str | None
    unused_rules: list[str]  # "allow[N]" never named by an allowed record
    uninjected_secrets: list[str]  # never in a record's ``secrets``
    denied: list[DeniedDestination]  # most denied first
    by_reason: dict[str, int]
    timeline: list[TimeBucket]
    bucket_seconds: int
    # Tripwire records (docs/tripwires.md), in log order, at most MAX_TRIPWIRES: each a
    # mapping of time, event (tripwire | tripwire_cleared) and what it says.
    tripwires: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    config: str  # the config file reviewed (or the embedded default's name)
    mode: str  # enforce | report
    hosts: list[HostEntry] = field(default_factory=list)
    reach: list[ReachEntry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # every configured secret, in order
    audit: AuditSummary | None = None  # with --audit

    def worst(self) -> str | None:
        if not self.findings:
            return None
        return min((f.severity for f in self.findings), key=severity_rank)
