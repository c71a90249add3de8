"""Secret values, the sources they come from, and the store the request path reads.

Every object that holds a secret value has a redacted repr/str, so an accidental log line,
exception or f-string shows ``<redacted>`` instead of the value. The request path only
reads the in-memory store: sources are loaded before the proxy reports ready.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path

import yaml

from egress.config import SecretSpec
from egress.errors import SecretLoadError

# Values shorter than this are not searched for in requests to unbound hosts: a short value
# matches innocent bytes too often to be evidence of a leak.
MIN_SCAN_LENGTH = 8


class SecretValue:
    """A secret string that never shows itself by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretValue(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("secret values cannot be pickled")


def check_value(name: str, source: str, value: str) -> SecretValue:
    if value == "":
        raise SecretLoadError(name, source, "the value is empty")
    if any(ch in value for ch in "\r\n\x00"):
        # A value with CR/LF would let a substituted header split into two.
        raise SecretLoadError(name, source, "the value contains CR, LF or NUL; refusing it")
    return SecretValue(value)


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
        return f"env:{self.spec.source.env}"

    def fetch(self) -> SecretValue:
        var = self.spec.source.env
        assert var is not None
        if var not in os.environ:
            raise SecretLoadError(self.spec.name, self.describe(), f"${var} is not set")
        return check_value(self.spec.name, self.describe(), os.environ[var])

    def env_vars_consumed(self) -> tuple[str, ...]:
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
        assert src.file is not None and src.key is not None
        try:
            values = read_secret_file(src.file)
        except FileNotFoundError:
            raise SecretLoadError(self.spec.name, self.describe(), f"{src.file} does not exist")
        except (OSError, ValueError, yaml.YAMLError) as e:
            # The message of a YAML error may quote file content: never pass it on.
            msg = str(e) if isinstance(e, PermissionError | ValueError) else type(e).__name__
            raise SecretLoadError(self.spec.name, self.describe(), f"{src.file} {msg}") from None
        if src.key not in values:
            raise SecretLoadError(
                self.spec.name, self.describe(), f"key {src.key!r} is not in {src.file}"
            )
        return check_value(self.spec.name, self.describe(), values[src.key])


SOURCES: dict[str, type[SecretSource]] = {"env": EnvSource, "file": FileSource}


def make_source(spec: SecretSpec) -> SecretSource:
    return SOURCES[spec.source.kind](spec)


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
        self.version = 0  # changes whenever a value does
        self.problems: dict[str, str] = {}  # name -> why it is not loaded (no values)

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

    def loaded(self) -> list[tuple[SecretSpec, SecretValue]]:
        # .get, not [] after `in`: the refresher thread may drop a value in between.
        return [(s, v) for s in self.specs if (v := self._values.get(s.name)) is not None]

    def known(self) -> list[tuple[SecretSpec, SecretValue]]:
        """Current and previous values: everything that must never reach a client."""
        return self.loaded() + [
            (s, v) for s in self.specs if (v := self._previous.get(s.name)) is not None
        ]

    def env_vars_consumed(self) -> set[str]:
        return {v for src in self.sources.values() for v in src.env_vars_consumed()}

    def __repr__(self) -> str:
        return (
            f"SecretStore(names={[s.name for s in self.specs]!r}, loaded={sorted(self._values)!r})"
        )
