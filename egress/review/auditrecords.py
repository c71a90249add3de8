"""Reading an audit log's lines and cleaning its records, for ``egress review --audit``
(egress/review/auditjoin.py) and ``egress learn`` (egress/review/learn.py).

Nothing a record holds reaches output unchecked: reason codes, hosts and methods are
given back only when they look like what egress writes (a host that is not a valid host
name becomes ``(invalid host)``, a code that does not look like one ``(invalid)``).

``read_lines(path)`` reads a file in binary, line by line, with a bound on the length of
one line (a longer one is skipped), for a caller that hands ``summarize`` a file: a file
object iterated directly would hold a whole line, however long, in memory.

With orjson installed, lines are parsed about four times faster (it is optional; the
standard library's json is the fallback, and the reference for what a line means).

Memos (host checks, parsed minutes): at most ``CACHE_ENTRIES`` entries each.
"""

from __future__ import annotations

import calendar
import datetime
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from egress.addresses import AddressPolicy
from egress.hostnames import is_ip, parse_host_pattern
from egress.reasons import Reason

try:  # optional: four times faster on audit lines; the stdlib parser is the fallback
    import orjson as _orjson

    _fast_loads: Callable[[Any], Any] | None = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None

# Reasons the allowlist gives (also the report-mode ``would_deny`` codes): a rule changes them.
ALLOWLIST_REASONS = frozenset({
    "host_not_allowed", "port_not_allowed", "scheme_not_allowed", "method_not_allowed",
    "path_not_allowed", "websocket_not_allowed", "ip_literal",
})  # fmt: skip
# Refusals by a secret check: the request carried a credential where it must not go. A rule
# never fixes these, and learn never proposes one for them.
SECRET_REASONS = frozenset({
    "placeholder_to_unbound_host", "secret_to_unbound_host", "placeholder_surface_not_allowed",
    "plaintext_injection", "foreign_credential", "signature_scheme_unsupported",
    "aws_scope_mismatch", "presign_expired", "aws_credential_action",
    "body_too_large", "dlp_blocked", "canary_tripped", "agent_quarantined",
    "prompt_injection_blocked",
})  # fmt: skip
# Allowed by the allowlist (or let through by report mode), then failed: still traffic the
# agent needs.
SENT_ERRORS = frozenset(
    {"upstream_error", "dns_failure", "secret_unavailable", "unscrubbable_response"}
)

MAX_LINE_BYTES = 1 << 20
CACHE_ENTRIES = 16_384  # per memo (host checks, minutes): cleared when full
MAX_CODES = 64

