"""The ``secrets:`` entries and their sources."""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
from pathlib import Path
from typing import Any

from egress.config.aws_spec import (
    AGENT_SECRET_KEY,
    AWS_PLACEHOLDER,
    default_aws_placeholder,
    parse_aws,
)
from egress.config.checker import Checker, file_path
from egress.config.hmac_spec import parse_hmac
from egress.config.mint_spec import parse_mint
from egress.config.model import (
    _ENV_NAME,
    _PLACEHOLDER,
    _SECRET_NAME,
    MINT_ROLES,
    SCHEME_ROLES,
    SECRET_SCHEMES,
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


def _parse_keys(c: Checker, node: Any, key: str) -> tuple[tuple[str, str], ...] | None:
    """``keys: {role: key}``: the parts of a multi-part secret (scheme aws_sigv4) in one
    file or Vault secret (or ``env: {role: VAR}``); parse_secret checks the roles."""
    if not isinstance(node, dict) or not node:
        c.err(key, "must be a non-empty mapping of role: name (e.g. access_key_id: access_key)")
        return None
    out = []
    for role, name in node.items():
        if not isinstance(name, str) or not name:
            c.err(f"{key}.{role}", "must be a name (a string)")
            return None
        out.append((str(role), name))
    return tuple(out)


def _one_key(
    c: Checker, m: dict[str, Any], key: str, what: str
) -> tuple[str | None, tuple[tuple[str, str], ...]] | None:
    """Exactly one of ``key: NAME`` (one value) and ``keys: {role: NAME}`` (several)."""
    if "key" in m and "keys" in m:
        c.err(f"{key}.keys", "give 'key' (one value) or 'keys' (several parts), not both")
        return None
    if "keys" in m:
        keys = _parse_keys(c, m["keys"], f"{key}.keys")
        return None if keys is None else (None, keys)
    if "key" not in m:
        c.err(
            f"{key}.key",
            f"is required with {what}: the key of the secret (or 'keys' for several parts)",
        )
        return None
    secret_key = c.typed(m, key, "key", str, None)
    return None if secret_key is None else (secret_key, ())


def _parse_vault_source(c: Checker, node: Any, key: str) -> SourceSpec | None:
    m = c.mapping(node, key, ("mount", "path", "key", "keys", "engine"), ("path",))
    if m is None:
        return None
    engine = c.choice(m, key, "engine", VAULT_ENGINES, "kv2")
    if engine is None:
        return None
    path = c.typed(m, key, "path", str, None)
    chosen = _one_key(c, m, key, "a Vault source")
    mount = c.typed(m, key, "mount", str, None)
    if engine == "read" and mount is not None:
        c.err(f"{key}.mount", "goes with kv2/kv1 only; for engine 'read' give the full path")
    if path is not None and (not path.strip("/") or path != path.strip()):
        c.err(f"{key}.path", f"{path!r} is not a Vault path")
        return None
    if path is None or chosen is None:
        return None
    if engine != "read":
        mount = (mount or ("secret" if engine == "kv2" else "kv")).strip("/")
    return SourceSpec(
        kind="vault",
        key=chosen[0],
        keys=chosen[1],
        mount=mount,
        path=path.strip("/"),
        engine=engine,
    )


def _parse_source(c: Checker, node: Any, key: str, base: Path) -> SourceSpec | None:
    m = c.mapping(node, key, ("env", "file", "key", "keys", "vault"))
    if m is None:
        return None
    kinds = [k for k in ("env", "file", "vault") if k in m]
    if len(kinds) != 1:
        c.err(
            key, "give exactly one of 'env: VAR', 'file: PATH' (with 'key: NAME') or 'vault: {...}'"
        )
        return None
    if kinds[0] == "vault":
        for k in ("key", "keys"):
            if k in m:
                c.err(f"{key}.{k}", "goes inside 'vault:' for a Vault source")
        return _parse_vault_source(c, m["vault"], f"{key}.vault")
    if kinds[0] == "env":
        for k in ("key", "keys"):
            if k in m:
                c.err(f"{key}.{k}", "only goes with 'file' (several variables: env: {role: VAR})")
        if isinstance(m["env"], dict):  # several parts, one variable each
            keys = _parse_keys(c, m["env"], f"{key}.env")
            if keys is None:
                return None
            bad = [var for _, var in keys if not _ENV_NAME.match(var)]
            if bad:
                c.err(f"{key}.env", f"{bad[0]!r} is not an environment variable name")
                return None
            return SourceSpec(kind="env", keys=keys)
        var = c.typed(m, key, "env", str, None)
        if var is None or not _ENV_NAME.match(var):
            c.err(f"{key}.env", "must name an environment variable")
            return None
        return SourceSpec(kind="env", env=var)
    path = c.typed(m, key, "file", str, None)
    chosen = _one_key(c, m, key, "'file'")
    if path is None or chosen is None:
        return None
    return SourceSpec(kind="file", file=file_path(base, path), key=chosen[0], keys=chosen[1])


def parse_secret(c: Checker, node: Any, i: int, base: Path, rules: list[Rule]) -> SecretSpec | None:
    key = f"secrets[{i}]"
    known = (
        "name", "source", "hosts", "placeholder", "placeholder_prefix", "placeholder_length", "env",
        "inject", "body_max_bytes", "allow_http", "required", "require_placeholder", "auth_headers",
        "allow_unscrubbable", "netrc", "scheme", "aws", "mint", "hmac", "azure",
    )  # fmt: skip
    m = c.mapping(node, key, known, ("name", "source", "hosts"))
    if m is None:
        return None
    start = len(c.problems)
    name = c.typed(m, key, "name", str, None)
    if name is not None and not _SECRET_NAME.match(name):
        c.err(f"{key}.name", f"{name!r}: use letters, digits and '_' (starting with a letter)")
    scheme = c.choice(m, key, "scheme", SECRET_SCHEMES, "static")
    source = _parse_source(c, m.get("source"), f"{key}.source", base) if "source" in m else None
    mint = None
    if "mint" in m:
        if scheme != "static":
            c.err(f"{key}.mint", f"goes with scheme static only, not {scheme!r}")
        mint = parse_mint(c, m["mint"], f"{key}.mint", base)
    if source is not None and scheme is not None:
        _check_roles(c, source, mint.type if mint else scheme, f"{key}.source")
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
    auto: tuple[str, int] | None = None
    if placeholder == "auto":
        if not 16 <= length <= 256 or len(prefix) > length - 16:
            c.err(
                f"{key}.placeholder_length",
                "must be 16-256 and leave at least 16 random characters after the prefix",
            )
        placeholder = auto_placeholder(prefix, length)
        auto = (prefix, length)
    if placeholder is None and name is not None:
        placeholder = (default_aws_placeholder(name) if scheme == "aws_sigv4"
                       else default_azure_placeholder(name) if scheme == "azure_shared_key"
                       else default_placeholder(name))  # fmt: skip
    elif scheme == "azure_shared_key" and placeholder is not None:
        if not re.fullmatch(
            r"(?:[A-Za-z0-9+/]{4}){4,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", placeholder
        ):
            c.err(f"{key}.placeholder", "an azure_shared_key placeholder is the account key the "
                  "agent's SDK signs with: base64 of at least 12 bytes")  # fmt: skip
    elif scheme == "aws_sigv4" and placeholder is not None:
        if not AWS_PLACEHOLDER.match(placeholder):
            c.err(
                f"{key}.placeholder",
                "an aws_sigv4 placeholder is the access key id the agent signs with: 16-128 "
                "upper-case letters and digits (e.g. AKIAEGRESS0000000001)",
            )
    elif placeholder is not None and not _PLACEHOLDER.match(placeholder):
        c.err(
            f"{key}.placeholder",
            "must be 8-256 characters from A-Z a-z 0-9 . _ ~ - (so that it survives every "
            "request surface unencoded)",
        )
    env, agent_env = _parse_env(c, m, key, scheme)
    if scheme in ("aws_sigv4", "hmac", "azure_shared_key"):
        for k in ("inject", "body_max_bytes", "auth_headers", "netrc"):
            if k in m:
                c.err(f"{key}.{k}", f"does not go with scheme {scheme}: egress signs the "
                      "request, it substitutes nothing")  # fmt: skip
    for block, owner in (("aws", "aws_sigv4"), ("hmac", "hmac"), ("azure", "azure_shared_key")):
        if block in m and scheme != owner:
            c.err(f"{key}.{block}", f"goes with 'scheme: {owner}' only")
    if scheme == "hmac" and "hmac" not in m:
        c.err(f"{key}.hmac", "is required with scheme hmac: at least {header: NAME}")
    aws = parse_aws(c, m.get("aws"), f"{key}.aws") if scheme == "aws_sigv4" else None
    hmac_spec = (
        parse_hmac(c, m["hmac"], f"{key}.hmac") if scheme == "hmac" and "hmac" in m else None
    )
    azure_account = None
    if scheme == "azure_shared_key":
        a = c.mapping(m.get("azure"), f"{key}.azure", ("account", "other_hosts"), ("account",))
        azure_account = c.typed(a, f"{key}.azure", "account", str, None) if a is not None else None
        if azure_account is not None and not re.fullmatch(r"[a-z0-9]{3,24}", azure_account):
            c.err(f"{key}.azure.account", f"{azure_account!r} is not a storage account name "
                  "(3-24 lower-case letters and digits)")  # fmt: skip
        elif (
            azure_account is not None
            and a is not None
            and not c.typed(a, f"{key}.azure", "other_hosts", bool, False)
        ):
            # Shared Key does not cover the host: a signature made for any bound host works
            # at the account's own endpoints. Only those, unless said otherwise.
            for j, h in enumerate(c.str_list(m, key, "hosts") or []):
                own = re.match(
                    r"^([a-z0-9]{3,24})\.(?:blob|file|queue|table|dfs)(?:-secondary)?\.core\.windows\.net$",
                    h.lower(),
                )
                if own is None or own.group(1) != azure_account:
                    c.err(f"{key}.hosts[{j}]", f"{h!r} is not an endpoint of account {azure_account!r} "
                          f"({azure_account}.blob.core.windows.net...): a Shared Key signature made for it "
                          "works at the account's endpoints; for an emulator, a custom domain or a "
                          "private endpoint set azure.other_hosts: true")  # fmt: skip
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
    default_auth = (["authorization"] if scheme == "aws_sigv4"
                    else [hmac_spec.header] if hmac_spec else ["authorization", "x-api-key"])  # fmt: skip
    auth_headers = [fold_name(h) for h in c.str_list(m, key, "auth_headers") or default_auth]
    if scheme == "azure_shared_key":
        auth_headers = []  # its Authorization names the account, not the placeholder
    if len(c.problems) > start or name is None or source is None or placeholder is None:
        return None
    assert scheme is not None
    return SecretSpec(
        index=i,
        name=name,
        source=source,
        hosts=tuple(hosts),
        placeholder=placeholder,
        placeholder_auto=auto,
        env=env,
        surfaces=frozenset(surfaces),
        body_max_bytes=body_max,
        allow_http=allow_http,
        required=required,
        require_placeholder=c.typed(m, key, "require_placeholder", bool, True),
        auth_headers=tuple(auth_headers),
        allow_unscrubbable=c.typed(m, key, "allow_unscrubbable", bool, False),
        netrc=c.typed(m, key, "netrc", bool, False),
        scheme=scheme,
        aws=aws,
        hmac=hmac_spec,
        azure_account=azure_account,
        agent_env=agent_env,
        mint=mint,
    )


def default_azure_placeholder(name: str) -> str:
    """A base64 account key (the SDKs decode it to sign), the same for the same name."""
    return base64.b64encode(
        hashlib.sha256(f"egress-azure-placeholder-{name}".encode()).digest()
    ).decode()


def _check_roles(c: Checker, source: SourceSpec, scheme: str, key: str) -> None:
    """A multi-part scheme (or mint type) reads its parts with ``keys``; a plain secret reads
    one value. ``scheme``: the secret's scheme, or its mint type when it mints."""
    roles_of = {**SCHEME_ROLES, **MINT_ROLES}
    if scheme not in roles_of:
        if source.keys:
            c.err(f"{key}.keys" if source.kind != "env" else f"{key}.env",
                  f"several parts go with aws_sigv4 and the OAuth mint types, not {scheme!r}: "
                  "give one 'key'")  # fmt: skip
        return
    required, optional = roles_of[scheme]
    where = f"{key}.env" if source.kind == "env" else f"{key}.keys"
    if not source.keys:
        example = ", ".join(f"{r}: ..." for r in required)
        c.err(where, f"scheme {scheme} reads several parts from its source: give "
              f"{'env' if source.kind == 'env' else 'keys'}: {{{example}}}")  # fmt: skip
        return
    roles = [r for r, _ in source.keys]
    for r in roles:
        if r not in required + optional:
            near = difflib.get_close_matches(r, required + optional, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"use {', '.join(required + optional)}"
            c.err(f"{where}.{r}", f"is not a part of scheme {scheme}: {hint}")
    for r in required:
        if r not in roles:
            c.err(f"{where}.{r}", f"is required by scheme {scheme}")


def _parse_env(
    c: Checker, m: dict[str, Any], key: str, scheme: str | None
) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The agent's variables: ``env: VAR`` holds the placeholder. For aws_sigv4 also
    ``env: {access_key_id: VAR, secret_access_key: VAR}``: the key id placeholder, and a
    dummy secret key for the agent's SDK to sign with."""
    node = m.get("env")
    if node is None:
        return None, ()
    if scheme == "aws_sigv4" and isinstance(node, dict):
        e = c.mapping(
            node, f"{key}.env", ("access_key_id", "secret_access_key"), ("access_key_id",)
        )
        if e is None:
            return None, ()
        names = {
            r: c.typed(e, f"{key}.env", r, str, None)
            for r in ("access_key_id", "secret_access_key")
        }
        for r, var in names.items():
            if var is not None and not _ENV_NAME.match(var):
                c.err(f"{key}.env.{r}", f"{var!r} is not an environment variable name")
        sk = names["secret_access_key"]
        return names["access_key_id"], ((sk, AGENT_SECRET_KEY),) if sk else ()
    env = c.typed(m, key, "env", str, None)
    if env is not None and not _ENV_NAME.match(env):
        c.err(f"{key}.env", f"{env!r} is not an environment variable name")
    return env, ()


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
