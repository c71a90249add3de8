"""Secret values, the sources they come from, and the store the request path reads.

Every object that holds a secret value has a redacted repr/str, so an accidental log line,
exception or f-string shows ``<redacted>`` instead of the value. The request path only
reads the in-memory store: sources are loaded before the proxy reports ready.
"""

from __future__ import annotations

import os
import stat
import time
from abc import ABC, abstractmethod
from pathlib import Path

import yaml

from egress.config import SecretSpec
from egress.errors import SecretLoadError

# Values shorter than this are not searched for in requests to unbound hosts: a short value
# matches innocent bytes too often to be evidence of a leak.
MIN_SCAN_LENGTH = 8
# Replaced tokens kept per secret (at most one a min_refresh_interval_seconds, so a day of
# agent-forced mints at the shortest interval still fits).
RETAINED_MAX = 4096


class SecretValue:
    """A secret string that never shows itself by accident.

    A secret of several parts (an AWS access key id, secret access key and session token,
    read together from one source) keeps them as ``parts`` (role -> text); ``reveal()``
    gives its scheme's primary part, and every part is searched for and scrubbed."""

    __slots__ = ("_value", "_parts")

    def __init__(self, value: str, parts: tuple[tuple[str, str], ...] = ()):
        self._value = value
        self._parts = parts

    def reveal(self) -> str:
        return self._value

    def part(self, role: str) -> str | None:
        """One part of a multi-part secret, or None when it has no such part."""
        return next((text for r, text in self._parts if r == role), None)

    def texts(self) -> tuple[str, ...]:
        """Every distinct text this secret holds: what must never reach a client."""
        return tuple(dict.fromkeys([self._value, *(text for _, text in self._parts)]))

    def to_wire(self) -> str | dict[str, object]:
        """For the socket to the worker processes (never a file, a log or a client)."""
        return (
            {"value": self._value, "parts": [list(p) for p in self._parts]}
            if self._parts
            else self._value
        )

    @classmethod
    def from_wire(cls, data: str | dict[str, object]) -> SecretValue:
        if isinstance(data, str):
            return cls(data)
        parts = tuple((str(r), str(t)) for r, t in data["parts"])  # type: ignore[union-attr]
        return cls(str(data["value"]), parts)

    def __repr__(self) -> str:
        return "SecretValue(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SecretValue)
            and other._value == self._value
            and other._parts == self._parts
        )

    def __hash__(self) -> int:
        return hash((self._value, self._parts))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("secret values cannot be pickled")


def check_value(name: str, source: str, value: str, multiline: bool = False) -> SecretValue:
    """``multiline``: the input of a minted token (a private key PEM, a key file), which is
    never put into a header, may hold line breaks."""
    if value == "":
        raise SecretLoadError(name, source, "the value is empty")
    if "\x00" in value or (not multiline and any(ch in value for ch in "\r\n")):
        # A value with CR/LF would let a substituted header split into two.
        raise SecretLoadError(name, source, "the value contains CR, LF or NUL; refusing it")
    return SecretValue(value)


def parts_value(spec: SecretSpec, source: str, found: dict[str, object]) -> SecretValue:
    """A multi-part secret from the texts its source holds under each role's key
    (``found``: key -> value as read, absent or None when missing). A missing required part
    fails the load, naming the key, never a value; a missing optional part is left out."""
    from egress.config.model import MINT_ROLES, SCHEME_PRIMARY, SCHEME_ROLES

    # A minted secret's inputs: their value is the client secret or refresh token until a
    # token replaces it (egress.mintsource); never injected as they are.
    required, _ = MINT_ROLES[spec.mint.type] if spec.mint else SCHEME_ROLES[spec.scheme]
    parts: list[tuple[str, str]] = []
    for role, key in spec.source.keys:
        value = found.get(key)
        if value is None or value == "":
            if role in required:
                raise SecretLoadError(spec.name, source, f"{key!r} ({role}) is missing or empty")
            continue
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise SecretLoadError(spec.name, source, f"{key!r} ({role}) is not a string")
        parts.append(
            (role, check_value(spec.name, source, str(value), spec.mint is not None).reveal())
        )
    primary = parts[-1][1] if spec.mint else dict(parts)[SCHEME_PRIMARY[spec.scheme]]
    return SecretValue(primary, tuple(parts))


