"""Loading a config: the top-level sections, includes, and the file's own checks.

Validation collects every problem in the file (and the files it includes) and reports each
as ``<file>: <key path>: <what is wrong>``; unknown keys are errors with a suggestion.
Paths in a file are relative to that file's own folder.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from egress.config.agents_spec import (
    check_grants,
    check_locked,
    parse_agents,
    parse_groups,
    parse_identity,
    parse_locked,
)
from egress.config.audit_spec import parse_audit
from egress.config.checker import Checker, file_path, opt_file_path
from egress.config.dlp_spec import parse_dlp
from egress.config.includes import (
    Document,
    Item,
    gather,
    key_lines,
    load_yaml,
    merge_secrets,
    merged_list,
    origins,
    read_document,
    relocate,
)
from egress.config.listen_spec import parse_listen_tls
from egress.config.model import (
    EMBEDDED_DEFAULT,
    AdminConfig,
    CaPki,
    Config,
    Limits,
    ReloadConfig,
    Rule,
    SecretSpec,
)
from egress.config.rules import parse_rule
from egress.config.secret_specs import check_secret_set, parse_secret
from egress.config.tripwire_spec import parse_tripwires
from egress.config.vault_spec import parse_vault
from egress.errors import ConfigError, ConfigProblem, InvalidHost
from egress.hostnames import IPNetwork, canonical_host, is_ip

TOP_KEYS = (
    "mode", "include", "listen", "admin", "agent", "ca", "upstream", "allow", "secrets",
    "vault", "audit", "limits", "workers", "identity", "agents", "groups", "locked", "reload", "dlp",
    "tripwires",
)  # fmt: skip
MAX_WORKERS = 256


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_port(c: Checker, m: dict[str, Any], key: str, default_port: int) -> tuple[str, int]:
    """A listener's host (an IP address, default loopback) and port (0 picks a free one)."""
    host = c.typed(m, key, "host", str, "127.0.0.1")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        c.err(f"{key}.host", f"{host!r} must be an IP address (e.g. 127.0.0.1)")
    port = c.typed(m, key, "port", int, default_port)
    if not 0 <= port < 65536:
        c.err(f"{key}.port", f"{port} is not a port number (0 picks a free port)")
    return host, port


