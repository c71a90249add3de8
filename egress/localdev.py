"""What ``egress exec`` does for a developer's terminal: where its audit log goes, and the
one-line denials it prints instead of JSON painting across a full-screen agent UI."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

LOG_LEVELS = ("auto", "quiet", "deny")


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """egress's per-user state directory: $XDG_STATE_HOME/egress, else ~/.local/state/egress."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME") or Path.home()) / ".local" / "state"
    )
    return Path(base) / "egress"


def exec_audit_target(
    option: str | None, configured: str, env: Mapping[str, str] | None = None
) -> str:
    """Where ``egress exec`` writes its audit log: ``--audit`` ("-" is stderr), else the
    config's ``audit.path`` unless that is the default stdout (CMD's stdout must stay
    clean, and stderr is the agent's terminal), else a file in the state directory."""
    if option == "-":
        return "stderr"
    if option:
        return option
    if configured != "stdout":
        return configured
    return str(state_dir(env) / "exec-audit.jsonl")


def denial_lines(level: str, stream: TextIO) -> bool:
    """Print one line per denial? ``auto``: only when the stream is not a terminal, which
    under ``exec`` is the agent's own screen."""
    if level == "auto":
        return not stream.isatty()
    return level == "deny"


def denial_line(record: Mapping[str, Any]) -> str | None:
    """One readable line for a refused request or connection, from its audit record (which
    never holds a secret); None for what was let through."""
    if record.get("decision") not in ("deny", "error"):
        return None
    host, port, scheme = record.get("host") or "", record.get("port"), record.get("scheme") or ""
    where = f"{scheme}://{host}" if scheme in ("http", "https") else host
    if port and port != {"https": 443, "http": 80}.get(scheme):
        where += f":{port}"
    method = record.get("method") or record.get("event") or ""
    what = f"{method} {where}{record.get('path') or ''}".strip()
    detail = " ".join(str(record.get("detail") or "").split())
    status = record.get("status")
    line = f"egress: refused {what}: {record.get('reason')}" + (f" ({status})" if status else "")
    if detail:
        line += f": {detail}"
    return line if len(line) <= 400 else line[:397] + "..."


def denial_printer(stream: TextIO) -> Callable[[Mapping[str, Any]], None]:
    def show(record: Mapping[str, Any]) -> None:
        line = denial_line(record)
        if line is not None:
            stream.write(line + "\n")
            stream.flush()

    return show
