"""Walks parsed YAML and records every problem with its key path."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from egress.errors import ConfigProblem


class Checker:
    """Walks the parsed YAML and records problems with their key paths."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def err(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(key, message))

    def mapping(
        self, node: Any, key: str, known: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        if node is None:
            node = {}
        if not isinstance(node, dict):
            self.err(key, f"must be a mapping, not {kind_of(node)}")
            return None
        for k in node:
            if k not in known:
                near = difflib.get_close_matches(str(k), known, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
                self.err(join_key(key, str(k)), f"unknown key: {hint}")
        for k in required:
            if k not in node:
                self.err(join_key(key, k), "is required")
        return node

    def typed(
        self, node: dict[str, Any], key: str, name: str, kind: type | tuple[type, ...], default: Any
    ) -> Any:
        if name not in node or node[name] is None and default is None:
            return default
        value = node[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.err(join_key(key, name), f"must be an integer, not {kind_of(value)}")
            return default
        wrong_bool = isinstance(value, bool) and kind is not bool
        if kind is not int and (wrong_bool or not isinstance(value, kind)):
            names = {str: "string", bool: "boolean"}
            what = "number" if isinstance(kind, tuple) else names.get(kind, kind.__name__)
            self.err(join_key(key, name), f"must be a {what}, not {kind_of(value)}")
            return default
        return value

    def choice(
        self, node: dict[str, Any], key: str, name: str, choices: tuple[str, ...], default: str
    ) -> str | None:
        """A string that must be one of ``choices``; None (with a problem recorded) otherwise."""
        value = self.typed(node, key, name, str, default)
        if value not in choices:
            self.err(join_key(key, name), f"{value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def str_list(
        self, node: dict[str, Any], key: str, name: str, allow_empty: bool = False
    ) -> list[str] | None:
        if name not in node:
            return None
        value = node[name]
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]
        if value == [] and allow_empty:
            return []
        if not isinstance(value, list) or not value:
            self.err(join_key(key, name), "must be a non-empty list")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str | int) or isinstance(item, bool):
                self.err(
                    f"{join_key(key, name)}[{i}]",
                    f"must be a string or number, not {kind_of(item)}",
                )
            else:
                out.append(str(item))
        return out


def join_key(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def file_path(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else base / p


def opt_file_path(c: Checker, m: dict[str, Any], key: str, name: str, base: Path) -> Path | None:
    text = c.typed(m, key, name, str, None)
    return file_path(base, text) if text else None
