"""``egress review --diff OLD NEW``: what a config change opens and closes.

Credentialed reach first: a reach entry of NEW that no entry of OLD for the same secret
covers (host, ports, schemes, methods, paths and surfaces all within) is new reach, said
in one line ("lets github_token reach gist.github.com with POST"); the reverse is closed
reach. Then the same for rules without regard to secrets, then findings new and resolved
(matched by id and subject, since positions move when rules are added).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from egress.config import Config, load
from egress.errors import ConfigError, ConfigProblem
from egress.hostnames import parse_host_pattern
from egress.policy import path_matches
from egress.review.analyze import review_config
from egress.review.model import Finding, HostEntry, ReachEntry, Report
from egress.review.reach import overlap


@dataclass
class Change:
    subject: str  # the secret name, or "" for a rule change
    host: str
    line: str  # one line, for people
    grows: tuple[str, ...]  # what grows: host, ports, schemes, methods, paths, surfaces


@dataclass
class Diff:
    old: Report
    new: Report
    opened_reach: list[Change] = field(default_factory=list)
    closed_reach: list[Change] = field(default_factory=list)
    opened_rules: list[Change] = field(default_factory=list)
    closed_rules: list[Change] = field(default_factory=list)
    new_findings: list[Finding] = field(default_factory=list)
    resolved_findings: list[Finding] = field(default_factory=list)

    @property
    def reach_grows(self) -> bool:
        return bool(self.opened_reach)


def _within(small: tuple[str, ...] | None, big: tuple[str, ...] | None) -> bool:
    """Method lists: None is any."""
    return big is None or (small is not None and set(small) <= set(big))


def _paths_within(small: tuple[str, ...] | None, big: tuple[str, ...] | None) -> bool:
    if big is None:
        return True
    if small is None:
        return False
    return all(any(path_matches(b, s) for b in big) for s in small)


def _growth(e: ReachEntry | HostEntry, o: ReachEntry | HostEntry) -> list[str]:
    """What ``e`` allows beyond ``o`` (same subject, o's host covers e's host), as phrases
    that follow "reach HOST": "with POST", "on /gists", "over http", "in the body"."""
    grows = []
    if not _within(e.methods, o.methods):
        grows.append("with " + ("any method" if e.methods is None else "/".join(
            m for m in e.methods if o.methods is not None and m not in o.methods)))  # fmt: skip
    if not _paths_within(e.paths, o.paths):
        grows.append("on " + ("any path" if e.paths is None else ", ".join(
            p for p in e.paths if not _paths_within((p,), o.paths))))  # fmt: skip
    if not set(e.ports) <= set(o.ports):
        grows.append("on port " + ", ".join(str(p) for p in e.ports if p not in o.ports))
    if not set(e.schemes) <= set(o.schemes):
        grows.append("over " + ", ".join(s for s in e.schemes if s not in o.schemes))
    if isinstance(e, ReachEntry) and isinstance(o, ReachEntry):
        more = [s for s in e.surfaces if s not in o.surfaces]
        if more:
            grows.append("injected in the " + ", ".join(more))
    if isinstance(e, HostEntry) and isinstance(o, HostEntry) and e.websocket and not o.websocket:
        grows.append("over WebSocket")
    return grows


def _covering(e_host: str, o_host: str) -> bool:
    a, b = parse_host_pattern(o_host), parse_host_pattern(e_host)
    return overlap(a, b) == b


def _dimension(phrase: str) -> str:
    """The dimension a growth phrase is about: methods, paths, ports, schemes, surfaces..."""
    for prefix, name in (("with ", "methods"), ("on port ", "ports"), ("on ", "paths"),
                         ("over WebSocket", "websocket"), ("over ", "schemes"),
                         ("injected ", "surfaces")):  # fmt: skip
        if phrase.startswith(prefix):
            return name
    return phrase


def _what(e: ReachEntry | HostEntry) -> str:
    """Everything an entry allows, for a host the old config did not reach at all."""
    parts = ["with " + ("any method" if e.methods is None else "/".join(e.methods))]
    if e.paths is not None:
        parts.append("on " + ", ".join(e.paths))
    if set(e.ports) != {443}:
        parts.append("on port " + ", ".join(map(str, e.ports)))
    if e.schemes != ("https",):
        parts.append("over " + "/".join(e.schemes))
    if isinstance(e, ReachEntry):
        parts.append("injected in the " + ", ".join(e.surfaces))
    return " ".join(parts)


def _compare(
    news: list[ReachEntry] | list[HostEntry], olds: list[ReachEntry] | list[HostEntry], verb: str
) -> list[Change]:
    out: list[Change] = []
    for e in news:
        subject = e.secret if isinstance(e, ReachEntry) else ""
        same = [o for o in olds if (o.secret if isinstance(o, ReachEntry) else "") == subject
                and _covering(e.host, o.host)]  # fmt: skip
        if any(not _growth(e, o) for o in same):
            continue
        who = f"`{subject}`" if subject else "the agent"
        reach = "reach" if verb == "lets" else "from reaching"
        if not same:
            grows: tuple[str, ...] = ("host",)
            what = _what(e)
        else:
            best = min((_growth(e, o) for o in same), key=len)
            grows = tuple(_dimension(g) for g in best)
            what = " ".join(best)
        out.append(
            Change(
                subject,
                e.host,
                f"this change {verb} {who} {reach} {e.host} {what} ({e.rule})",
                grows,
            )
        )
    return out


def _key(f: Finding) -> tuple[str, str, str]:
    # The severity is part of it: a finding that turns from medium to high is a new finding
    # (removing a secret can lift the guard that kept it medium).
    return (f.id, f.subject, f.severity)


def diff_reports(old: Report, new: Report) -> Diff:
    d = Diff(old, new)
    d.opened_reach = _compare(new.reach, old.reach, "lets")
    d.closed_reach = _compare(old.reach, new.reach, "stops")
    d.opened_rules = _compare(new.hosts, old.hosts, "lets")
    d.closed_rules = _compare(old.hosts, new.hosts, "stops")
    old_keys = {_key(f) for f in old.findings}
    new_keys = {_key(f) for f in new.findings}
    d.new_findings = [f for f in new.findings if _key(f) not in old_keys]
    d.resolved_findings = [f for f in old.findings if _key(f) not in new_keys]
    return d


def load_revision(spec: str, workdir: Path) -> tuple[Config, str, str]:
    """A config from a file path, or from ``REV:PATH`` in git: the file's folder at that
    revision is written into ``workdir``, so that relative includes come from REV too.
    Returns the config, the folder it was read from, and the name to show for it."""
    rev, colon, file = spec.partition(":")
    if not colon or not rev or spec.startswith(("/", "./", "../")):
        # A file. A spec with a colon is a revision even where a file of that name exists:
        # a change could add a file named "HEAD~1:deploy/egress.yaml" to review itself.
        return load(spec), "", ""
    folder = Path(file).parent.resolve()

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], capture_output=True, check=True, cwd=folder).stdout

    try:
        top = Path(git("rev-parse", "--show-toplevel").decode().strip())
        rel = folder.relative_to(top)
        archive = git("-C", str(top), "archive", rev, "--", str(rel))
    except (subprocess.CalledProcessError, ValueError, OSError) as e:
        stderr = getattr(e, "stderr", b"") or b""
        why = stderr.decode(errors="replace").strip() or str(e)
        problem = ConfigProblem("", f"cannot read {file!r} at revision {rev!r}: {why}")
        raise ConfigError(spec, [problem]) from None
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(workdir, filter="data")
    except (tarfile.TarError, OSError) as e:
        # e.g. a symlink to an absolute path in that folder: refused, as a config error
        problem = ConfigProblem("", f"cannot check out {file!r} at revision {rev!r}: {e}")
        raise ConfigError(spec, [problem]) from None
    return load(workdir / rel / Path(file).name), str(workdir / rel), f"{rev}:{Path(file).parent}"


def _renamed(report: Report, folder: str, shown: str) -> Report:
    """Name files read from a revision as REV:folder, not the temporary copy."""
    if not folder:
        return report

    def fix(text: str) -> str:
        return shown + text[len(folder) :] if text.startswith(folder) else text

    report.config = fix(report.config)
    report.findings = [
        replace(f, location=replace(f.location, file=fix(f.location.file))) for f in report.findings
    ]
    report.hosts = [
        replace(h, location=replace(h.location, file=fix(h.location.file))) for h in report.hosts
    ]
    return report


def diff_configs(old_spec: str, new_spec: str) -> Diff:
    with tempfile.TemporaryDirectory(prefix="egress-review-") as tmp:
        reports = []
        for name, spec in (("old", old_spec), ("new", new_spec)):
            cfg, folder, shown = load_revision(spec, Path(tmp) / name)
            reports.append(_renamed(review_config(cfg), folder, shown))
    return diff_reports(*reports)