class SecretSource(ABC):
    """Where one secret's value comes from. ``fetch`` may do I/O; it is never called on the
    request path."""

    def __init__(self, spec: SecretSpec):
        self.spec = spec

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def fetch(self) -> SecretValue:
        """Return the current value or raise SecretLoadError (naming no value)."""

    def env_vars_consumed(self) -> tuple[str, ...]:
        """Environment variables of the proxy that hold secret material; ``egress exec``
        removes them from the agent's environment."""
        return ()


class EnvSource(SecretSource):
    def describe(self) -> str:
        return self.spec.source.describe()

    def fetch(self) -> SecretValue:
        var = self.spec.source.env
        if self.spec.source.keys:
            return parts_value(
                self.spec, self.describe(), {v: os.environ.get(v) for _, v in self.spec.source.keys}
            )
        assert var is not None
        if var not in os.environ:
            raise SecretLoadError(self.spec.name, self.describe(), f"${var} is not set")
        return check_value(
            self.spec.name, self.describe(), os.environ[var], self.spec.mint is not None
        )

    def env_vars_consumed(self) -> tuple[str, ...]:
        if self.spec.source.keys:
            return tuple(var for _, var in self.spec.source.keys)
        assert self.spec.source.env is not None
        return (self.spec.source.env,)


def _parse_dotenv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        if "=" not in line:
            continue
        k, v = line.split("=", 1)
        k, v = k.strip(), v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k] = v
    return out


def read_secret_file(path: Path) -> dict[str, str]:
    """Read a YAML mapping (.yaml/.yml) or a dotenv file. Refuses files others can read."""
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"is readable by other users (mode {stat.S_IMODE(st.st_mode):o}): run 'chmod 600 {path}'"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("must hold a YAML mapping of key: value")
        return {str(k): str(v) for k, v in data.items() if v is not None}
    return _parse_dotenv(text)


class FileSource(SecretSource):
    def describe(self) -> str:
        return f"file:{self.spec.source.file}#{self.spec.source.key}"

    def fetch(self) -> SecretValue:
        src = self.spec.source
        assert src.file is not None
        try:
            values = read_secret_file(src.file)
        except FileNotFoundError:
            raise SecretLoadError(self.spec.name, self.describe(), f"{src.file} does not exist")
        except (OSError, ValueError, yaml.YAMLError) as e:
            # The message of a YAML error may quote file content: never pass it on.
            msg = str(e) if isinstance(e, PermissionError | ValueError) else type(e).__name__
            raise SecretLoadError(self.spec.name, self.describe(), f"{src.file} {msg}") from None
        if src.keys:
            return parts_value(self.spec, self.describe(), dict(values))
        assert src.key is not None
        if src.key not in values:
            raise SecretLoadError(
                self.spec.name, self.describe(), f"key {src.key!r} is not in {src.file}"
            )
        return check_value(
            self.spec.name, self.describe(), values[src.key], self.spec.mint is not None
        )


SOURCES: dict[str, type[SecretSource]] = {"env": EnvSource, "file": FileSource}


class ParentHeld(SecretSource):
    """A worker's stand-in for the source of a secret a reload added: only the parent reads
    sources; a worker gets the values (egress.workers)."""

    def describe(self) -> str:
        return f"{self.spec.source.kind}, read by the parent process"

    def fetch(self) -> SecretValue:
        raise SecretLoadError(self.spec.name, self.describe(), "a worker never reads a source")


def make_source(spec: SecretSpec) -> SecretSource:
    return SOURCES[spec.source.kind](spec)


REMOVED_MAX = 1024  # removed secrets' values kept for scrubbing, newest last


