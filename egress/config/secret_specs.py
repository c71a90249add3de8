"""The ``secrets:`` entries and their sources."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from egress.config.checker import Checker, file_path
from egress.config.model import (
    _ENV_NAME,
    _PLACEHOLDER,
    _SECRET_NAME,
    SURFACES,
    VAULT_ENGINES,
    Rule,
    SecretSpec,
    SourceSpec,
    auto_placeholder,
    default_placeholder,
)
from egress.config.rules import covers
from egress.grammar import fold_name
from egress.hostnames import HostPattern, parse_host_pattern


def _parse_vault_source(c: Checker, node: Any, key: str) -> SourceSpec | None:
    m = c.mapping(node, key, ("mount", "path", "key", "engine"), ("path", "key"))
    if m is None:
        return None
    engine = c.choice(m, key, "engine", VAULT_ENGINES, "kv2")
    if engine is None:
        return None
    path = c.typed(m, key, "path", str, None)
    secret_key = c.typed(m, key, "key", str, None)
    mount = c.typed(m, key, "mount", str, None)
    if engine == "read" and mount is not None:
        c.err(f"{key}.mount", "goes with kv2/kv1 only; for engine 'read' give the full path")
    if path is not None and (not path.strip("/") or path != path.strip()):
        c.err(f"{key}.path", f"{path!r} is not a Vault path")
        return None
    if path is None or secret_key is None:
        return None
    if engine != "read":
        mount = (mount or ("secret" if engine == "kv2" else "kv")).strip("/")
    return SourceSpec(
        kind="vault", key=secret_key, mount=mount, path=path.strip("/"), engine=engine
    )


def _parse_source(c: Checker, node: Any, key: str, base: Path) -> SourceSpec | None:
    m = c.mapping(node, key, ("env", "file", "key", "vault"))
    if m is None:
        return None
    kinds = [k for k in ("env", "file", "vault") if k in m]
    if len(kinds) != 1:
        c.err(
            key, "give exactly one of 'env: VAR', 'file: PATH' (with 'key: NAME') or 'vault: {...}'"
        )
        return None
    if kinds[0] == "vault":
        if "key" in m:
            c.err(f"{key}.key", "goes inside 'vault:' for a Vault source")
        return _parse_vault_source(c, m["vault"], f"{key}.vault")
    if kinds[0] == "env":
        var = c.typed(m, key, "env", str, None)
        if "key" in m:
            c.err(f"{key}.key", "only goes with 'file'")
        if var is None or not _ENV_NAME.match(var):
            c.err(f"{key}.env", "must name an environment variable")
            return None
        return SourceSpec(kind="env", env=var)
    path = c.typed(m, key, "file", str, None)
    secret_key = c.typed(m, key, "key", str, None)
    if secret_key is None:
        c.err(f"{key}.key", "is required with 'file': the key of the secret in that file")
    if path is None or secret_key is None:
        return None
    return SourceSpec(kind="file", file=file_path(base, path), key=secret_key)


def parse_secret(c: Checker, node: Any, i: int, base: Path, rules: list[Rule]) -> SecretSpec | None:
    key = f"secrets[{i}]"
    known = (
        "name", "source", "hosts", "placeholder", "placeholder_prefix", "placeholder_length", "env",
        "inject", "body_max_bytes", "allow_http", "required", "require_placeholder", "auth_headers",
        "allow_unscrubbable", "netrc",
    )  # fmt: skip
    m = c.mapping(node, key, known, ("name", "source", "hosts"))
    if m is None:
        return None
    start = len(c.problems)
    name = c.typed(m, key, "name", str, None)
    if name is not None and not _SECRET_NAME.match(name):
        c.err(f"{key}.name", f"{name!r}: use letters, digits and '_' (starting with a letter)")
    source = _parse_source(c, m.get("source"), f"{key}.source", base) if "source" in m else None
    hosts: list[HostPattern] = []
    for j, h in enumerate(c.str_list(m, key, "hosts") or []):
        try:
            pattern = parse_host_pattern(h)
        except ValueError as e:
            c.err(f"{key}.hosts[{j}]", str(e))
            continue
        if not any(covers(r.host, pattern) for r in rules):
            c.err(
                f"{key}.hosts[{j}]",
                f"{pattern.text!r} is not allowed by any rule under 'allow': "
                f"add '- host: {pattern.text}' there, or bind the secret to an allowed host",
            )
        hosts.append(pattern)
    placeholder = c.typed(m, key, "placeholder", str, None)
    prefix = c.typed(m, key, "placeholder_prefix", str, "")
    length = c.typed(m, key, "placeholder_length", int, 40)
    if ("placeholder_prefix" in m or "placeholder_length" in m) and placeholder != "auto":
        c.err(
            f"{key}.placeholder",
            "placeholder_prefix and placeholder_length go with 'placeholder: auto'",
        )
    if placeholder == "auto":
        if not 16 <= length <= 256 or len(prefix) > length - 16:
            c.err(
                f"{key}.placeholder_length",
                "must be 16-256 and leave at least 16 random characters after the prefix",
            )
        placeholder = auto_placeholder(prefix, length)
    if placeholder is None and name is not None:
        placeholder = default_placeholder(name)
    elif placeholder is not None and not _PLACEHOLDER.match(placeholder):
        c.err(
            f"{key}.placeholder",
            "must be 8-256 characters from A-Z a-z 0-9 . _ ~ - (so that it survives every "
            "request surface unencoded)",
        )
    env = c.typed(m, key, "env", str, None)
    if env is not None and not _ENV_NAME.match(env):
        c.err(f"{key}.env", f"{env!r} is not an environment variable name")
    surfaces = c.str_list(m, key, "inject") or ["headers"]
    for j, s in enumerate(surfaces):
        if s not in SURFACES:
            near = difflib.get_close_matches(s, SURFACES, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"use {', '.join(SURFACES)}"
            c.err(f"{key}.inject[{j}]", f"{s!r} is not a surface: {hint}")
    body_max = c.typed(m, key, "body_max_bytes", int, 1024 * 1024)
    if body_max is not None and body_max <= 0:
        c.err(f"{key}.body_max_bytes", "must be positive")
    allow_http = c.typed(m, key, "allow_http", bool, False)
    required = c.typed(m, key, "required", bool, True)
    auth_headers = [
        fold_name(h) for h in c.str_list(m, key, "auth_headers") or ["authorization", "x-api-key"]
    ]
    if len(c.problems) > start or name is None or source is None or placeholder is None:
        return None
    return SecretSpec(
        index=i,
        name=name,
        source=source,
        hosts=tuple(hosts),
        placeholder=placeholder,
        env=env,
        surfaces=frozenset(surfaces),
        body_max_bytes=body_max,
        allow_http=allow_http,
        required=required,
        require_placeholder=c.typed(m, key, "require_placeholder", bool, True),
        auth_headers=tuple(auth_headers),
        allow_unscrubbable=c.typed(m, key, "allow_unscrubbable", bool, False),
        netrc=c.typed(m, key, "netrc", bool, False),
    )


def check_secret_set(c: Checker, secrets: list[SecretSpec]) -> None:
    seen_names: dict[str, int] = {}
    seen_env: dict[str, int] = {}
    for s in secrets:
        if s.name.lower() in seen_names:
            c.err(
                f"secrets[{s.index}].name",
                f"{s.name!r} is already used by secrets[{seen_names[s.name.lower()]}]",
            )
        seen_names.setdefault(s.name.lower(), s.index)
        if s.env:
            if s.env in seen_env:
                c.err(
                    f"secrets[{s.index}].env",
                    f"{s.env!r} is already used by secrets[{seen_env[s.env]}]",
                )
            seen_env.setdefault(s.env, s.index)
        for o in secrets:
            if o is not s and s.placeholder in o.placeholder:
                c.err(
                    f"secrets[{s.index}].placeholder",
                    f"is contained in the placeholder of secrets[{o.index}] ({o.name}): "
                    "placeholders must not overlap",
                )
