"""Error types. Every message is written for the person who has to act on it."""

from __future__ import annotations

from dataclasses import dataclass


class EgressError(Exception):
    """Base class: an error egress reports to its user without a traceback."""


@dataclass(frozen=True)
class ConfigProblem:
    key: str  # a key path such as "allow[3].host"; "" for the whole document
    message: str
    file: str | None = None  # the file it is in, when not the file being loaded (an include)

    def render(self, file: str) -> str:
        file = self.file or file
        return f"{file}: {self.key}: {self.message}" if self.key else f"{file}: {self.message}"


class ConfigError(EgressError):
    """A config file is invalid. Names the file, each bad key path and what is wrong."""

    def __init__(self, file: str, problems: list[ConfigProblem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


class InvalidHost(EgressError):
    """A host name or address that cannot be canonicalised."""


class CredentialLoadError(EgressError):
    """An agent's proxy credential could not be read (docs/agents.md). Names the agent and
    the source, never a value."""


class SecretLoadError(EgressError):
    """A secret could not be loaded. The message names the secret and its source, never a value."""

    def __init__(self, secret: str, source: str, problem: str):
        self.secret = secret
        self.source = source
        self.problem = problem
        super().__init__(f"secret {secret!r} ({source}): {problem}")
