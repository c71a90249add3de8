"""``egress env``: the client setup of ``egress exec`` as shell code, for a shell that runs
next to ``egress run`` to eval (as ``ssh-agent -s`` does).

It reads the config only: no secret is loaded, so none can be printed. What it prints is
the proxy URL, the CA at ``ca.cert_path``, each secret's placeholder and the setup of
egress.clients. Its files (a wgetrc, a Java truststore) go to egress's state directory
(``$XDG_STATE_HOME/egress/env/``), not beside ``ca.cert_path``: that directory may be the
agent's shared one, which holds only what egress run puts there, and may not be writable
by the user of this shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import ipaddress
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from egress import config as config_mod
from egress.clients import Setup, Target, client_setup, write_files
from egress.config import Config, SecretSpec
from egress.errors import EgressError
from egress.localdev import state_dir

SHELLS = ("sh", "fish")


class EnvError(EgressError):
    pass


def add_arguments(p: argparse.ArgumentParser, cfg_help: str) -> None:
    p.add_argument("--config", "-c", help=cfg_help)
    p.add_argument(
        "--proxy-url", metavar="URL",
        help="the running proxy (default: http://<listen.host>:<listen.port> of the config)",
    )  # fmt: skip
    p.add_argument(
        "--shell", choices=SHELLS, default="sh",
        help="sh (also bash, zsh): eval \"$(egress env)\"; fish: egress env --shell fish | source",
    )  # fmt: skip


def proxy_url_of(cfg: Config) -> str:
    if cfg.listen_mode == "transparent":
        raise EnvError(f"{cfg.path}: listen.mode is transparent: clients set no proxy there")
    if cfg.listen_port == 0:
        raise EnvError(
            f"{cfg.path}: listen.port is 0 (a free port, chosen at start): pass --proxy-url "
            "with the address egress run printed"
        )
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(cfg.listen_host, cfg.listen_host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name
    return f"http://{host}:{cfg.listen_port}"


def check_proxy_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise EnvError(f"--proxy-url {url!r}: write it as http://HOST:PORT")
    return url.rstrip("/")


def known_placeholders(
    cfg: Config, again: Config, agent_env_file: Mapping[str, str]
) -> tuple[list[SecretSpec], list[str]]:
    """The secrets whose placeholder this process can know. ``placeholder: auto`` is drawn
    anew at every load (``cfg`` and ``again`` differ there): the running proxy's is only
    known from the env file it wrote into agent.dir; otherwise the secret is left out."""
    stable = {s.name: s.placeholder for s in again.secrets}
    specs, notes = [], []
    for spec in cfg.secrets:
        if stable.get(spec.name) == spec.placeholder:
            specs.append(spec)
        elif spec.env and spec.env in agent_env_file:
            specs.append(dataclasses.replace(spec, placeholder=agent_env_file[spec.env]))
        else:
            notes.append(
                f"secret {spec.name}: left out (placeholder: auto is drawn at each start; "
                "take it from egress run's banner)"
            )
    return specs, notes


def _read_env_file(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[name.strip()] = value.strip()
    return out


def render(env: Mapping[str, str], unset: list[str], shell: str) -> str:
    if shell == "fish":

        def q(v: str) -> str:
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

        lines = [f"set -e {name}" for name in unset]
        lines += [f"set -gx {k} {q(v)}" for k, v in env.items()]
    else:
        lines = [f"unset {name}" for name in unset]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def build(cfg: Config, again: Config, proxy_url: str, base: Mapping[str, str]) -> Setup:
    agent_file = cfg.agent_dir / "egress.env" if cfg.agent_dir else None
    secrets, notes = known_placeholders(cfg, again, _read_env_file(agent_file))
    ca = cfg.ca_cert_path
    ca_pem = ca.read_bytes() if ca.is_file() else b""
    if b"BEGIN CERTIFICATE" not in ca_pem:
        notes.append(
            f"{ca} does not hold a certificate yet (so Java gets no truststore): start egress "
            "run, then eval again"
        )
    key = hashlib.sha256(f"{ca}\n{proxy_url}".encode()).hexdigest()[:16]
    files_dir = state_dir(base) / "env" / key
    target = Target(proxy_url, str(ca), ca_pem if b"BEGIN CERTIFICATE" in ca_pem else None,
                    files_dir, tuple(secrets), cfg.rules)  # fmt: skip
    setup = client_setup(target, base)
    write_files(files_dir, setup.files)
    for spec in secrets:
        if spec.env:
            setup.env[spec.env] = spec.placeholder
        setup.env.update(spec.agent_env)
    for canary in cfg.tripwires.canaries if cfg.tripwires else ():
        if canary.env:
            setup.env[canary.env] = canary.value  # a planted canary (docs/tripwires.md)
    setup.env["EGRESS_PROXY_URL"] = proxy_url
    setup.notes[:0] = notes
    return setup


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.load_or_default(args.config)
    again = config_mod.load_or_default(args.config)
    proxy_url = check_proxy_url(args.proxy_url) if args.proxy_url else proxy_url_of(cfg)
    setup = build(cfg, again, proxy_url, os.environ)
    for note in setup.notes:
        print(f"egress: {note}", file=sys.stderr)
    sys.stdout.write(render(setup.env, setup.unset, args.shell))
    return 0