def check_workers(value: object) -> str | None:
    """What is wrong with a ``workers`` value (None: nothing). Shared with ``--workers``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return (f"must be a whole number of proxy processes such as 2, not {value!r}; leave "
                "it out for one per CPU this process may use")  # fmt: skip
    if value < 1:
        return (f"{value} is not a number of proxy processes: give 1 or more, or leave it "
                "out for one per CPU this process may use")  # fmt: skip
    if value > MAX_WORKERS:
        return (f"{value} is too many (at most {MAX_WORKERS}); more processes than CPUs only "
                "add memory: leave it out for one per CPU this process may use")  # fmt: skip
    return None


def parse_workers(c: Checker, top: dict[str, Any]) -> int | None:
    """``workers: N``: proxy processes on the one listening port (egress.workers); absent or
    null, one per CPU this process may use."""
    value = top.get("workers")
    if value is None:
        return None
    problem = check_workers(value)
    if problem:
        c.err("workers", problem)
        return None
    return int(value)


def parse(data: Any, file: str, base: Path, lines: dict[str, int] | None = None) -> Config:
    """Validate parsed YAML (``lines``: each key path's line, for findings). Raises
    ConfigError listing every problem."""
    return _parse(Document(file, base, data, lines or {}))


def _parse(main: Document) -> Config:
    c = Checker()
    file, base = main.file, main.base
    top = c.mapping(main.data, "", TOP_KEYS)
    if top is None:
        raise ConfigError(file, c.problems)
    docs = [main, *gather(c, main)]

    listen = c.mapping(top.get("listen"), "listen", ("host", "port", "mode", "tls")) or {}
    listen_mode = c.choice(listen, "listen", "mode", ("explicit", "transparent"), "explicit")
    transparent = listen_mode == "transparent"
    listen_host, listen_port = _host_port(c, listen, "listen", 15001 if transparent else 8080)
    raw_identity = top.get("identity")
    by_source = isinstance(raw_identity, dict) and raw_identity.get("source_addresses") is True
    if transparent and _is_ip(listen_host) and not ipaddress.ip_address(listen_host).is_loopback:
        # The kernel's REDIRECT (nat OUTPUT) sends to loopback; any other address would let
        # other machines use the proxy, and its secrets, by connecting to it directly. On a
        # shared node (PREROUTING) egress serves only the sources its agents are known by.
        if not by_source:
            c.err("listen.host", f"{listen_host!r}: in transparent mode egress listens on "
                  "loopback only (127.0.0.1 or ::1), where a sidecar's redirect rules send the "
                  "agent's traffic; on a shared node, identify agents by identity.source_addresses "
                  "and egress serves those sources only")  # fmt: skip

    listen_tls = parse_listen_tls(c, listen["tls"], base, transparent) if "tls" in listen else None

    ca = c.mapping(top.get("ca"), "ca", ("cert_path", "validity_hours", "vault_pki")) or {}
    cert_path = file_path(base, c.typed(ca, "ca", "cert_path", str, "egress-ca.pem"))
    validity = c.typed(ca, "ca", "validity_hours", int, 24)
    if not 1 <= validity <= 24 * 31:
        c.err("ca.validity_hours", f"{validity} must be between 1 and 744 (31 days)")
    ca_pki = parse_ca_pki(c, ca.get("vault_pki")) if "vault_pki" in ca else None

    up = (
        c.mapping(top.get("upstream"), "upstream", ("ca_files", "resolve", "allow_private", "dns"))
        or {}
    )
    dns = c.choice(up, "upstream", "dns", ("system", "static"), "system") or "system"
    ca_files: list[Path] = []
    for j, f in enumerate(c.str_list(up, "upstream", "ca_files", allow_empty=True) or []):
        p = file_path(base, f)
        if not p.is_file():
            c.err(f"upstream.ca_files[{j}]", f"{str(p)!r} does not exist or is not a file")
        elif b"-----BEGIN CERTIFICATE-----" not in p.read_bytes():
            c.err(f"upstream.ca_files[{j}]", f"{str(p)!r} holds no PEM certificate")
        ca_files.append(p)
    resolve: dict[str, tuple[str, ...]] = {}
    res = c.mapping(up.get("resolve"), "upstream.resolve", tuple(up.get("resolve") or ()))
    for name, addrs in (res or {}).items():
        k = f"upstream.resolve.{name}"
        try:
            canon = canonical_host(str(name))
            if is_ip(canon):
                raise InvalidHost("give a host name here, not an address")
        except InvalidHost as e:
            c.err(k, str(e))
            continue
        answers = addrs if isinstance(addrs, list) else [addrs]
        try:
            resolve[canon] = tuple(str(ipaddress.ip_address(str(a))) for a in answers)
        except ValueError:
            c.err(k, f"{addrs!r} is not an IP address (or a list of them)")
        if not answers:
            c.err(k, "give at least one address")
    allow_private: list[IPNetwork] = []
    for j, cidr in enumerate(c.str_list(up, "upstream", "allow_private", allow_empty=True) or []):
        try:
            allow_private.append(ipaddress.ip_network(cidr))
        except ValueError:
            c.err(
                f"upstream.allow_private[{j}]",
                f"{cidr!r} is not an address range such as 10.1.0.0/16",
            )

    # Rules and secrets of the file and its includes, in one list each (egress.config.includes).
    rule_items = merged_list(c, docs, "allow")
    rules: list[Rule] = []
    for i, item in enumerate(rule_items):
        rule = parse_rule(c, item.node, i)
        if rule is not None and item.doc is not main:
            origin = item.doc.origin(item.key)
            rule = replace(
                rule, origin=f"{origin.file}:{origin.line}" if origin.line else origin.file
            )
        if rule is not None:
            rules.append(rule)

    mode = c.choice(top, "", "mode", ("enforce", "report"), "enforce") or "enforce"
    groups = parse_groups(c, top.get("groups"))
    if groups and "agents" not in top:
        c.err("groups", "groups serve agents: define them under agents: (agents[i].groups)")
    agents = parse_agents(c, top.get("agents"), base, mode, groups)
    identity = parse_identity(c, top.get("identity"), agents, listen_mode or "explicit", listen_tls)
    locked = parse_locked(c, top.get("locked"))
    if locked.hosts is not None and "agents" not in top:
        c.err("locked.hosts", "limits what agents' and groups' rules may name, and there are "
              "no agents: define them under agents:, or use locked.deny")  # fmt: skip
    check_locked(c, locked, agents, groups)
    agent_rules = [r for a in agents for r in a.rules] + [r for g in groups for r in g.rules]

    secret_items = merge_secrets(c, merged_list(c, docs, "secrets"), main)
    secrets: list[SecretSpec] = []
    for i, item in enumerate(secret_items):
        spec = parse_secret(c, item.node, i, item.doc.base, rules + agent_rules)
        if spec is not None:
            secrets.append(spec)
    check_secret_set(c, secrets)
    check_grants(c, agents, [s.name for s in secrets], groups)

    audit = parse_audit(c, top.get("audit"), base)

    limits_node = c.mapping(top.get("limits"), "limits", tuple(Limits.__dataclass_fields__)) or {}
    limit_values: dict[str, int] = {}
    for name, f in Limits.__dataclass_fields__.items():
        value = c.typed(limits_node, "limits", name, int, f.default)
        if value is not None and value <= 0:
            c.err(f"limits.{name}", "must be positive")
        limit_values[name] = value if value is not None else f.default
    limits = Limits(**limit_values)

    agent = c.mapping(top.get("agent"), "agent", ("dir", "proxy_url")) or {}
    agent_dir = opt_file_path(c, agent, "agent", "dir", base)
    agent_proxy_url = c.typed(agent, "agent", "proxy_url", str, None)
    if agent_proxy_url is not None and not re.match(r"^http://[^\s'\"]+$", agent_proxy_url):
        c.err(
            "agent.proxy_url",
            f"{agent_proxy_url!r} must be an http:// URL such as http://127.0.0.1:8080",
        )
    admin = None
    if "admin" in top:
        a = c.mapping(top["admin"], "admin", ("host", "port", "drain_seconds")) or {}
        admin_host, admin_port = _host_port(c, a, "admin", 9901)
        drain = c.typed(a, "admin", "drain_seconds", int, 5)
        if drain < 0:
            c.err("admin.drain_seconds", "must be 0 or more")
        admin = AdminConfig(admin_host, admin_port, drain)
    workers = parse_workers(c, top)
    vault = parse_vault(c, top.get("vault"), base)
    needs_vault = ca_pki is not None or any(s.source.kind == "vault" for s in secrets)
    if "vault" not in top and needs_vault:
        vault = parse_vault(c, {}, base)  # all from VAULT_* variables, token auth

    reload = parse_reload(c, top)
    dlp = parse_dlp(c, top.get("dlp"), {a.name for a in agents} if agents else None)
    tripwires = parse_tripwires(c, top.get("tripwires"), {s.name for s in secrets},
                                {s.placeholder for s in secrets})  # fmt: skip
    items: dict[str, list[Item]] = {"allow": rule_items, "secrets": secret_items}
    if c.problems:
        raise ConfigError(file, relocate(c.problems, items, file))
    return Config(
        path=file,
        listen_host=listen_host,
        listen_port=listen_port,
        listen_mode=listen_mode or "explicit",
        ca_cert_path=cert_path,
        ca_validity_hours=validity,
        upstream_ca_files=tuple(ca_files),
        resolve=resolve,
        allow_private=tuple(allow_private),
        dns=dns,
        rules=tuple(rules),
        secrets=tuple(secrets),
        audit_path=audit.path,
        audit_format=audit.format,
        audit_syslog=audit.syslog,
        audit_otlp=audit.otlp,
        ca_vault_pki=ca_pki,
        listen_tls=listen_tls,
        limits=limits,
        mode=mode,
        admin=admin,
        workers=workers,
        agent_dir=agent_dir,
        agent_proxy_url=agent_proxy_url,
        vault=vault if "vault" in top or needs_vault else None,
        origins=origins(main, items),
        agents=tuple(agents),
        identity=identity,
        groups=tuple(groups),
        locked=locked,
        reload=reload,
        dlp=dlp,
        tripwires=tripwires,
        files=tuple(d.path for d in docs if d.path is not None),
        sha256=hashlib.sha256(b"".join(d.raw for d in docs)).hexdigest(),
    )


_MOUNT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_ISSUER = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_ca_pki(c: Checker, node: Any) -> CaPki | None:
    """ca.vault_pki: which Vault/OpenBao PKI issuer signs egress's CA (docs/gateway.md)."""
    k = "ca.vault_pki"
    n = c.mapping(node, k, ("mount", "issuer"), required=("mount",))
    if n is None:
        return None
    mount = c.typed(n, k, "mount", str, "")
    issuer = c.typed(n, k, "issuer", str, "default")
    ok = True
    if "mount" in n and (not _MOUNT.match(mount) or ".." in mount.split("/")):
        c.err(f"{k}.mount", f"{mount!r} must be a mount path such as pki or pki/egress "
              "(no leading or trailing '/')")  # fmt: skip
        ok = False
    if not _ISSUER.match(issuer) or issuer in (".", ".."):
        c.err(f"{k}.issuer", f"{issuer!r} must be an issuer's name or ID, or default")
        ok = False
    return CaPki(mount, issuer) if ok and mount else None


def parse_reload(c: Checker, top: dict[str, Any]) -> ReloadConfig:
    node = c.mapping(top.get("reload"), "reload", ("watch", "interval_seconds")) or {}
    watch = c.typed(node, "reload", "watch", bool, True)
    interval = c.typed(node, "reload", "interval_seconds", (int, float), 2.0)
    if not 0.2 <= interval <= 3600:
        c.err("reload.interval_seconds", f"{interval} must be between 0.2 and 3600 seconds")
        interval = 2.0
    return ReloadConfig(bool(watch), float(interval))


def load(path: str | os.PathLike[str]) -> Config:
    """Load and validate a config file (and the files it includes)."""
    file = str(path)
    doc = read_document(Path(path), file)
    if isinstance(doc, ConfigProblem):
        raise ConfigError(file, [doc])
    if not doc.data:
        raise ConfigError(file, [ConfigProblem("", "the file is empty")])
    return _parse(doc)


def load_default() -> Config:
    """The embedded default config: common developer hosts, secrets from a local file."""
    raw = resources.files("egress").joinpath("data/default.yaml").read_bytes()
    text = raw.decode("utf-8")
    data = load_yaml(text, EMBEDDED_DEFAULT)
    return _parse(Document(EMBEDDED_DEFAULT, Path.cwd(), data, key_lines(text), None, raw))


def load_or_default(path: str | None) -> Config:
    return load(path) if path else load_default()