_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_HOSTISH = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")
# A canonical DNS name: lower-case labels, no punycode label, the last one not numeric
# (which would make it an IPv4 address in some spelling).
_CANON_NAME = re.compile(
    r"(?:(?!xn--)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+"
    r"(?!xn--)(?![0-9]+$|0x)[a-z_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)
_OVERRIDE = re.compile(r"\(overridden to ([A-Z0-9_, -]{1,200})\)")
OVERLONG = b"\x00(line over the length limit)"
INVALID_HOST = "(invalid host)"
OTHER = "(other)"
INVALID = "(invalid)"


def read_lines(path: str, max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of a file, read in binary; a line over ``max_line`` bytes is given as
    ``OVERLONG`` (which ``summarize`` and ``learn`` count as skipped). Raises OSError."""
    with open(path, "rb") as f:
        readline = f.readline
        while True:
            line = readline(max_line)
            if not line:
                return
            if len(line) == max_line and not line.endswith(b"\n"):
                while True:  # drop the rest of the overlong line
                    rest = readline(max_line)
                    if not rest or rest.endswith(b"\n"):
                        break
                yield OVERLONG
                continue
            yield line


def feed_lines(lines: Iterable[str | bytes], feed: Callable[[str | bytes], None]) -> None:
    """Hand ``feed`` every line that is not blank."""
    for line in lines:
        if line.strip():
            feed(line)


def loads(line: str | bytes) -> Any:
    """Parse one line (``None`` when it is not JSON)."""
    if _fast_loads is not None:
        try:
            return _fast_loads(line)
        except ValueError:
            pass  # orjson refuses lone surrogates (\\udcXX escapes); json takes them
    try:
        return json.loads(line)
    except (ValueError, TypeError, RecursionError):
        return None


def _remember(memo: dict[str, Any], key: str, value: Any) -> None:
    """Store ``value`` in a bounded memo (cleared when full)."""
    if len(memo) > CACHE_ENTRIES:
        memo.clear()
    memo[key] = value


# Memos the summary pass also reads directly, on its hot path: an audit ``time``'s minute
# -> seconds since the epoch; a record's host -> the host as output may show it.
minutes: dict[str, int] = {}
shown_hosts: dict[str, str] = {}


def epoch_seconds(t: str) -> int:
    """Seconds since the epoch of an audit ``time`` (``2026-11-24T03:04:34.288Z``).
    Raises ValueError."""
    if len(t) >= 20 and t[10] == "T" and t[16] == ":" and t[-1] == "Z":
        minute = t[:16]
        base = minutes.get(minute)
        if base is None:
            dt = datetime.datetime.strptime(minute, "%Y-%m-%dT%H:%M")
            base = calendar.timegm(dt.timetuple())
            _remember(minutes, minute, base)
        sec = t[17:19]
        if not sec.isdigit() or int(sec) > 60:
            raise ValueError(t)
        return base + int(sec)
    dt = datetime.datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp())


def iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


KNOWN_CODES = {r.value: r.value for r in Reason}
_codes: dict[str, str] = {}


def clean_code(value: Any) -> str:
    """A reason code as it may appear in output: itself when it is one of egress's codes,
    or looks like one (a newer egress's) and fewer than MAX_CODES such were seen;
    ``(invalid)`` when it does not look like a code, ``(other)`` past the cap."""
    if type(value) is not str:
        return INVALID
    got = KNOWN_CODES.get(value) or _codes.get(value)
    if got is not None:
        return got
    if not _CODE.fullmatch(value):
        return INVALID
    if len(_codes) >= MAX_CODES:
        return OTHER
    _codes[value] = value
    return value


_hosts: dict[str, str | None] = {}


def canonical(host: Any) -> str | None:
    """The host as a rule can name it (canonical text of an exact name or address), or
    None when it is not a host egress would write in a record. Cached (bounded)."""
    if type(host) is not str:
        return None
    got = _hosts.get(host, "")
    if got != "":
        return got
    out: str | None = None
    if len(host) <= 253 and _CANON_NAME.fullmatch(host) and not host.startswith("xn--"):
        out = host  # already canonical (the common case: what egress writes)
    elif _HOSTISH.fullmatch(host):
        try:
            pattern = parse_host_pattern(host.strip("[]"))
            out = pattern.text if pattern.kind != "wildcard" else None
        except ValueError:
            out = None
    _remember(_hosts, host, out)
    return out


def blocked_class(host: str) -> str | None:
    """The blocked address class (docs/policy.md) of a canonical host that is an address
    ("metadata", "private", "loopback"...), or None. A rule naming such an address opens
    it: neither ``review --audit`` nor ``learn`` ever proposes one."""
    if not is_ip(host):
        return None
    return AddressPolicy().blocked(ipaddress.ip_address(host))


def display_host(host: Any) -> str:
    """The host as output may show it: canonical, or ``(invalid host)``. Cached (bounded)."""
    if type(host) is not str:
        return INVALID_HOST
    shown = canonical(host) or INVALID_HOST
    _remember(shown_hosts, host, shown)
    return shown


def clean_method(value: Any) -> str | None:
    return value if type(value) is str and _METHOD.fullmatch(value) else None


def override_methods(detail: Any) -> list[str]:
    """The methods a ``method_not_allowed`` detail says the request overrode to."""
    if type(detail) is not str:
        return []
    m = _OVERRIDE.search(detail)
    if not m:
        return []
    return [x for x in (s.strip() for s in m.group(1).split(",")) if _METHOD.fullmatch(x)]


def is_websocket(rec: dict[str, Any]) -> bool:
    return rec.get("status") == 101 or "websocket_not_allowed" in (
        rec.get("reason"),
        rec.get("would_deny"),
    )


MAX_TRIPWIRES = 200
_TRIPWIRE_KEYS = ("trigger", "agent", "quarantined", "secret", "lease", "asked")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@*/ +-]")


def _shown(value: str, limit: int) -> str:
    """A value from the log as output may show it: no control or markup characters."""
    return _UNSAFE.sub("?", value[:limit])


def tripwire_entry(rec: object) -> dict[str, Any] | None:
    """A tripwire record (docs/tripwires.md) as review shows it: its fields cleaned (the
    log is read as untrusted input), None for any other record."""
    if type(rec) is not dict or rec.get("event") not in ("tripwire", "tripwire_cleared"):
        return None
    time = rec.get("time")
    out: dict[str, Any] = {"time": _shown(time, 40) if isinstance(time, str) else "?",
                           "event": rec["event"]}  # fmt: skip
    for key in _TRIPWIRE_KEYS:
        value = rec.get(key)
        if isinstance(value, str):
            out[key] = _shown(value, 120)
    for key in ("actions", "agents"):
        value = rec.get(key)
        if isinstance(value, list):
            out[key] = [_shown(v, 60) for v in value[:8] if isinstance(v, str)]
    return out


def is_reload(rec: object) -> bool:
    """A config reload's record (egress.reload): an audit record, but no decision; review
    and learn pass over it without counting it as skipped."""
    return type(rec) is dict and rec.get("event") == "reload"