class SecretStore:
    """The current value of every secret, in memory. Reads are plain dict look-ups."""

    def __init__(
        self, specs: tuple[SecretSpec, ...], sources: dict[str, SecretSource] | None = None
    ):
        self.specs = specs
        self.sources = sources or {s.name: make_source(s) for s in specs}
        self._values: dict[str, SecretValue] = {}
        # The value each secret had before its last rotation: upstreams may still echo it.
        self._previous: dict[str, SecretValue] = {}
        # Minted tokens replaced before they expired: still valid at their upstream, so
        # still scrubbed until then (name -> [(value, until)]), however often they rotate.
        self._retained: dict[str, list[tuple[SecretValue, float]]] = {}
        self.clock = time.time
        self.version = 0  # changes whenever a value does
        self.problems: dict[str, str] = {}  # name -> why it is not loaded (no values)
        # Values of secrets a reload removed: scrubbed, never injected (replace()).
        self._removed: list[tuple[SecretSpec, SecretValue]] = []

    def load_all(self) -> None:
        """Fetch every secret. Raises the first SecretLoadError of a required secret;
        optional ones that fail are recorded in ``problems`` and fail closed at use."""
        for spec in self.specs:
            try:
                self.set(spec.name, self.sources[spec.name].fetch())
                self.problems.pop(spec.name, None)
            except SecretLoadError as e:
                if spec.required:
                    raise
                self.problems[spec.name] = str(e)

    def get(self, name: str) -> SecretValue | None:
        return self._values.get(name)

    def set(self, name: str, value: SecretValue) -> None:
        old = self._values.get(name)
        if old != value:
            if old is not None:
                self._previous[name] = old
            self._values[name] = value
            self.version += 1

    def drop(self, name: str) -> None:
        """Forget a value that can no longer be trusted: requests that need it fail closed."""
        old = self._values.pop(name, None)
        if old is not None:
            # No longer injected, but still a value that must never reach a client.
            self._previous[name] = old
            self.version += 1

    def retain(self, name: str, value: SecretValue, until: float, now: float) -> None:
        """Keep ``value`` among the values that must never reach a client until ``until``
        (epoch seconds): a token replaced before it expired is still a working credential."""
        kept = [(v, u) for v, u in self._retained.get(name, []) if u > now and v != value]
        kept.append((value, until))
        self._retained[name] = kept[-RETAINED_MAX:]
        self.version += 1

    def loaded(self) -> list[tuple[SecretSpec, SecretValue]]:
        # .get, not [] after `in`: the refresher thread may drop a value in between.
        return [(s, v) for s in self.specs if (v := self._values.get(s.name)) is not None]

    def known(self) -> list[tuple[SecretSpec, SecretValue]]:
        """Current and previous values: everything that must never reach a client."""
        now = self.clock()
        return (
            self.loaded()
            + [(s, v) for s in self.specs if (v := self._previous.get(s.name)) is not None]
            + [(s, v) for s in self.specs for v, u in self._retained.get(s.name, ()) if u > now]
            + self._removed
        )

    def replace(
        self, specs: tuple[SecretSpec, ...], sources: dict[str, SecretSource],
        values: dict[str, SecretValue], problems: dict[str, str],
    ) -> None:  # fmt: skip
        """A reload's secrets (egress.reload): ``specs`` from now on, with their sources;
        ``values`` for the new or changed ones (the others keep theirs). A secret no longer
        listed is never injected again, but its values stay among those scrubbed from
        responses: an upstream may still echo them."""
        names = {s.name for s in specs}
        for spec in self.specs:
            if spec.name not in names:
                for value in [self._values.get(spec.name), self._previous.get(spec.name)]:
                    if value is not None and all(v != value for _, v in self._removed):
                        self._removed.append((spec, value))
                del self._removed[:-REMOVED_MAX]
                self._values.pop(spec.name, None)
                self._previous.pop(spec.name, None)
        for name in list(self._values):
            if name not in names:
                del self._values[name]
        self.specs = specs
        self.sources = sources
        for name, value in values.items():
            self.set(name, value)
        for name in names:
            self.problems.pop(name, None)
        for name in set(self.problems) - names:
            del self.problems[name]
        for name, why in problems.items():
            self.problems[name] = why
            old = self._values.pop(name, None)
            if old is not None:  # no longer injected, still never to reach a client
                self._previous[name] = old
        self.version += 1

    def env_vars_consumed(self) -> set[str]:
        return {v for src in self.sources.values() for v in src.env_vars_consumed()}

    def __repr__(self) -> str:
        return (
            f"SecretStore(names={[s.name for s in self.specs]!r}, loaded={sorted(self._values)!r})"
        )
