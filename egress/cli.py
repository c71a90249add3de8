"""The egress command line: run, exec, env, check, review, learn, redirect."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egress import __version__
from egress import config as config_mod
from egress.audit import AuditWriter

# CA_ENV_VARS, NO_PROXY_VALUE and PROXY_ENV_VARS are re-exported from egress.clients.
from egress.clients import (  # noqa: F401
    CA_ENV_VARS,
    NO_PROXY_VALUE,
    PROXY_ENV_VARS,
    Target,
    client_setup,
    write_files,
)
from egress.config import Config
from egress.errors import EgressError
from egress.runtime import Runtime

if TYPE_CHECKING:
    from egress.admin import TripwireAdmin
    from egress.reload import Triggers
    from egress.workers import Supervisor

log = logging.getLogger("egress")


def agent_env(
    base: Mapping[str, str], proxy_url: str, ca_path: str, cfg: Config, rt: Runtime
) -> dict[str, str]:
    """The environment of the command ``egress exec`` runs: every common client set up to go
    through the proxy and trust its CA (egress.clients; files in the private directory),
    each secret's placeholder in its variable, and no real secret anywhere."""
    from egress.encodings import find

    forms = rt.forms()
    consumed = secret_env_vars(cfg, rt)
    # Drop every variable that holds a secret in any form, e.g. inside a URL's userinfo.
    env = {
        k: v for k, v in base.items()
        if k not in consumed and find(v.encode("utf-8", "surrogateescape"), forms) is None
    }  # fmt: skip
    target = Target(proxy_url, ca_path, rt.ca.trust_pem(), rt.private_dir, cfg.secrets, cfg.rules)
    setup = client_setup(target, env)
    write_files(rt.private_dir, setup.files)
    for var in setup.unset:
        env.pop(var, None)
    env.update(setup.env)
    for spec in cfg.secrets:
        if spec.env:
            env[spec.env] = spec.placeholder
        env.update(spec.agent_env)  # e.g. the dummy AWS secret key; never a secret
    for canary in cfg.tripwires.canaries if cfg.tripwires else ():
        if canary.env:
            env[canary.env] = canary.value  # planted: sending it anywhere trips the wire
    env["EGRESS_PROXY_URL"] = proxy_url
    return env


def secret_env_vars(cfg: Config, rt: Runtime) -> set[str]:
    """Variables of egress's own environment that hold secret material: secret sources
    and the Vault token egress logs in with."""
    names = set(rt.secrets.env_vars_consumed())
    if (
        cfg.vault is not None
        and cfg.vault.auth.method == "token"
        and cfg.vault.auth.token_file is None
    ):
        names.add(cfg.vault.auth.token_env or "VAULT_TOKEN")
    for agent in cfg.agents:  # agents' proxy credentials (their digests are kept)
        if agent.token is not None and agent.token.env:
            names.add(agent.token.env)
    return names


def protect_process(cfg: Config, rt: Runtime) -> None:
    """Once secrets are loaded: no same-user process may read them out of this one
    (egress.hardening), and their variables leave the environment (and so CMD's)."""
    from egress.hardening import make_undumpable

    if not make_undumpable():
        print("egress: warning: this system does not let egress make its memory unreadable to "
              "processes of the same user; see docs/secrets.md", file=sys.stderr)  # fmt: skip
    scrub_secret_env(cfg, rt)


def scrub_secret_env(cfg: Config, rt: Runtime) -> None:
    """The variables secrets and tokens were read from leave the environment: at start, and
    after a reload for the ones it read."""
    from egress.hardening import scrub_environ

    scrub_environ(secret_env_vars(cfg, rt))


def _config_arg(cfg: Config) -> str:
    """' --config PATH' for a command line that must read the same config ('' for the default)."""
    return "" if cfg.path == config_mod.EMBEDDED_DEFAULT else f" --config {shlex.quote(cfg.path)}"


def _banner(cfg: Config, host: str, port: int, workers: int = 1) -> str:
    url = f"http://{host}:{port}"
    ca = cfg.ca_cert_path
    procs = "" if workers == 1 else f", {workers} worker processes"
    made = (f"made at this start, valid up to {cfg.ca_validity_hours} h, signed by the PKI "
            f"issuer {cfg.ca_vault_pki.mount}/issuer/{cfg.ca_vault_pki.issuer}, which is what "
            "the file holds" if cfg.ca_vault_pki else
            f"made at this start, valid {cfg.ca_validity_hours} h")  # fmt: skip
    lines = [
        f"egress {__version__}: listening on {host}:{port} (config: {cfg.path}{procs})",
        f"CA certificate: {ca} ({made}; its key stays in memory)",
    ]
    if cfg.listen_tls is not None:
        certs = (
            " with their client certificates"
            if cfg.identity and cfg.identity.client_certificates
            else ""
        )
        lines += [
            f"agents connect over TLS (listen.tls){certs}: HTTPS_PROXY=https://<a name in "
            f"{cfg.listen_tls.cert_file}>:{port}; their proxy client trusts that certificate's "
            f"CA, and they trust {ca} for the upstreams (docs/agents.md: Client certificates)",
        ]
    elif cfg.listen_mode == "transparent" and cfg.identity and cfg.identity.source_addresses:
        lines += [
            "transparent mode on a shared node: redirect the agents' TCP 80/443 here in "
            "PREROUTING, with strict reverse-path filtering (docs/agents.md: Source addresses);",
            f"  agents are known by their source addresses and trust {ca}",
        ]
    elif cfg.listen_mode == "transparent":
        lines += [
            "transparent mode: send the agent's traffic here with the redirect rules:",
            f"  egress redirect apply --proxy-port {port} --proxy-uid <egress's UID>",
            f"  the agent trusts {ca} (or the bundle in agent.dir) and sets no proxy",
        ]
    else:
        lines += [
            "point a shell's clients at it (proxy, CA and placeholders for curl, requests, git, "
            "pip, Node, Java, wget...; docs/clients.md):",
            f'  eval "$(egress env{_config_arg(cfg)} --proxy-url {url})"',
            f"  or only: export HTTPS_PROXY={url} HTTP_PROXY={url} SSL_CERT_FILE={ca} "
            f"REQUESTS_CA_BUNDLE={ca}",
            "check the clients found here: egress doctor"
            + _config_arg(cfg)
            + f" --proxy-url {url}",
            "or run an agent through it: egress exec -- <command>",
        ]
    for spec in cfg.secrets:
        if spec.env:
            more = "".join(f" {k}={v}" for k, v in spec.agent_env)
            lines.append(f"secret {spec.name}: give the agent {spec.env}={spec.placeholder}{more}")
    lines.append("ready; Ctrl-C stops")
    return "\n".join(lines)


async def _serve(cfg: Config, listen_port: int | None, workers: int | None = None) -> int:
    """``egress run``: one proxy in this process (``workers: 1``) or N forked workers on
    one port (egress.workers); SIGTERM/SIGINT drain and stop, exit 0."""
    from egress.admin import AdminServer
    from egress.metrics import Metrics
    from egress.proxy import IN_FLIGHT_GRACE, EmbeddedProxy
    from egress.reload import start_triggers
    from egress.workers import Supervisor, bind_listeners, listen_hosts, worker_count

    n = worker_count(workers if workers is not None else cfg.workers)
    # A hang-up before the reload triggers are set up (secrets loading, workers starting)
    # must not stop egress (SIGHUP's default): it is ignored until then.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[int]()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    metrics = Metrics()
    admin = None
    if cfg.admin is not None:
        admin = AdminServer(metrics, cfg.admin.host, cfg.admin.port)
        a_host, a_port = await admin.start()
        print(f"egress: admin listener on http://{a_host}:{a_port} (/healthz /readyz /metrics)",
              file=sys.stderr, flush=True)  # fmt: skip
    try:
        # Secrets may take a while (Vault): load them off the event loop so that /healthz and
        # /readyz answer meanwhile. With workers, the Vault refresher starts after the fork.
        rt = await asyncio.to_thread(Runtime.start, cfg, None, metrics, refresh=n == 1)
    except BaseException:
        if admin is not None:
            await admin.stop()
        raise
    protect_process(cfg, rt)
    proxy: EmbeddedProxy | None = None
    sup: Supervisor | None = None
    reloads: Triggers | None = None
    try:
        if admin is not None:
            rt.listening_on(a_host, a_port)  # the admin port is the proxy's own, too
        port = cfg.listen_port if listen_port is None else listen_port
        transparent = cfg.listen_mode == "transparent"
        if n == 1:
            proxy = EmbeddedProxy(rt, cfg.listen_host, port, transparent=transparent)
            host, port = await proxy.start()
            server = asyncio.create_task(proxy.wait())
        else:
            listeners = bind_listeners(listen_hosts(cfg.listen_host, transparent), port, n)
            host, port = cfg.listen_host, listeners[0][0].getsockname()[1]
            for s in listeners[0]:
                rt.listening_on(*s.getsockname()[:2])
            sup = Supervisor(rt, n, listeners, cfg.listen_host, port, transparent)
            await sup.start()
            if rt.vault is not None:
                rt.vault.start()  # only the parent talks to Vault (egress.workers)
            if rt.minter is not None:
                rt.minter.start()  # ... and mints tokens
            server = asyncio.create_task(sup.failed.wait())
        reloads = start_triggers(rt, sup.push_policy if sup else None, loop,
                                 on_applied=lambda new: scrub_secret_env(new, rt))  # fmt: skip
        if admin is not None:
            admin.before_scrape = lambda: _refresh_gauges(rt)
            admin.tripwires = _tripwire_admin(rt, sup)
            if sup is not None:
                admin.workers_not_ready = sup.why_not_ready
                admin.render = sup.render_metrics
            admin.set_ready()
        print(_banner(cfg, host, port, n), file=sys.stderr, flush=True)
        waiter = asyncio.create_task(signals.get())
        await asyncio.wait({waiter, server}, return_when=asyncio.FIRST_COMPLETED)
        if sup is not None and sup.failed.is_set():
            waiter.cancel()
            if admin is not None:
                admin.set_ready("stopping: workers keep dying")
            await sup.stop(now=True)
            return 1
        if waiter.done() and waiter.result() == signal.SIGTERM and admin is not None and cfg.admin:
            # Drain: report not ready so that traffic moves away, keep serving for a while;
            # a second signal stops at once.
            admin.set_ready("draining")
            print(f"egress: draining for {cfg.admin.drain_seconds} s (a second signal stops now)",
                  file=sys.stderr, flush=True)  # fmt: skip
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signals.get(), cfg.admin.drain_seconds)
                signals.put_nowait(signal.SIGTERM)  # that second signal: stop at once below
        waiter.cancel()
        await reloads.stop()
        if admin is not None:
            admin.set_ready("stopping")
        # Stop accepting, let the requests in flight finish (IN_FLIGHT_GRACE at most); a
        # further signal stops at once.
        now = asyncio.Event()
        nudge = asyncio.create_task(signals.get())
        nudge.add_done_callback(lambda _: now.set())
        if not signals.empty():
            now.set()
        if sup is not None:
            await sup.stop(now=now.is_set(), signal_now=now)
        elif proxy is not None:
            if not server.done():
                await proxy.stop_accepting()
                await proxy.finish_in_flight(IN_FLIGHT_GRACE, now)
            await proxy.stop()
        nudge.cancel()
        print("egress: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        if reloads is not None:
            await reloads.stop()
        if sup is not None and not all(w.exited.is_set() for w in sup.workers.values()):
            await sup.stop(now=True)  # an error above: no worker outlives the parent
        await asyncio.to_thread(rt.close)  # may revoke Vault leases
        if admin is not None:
            await admin.stop()


def _tripwire_admin(rt: Runtime, sup: Supervisor | None) -> TripwireAdmin:
    """The quarantine on the admin listener: the parent's book (with workers, the parent
    tells them); each clearing is audited."""
    from egress.admin import TripwireAdmin
    from egress.audit import now_iso

    async def clear(agent: str | None) -> list[str]:
        if sup is not None:
            cleared = await sup.clear_quarantine(agent)
        else:
            cleared = rt.quarantine.clear(agent)
            rt.metrics.quarantined.set(len(rt.quarantine.entries()))
        rt.audit.write({"time": now_iso(), "event": "tripwire_cleared", "agents": cleared,
                        "asked": agent or "all"})  # fmt: skip
        return cleared

    def token() -> str | None:
        return rt.config.tripwires.operator_token_sha256 if rt.config.tripwires else None

    return TripwireAdmin(rt.quarantine.to_wire, clear, token)


def _refresh_gauges(rt: Runtime) -> None:
    if rt.vault is not None:
        rt.metrics.vault_calls.set(rt.vault.client.calls)
        rt.metrics.vault_errors.set(rt.vault.errors)


async def _exec(cfg: Config, argv: Sequence[str], audit_option: str | None = None,
                log_level: str = "auto", isolate: bool = False) -> int:  # fmt: skip
    from egress.localdev import denial_lines, denial_printer, exec_audit_target
    from egress.proxy import EmbeddedProxy

    # Not stdout (CMD's) nor, by default, stderr (the agent's screen): a file, named here.
    target = exec_audit_target(audit_option, cfg.audit_path)
    audit = AuditWriter(target, cfg.audit_format)
    if target != "stderr":
        print(f"egress: audit log: {target}", file=sys.stderr, flush=True)
        if denial_lines(log_level, sys.stderr):
            audit.listeners.append(denial_printer(sys.stderr))
    # exec's proxy listens on loopback for its own child, in plain HTTP: listen.* is the
    # config's `egress run` listener, TLS included.
    cfg = dataclasses.replace(cfg, listen_tls=None)
    # The CA stays in this process's private directory: ca.cert_path may be another egress's.
    rt = Runtime.start(cfg, audit=audit, private_ca=True)
    protect_process(cfg, rt)
    try:
        proxy = EmbeddedProxy(rt, "127.0.0.1", 0)
        host, port = await proxy.start()
        env = agent_env(os.environ, f"http://{host}:{port}", str(rt.ca_path), cfg, rt)
        bridge = None
        if isolate:  # egress.isolate: same proxy URL inside, bridged over a Unix socket
            from egress import isolate as iso

            bridge = iso.UnixBridge(host, port)
            await bridge.start()
            plan = iso.Plan(str(bridge.sock), port, str(rt.private_dir),
                            tuple(iso.published_files(env, rt.private_dir)),
                            *map(tuple, iso.hide_plan(iso.secret_paths(cfg), [
                                Path.cwd(), Path.home(), bridge.dir, rt.private_dir])))  # fmt: skip
            argv = iso.command(plan, argv)
        try:
            child = await asyncio.create_subprocess_exec(*argv, env=env)
        except OSError as e:
            if bridge is not None:
                await bridge.stop()
            await proxy.stop()
            print(f"egress: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
            return 127
        loop = asyncio.get_running_loop()
        # SIGINT from a terminal reaches the command directly (same process group);
        # SIGTERM and SIGHUP sent to egress are passed on to it.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, child.send_signal, sig)
        code = await child.wait()
        if bridge is not None:
            await bridge.stop()
        await proxy.stop()
        return code if code >= 0 else 128 - code
    finally:
        rt.close()


def _redirect(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from egress import redirect as r

    try:
        dns = list(args.dns or ())
        if args.dns_from:
            dns += r.nameservers(Path(args.dns_from).read_text())
        spec = r.RedirectSpec(proxy_port=args.proxy_port, proxy_uid=args.proxy_uid,
                              ports=tuple(int(p) for p in args.ports.split(",")), dns=tuple(dict.fromkeys(dns)),
                              inbound_ports=tuple(int(p) for p in args.inbound_ports.split(",") if p.strip()))  # fmt: skip
    except OSError as e:
        print(f"egress: error: --dns-from {args.dns_from}: {e.strerror}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return 2
    if args.backend == "nftables":
        texts = [(["nft", "-f", "-"], r.nftables(spec))]
        removes = r.nftables_remove()
    else:
        texts = [(["iptables-restore", "--noflush"], r.iptables_restore(spec, 4))]
        removes = r.iptables_remove(4)
        if args.action == "print" or Path("/proc/net/if_inet6").exists():
            texts.append((["ip6tables-restore", "--noflush"], r.iptables_restore(spec, 6)))
            removes += r.iptables_remove(6)
        else:
            print("egress: IPv6 is disabled in this kernel: IPv4 rules only", file=sys.stderr)
    if args.action == "print":
        for cmd, text in texts:
            print(f"# {' '.join(cmd)}\n{text}", end="")
        return 0
    if shutil.which(texts[0][0][0]) is None:
        print(
            f"egress: error: {texts[0][0][0]} not found (install {args.backend})", file=sys.stderr
        )
        return 2
    # Remove first, so that applying twice (a retried init container) leaves one copy.
    for cmd in removes:
        subprocess.run(cmd, capture_output=True)  # already gone is fine
    if args.action == "remove":
        return 0
    for cmd, text in texts:
        done = subprocess.run(cmd, input=text, capture_output=True, text=True)
        if done.returncode != 0:
            why = done.stderr.strip()
            if any(w in why.lower() for w in ("permission denied", "not permitted")):
                why += " (applying the rules needs the NET_ADMIN capability)"
            print(f"egress: error: {' '.join(cmd)} failed: {why}", file=sys.stderr)
            return 2
    return 0


def _workers_arg(text: str) -> int:
    from egress.config.load import check_workers

    try:
        value: object = int(text)
    except ValueError:
        value = text
    problem = check_workers(value)
    if problem:
        raise argparse.ArgumentTypeError(problem.replace("leave it out", "leave --workers out"))
    return int(text)


_RAW = argparse.RawDescriptionHelpFormatter  # keeps the examples' line breaks


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``only="run"`` builds that subcommand alone (egress run starts
    faster without importing the modules of the other subcommands)."""
    p = argparse.ArgumentParser(
        prog="egress", description="Credential-injecting egress proxy for AI agents."
    )
    p.add_argument("--version", action="version", version=f"egress {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    cfg_help = "config file (default: the embedded default config)"
    run = sub.add_parser(
        "run", help="run the proxy until Ctrl-C", formatter_class=_RAW,
        description="Load the config and every secret, make the ephemeral CA and serve as an "
        "explicit (or, with listen.mode: transparent, transparent) proxy until Ctrl-C or "
        "SIGTERM. The banner on stderr says where the CA is and how to point clients at it.",
        epilog="examples:\n  egress run                          # the embedded default config\n"
        "  egress run -c egress.yaml --port 0  # a free port\n"
        "  eval \"$(egress env -c egress.yaml)\" # then, in the agent's shell\n\n"
        "exit codes:\n  0  stopped by Ctrl-C or SIGTERM\n"
        "  1  workers kept dying (more than 5 within 60 s)\n"
        "  2  the config is invalid, a required secret cannot be loaded, or the port is busy",
    )  # fmt: skip
    run.add_argument("--config", "-c", help=cfg_help)
    run.add_argument(
        "--port", type=int, help="listen port (overrides listen.port; 0 picks a free one)"
    )
    run.add_argument(
        "--workers", type=_workers_arg, metavar="N",
        help="proxy processes serving the one port (overrides workers:; default: one per CPU "
        "this process may use, a container's CPU limit included)",
    )  # fmt: skip
    if only is None:
        _add_other_commands(sub, cfg_help)
    return p


def _add_other_commands(sub: Any, cfg_help: str) -> None:
    ex = sub.add_parser(
        "exec", help="run a command with its traffic going through the proxy", formatter_class=_RAW,
        description="Start a private proxy on a free loopback port and run CMD through it: "
        "proxy and CA variables set for every common client (docs/clients.md), each secret's "
        "placeholder in its variable, no real secret in CMD's environment or readable from "
        "egress's process; isolated (Linux, where the kernel allows it: --isolate), no way "
        "out but egress.",
        epilog="examples:\n  egress exec -- claude\n  egress exec --isolate -c egress.yaml -- "
        "npm install   # fail if it cannot be isolated\n  egress exec --no-isolate -- make\n"
        "  egress exec --log-level deny -- pytest\n\n"
        "exit codes:\n  CMD's exit code (128+N if CMD died from signal N)\n"
        "  127  CMD cannot be run\n  2  the config is invalid, a required secret cannot be "
        "loaded, or an explicit --isolate is not possible here",
    )  # fmt: skip
    ex.add_argument("--config", "-c", help=cfg_help)
    ex.add_argument(
        "--audit", metavar="PATH",
        help="write the audit log here ('-': stderr); default: audit.path if it is a file, "
        "else $XDG_STATE_HOME/egress/exec-audit.jsonl (~/.local/state/egress/...)",
    )  # fmt: skip
    ex.add_argument(
        "--log-level", choices=("auto", "quiet", "deny"), default="auto",
        help="one line per refused request on stderr: 'deny' always, 'quiet' never, 'auto' "
        "(default) only when stderr is not a terminal (the agent's screen)",
    )  # fmt: skip
    iso = ex.add_mutually_exclusive_group()
    iso.add_argument(
        "--isolate", action="store_true", default=None,
        help="Linux: run the command in its own user, mount, PID and network namespaces: its "
        "only way out is egress, and egress's process, private directory and the secrets "
        "files are hidden from it (docs/isolation.md). The default where the kernel allows "
        "it; given explicitly, exec fails (status 2) where it does not",
    )  # fmt: skip
    iso.add_argument(
        "--no-isolate", dest="isolate", action="store_false",
        help="run the command unisolated (as your user, on your network): it can connect "
        "around the proxy and read what your user can read",
    )  # fmt: skip
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    en = sub.add_parser(
        "env", help="print the setup of egress exec as shell code, for a shell next to egress run",
        description="Print, as export lines for a shell to eval, what egress exec sets up for "
        "its command (proxy and CA variables, each secret's placeholder, git, wget, Java, Node, "
        "npm, cargo: docs/clients.md), for the proxy egress run serves. Reads the config only: "
        "it prints placeholders, never a secret. Example: eval \"$(egress env -c egress.yaml)\"",
    )  # fmt: skip
    from egress.envcmd import add_arguments as add_env_arguments

    add_env_arguments(en, cfg_help)
    ck = sub.add_parser(
        "check", help="print the proxy's decision on requests without sending anything",
        formatter_class=_RAW,
        description="The decision the proxy would take on each request, with the proxy's own "
        "checks in its order (secret checks included), without sending anything.",
        epilog="examples:\n  egress check -c egress.yaml https://api.github.com/user\n"
        "  egress check -c egress.yaml -X POST -H 'Authorization: Bearer $TOKEN' URL --explain\n"
        "  egress check -c egress.yaml --file urls.txt --format json\n\n"
        "exit codes:\n  0  every request allowed\n  1  a request refused\n"
        "  2  config error, a required secret cannot be loaded, or bad input",
    )  # fmt: skip
    from egress.checkcmd import add_arguments as add_check_arguments

    add_check_arguments(ck, cfg_help)
    from egress.completion import add_parser as add_completion_parser
    from egress.doctor import add_parser as add_doctor_parser
    from egress.review.cli import add_parsers as add_review_parsers

    add_doctor_parser(sub, cfg_help)
    add_completion_parser(sub)

    add_review_parsers(sub, cfg_help)
    rd = sub.add_parser(
        "redirect", help="print, apply or remove the sidecar's traffic redirect rules"
    )
    rd.add_argument("action", choices=["print", "apply", "remove"])
    rd.add_argument("--proxy-port", type=int, default=15001, help="the proxy's transparent port")
    rd.add_argument(
        "--proxy-uid", type=int, default=1337, help="the proxy's UID (its traffic is exempt)"
    )
    rd.add_argument("--ports", default="80,443", help="TCP ports to redirect (comma-separated)")
    rd.add_argument(
        "--inbound-ports", default="9901",
        help="TCP ports whose accepted connections may answer (egress's admin port, for probes; "
        "comma-separated, empty for none)",
    )  # fmt: skip
    rd.add_argument("--dns", action="append", help="a DNS server the agent may query (repeatable)")
    rd.add_argument(
        "--dns-from", metavar="FILE",
        help="also allow the nameservers of FILE (in a pod: /etc/resolv.conf, the cluster DNS)",
    )  # fmt: skip
    rd.add_argument("--backend", choices=["iptables", "nftables"], default="iptables")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser("run" if argv[:1] == ["run"] else None).parse_args(argv)
    from egress.logsetup import configure_logging

    configure_logging()
    if args.command == "redirect":
        return _redirect(args)
    if args.command == "doctor":
        from egress.doctor import run as run_doctor

        return run_doctor(args)
    if args.command == "completion":
        from egress.completion import run as run_completion

        return run_completion(args)
    if args.command in ("review", "learn"):
        from egress.review.cli import run as run_review

        return run_review(args)
    try:
        if args.command == "env":
            from egress.envcmd import run as run_env

            return run_env(args)
        cfg = config_mod.load_or_default(args.config)
        if args.command == "check":
            from egress.checkcmd import run as run_check

            return run_check(cfg, args)
        if args.command == "run":
            return asyncio.run(_serve(cfg, args.port, args.workers))
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print("egress: exec needs a command: egress exec -- CMD ARGS...", file=sys.stderr)
            return 2
        isolate = args.isolate is not False  # the default: isolated where possible
        if isolate:
            from egress.isolate import not_isolated_notice, unsupported_message, unsupported_reason

            if (why := unsupported_reason()) is not None:
                if args.isolate:  # asked for explicitly: fail closed
                    print(unsupported_message(why), file=sys.stderr)
                    return 2
                print(not_isolated_notice(why), file=sys.stderr, flush=True)
                isolate = False
        return asyncio.run(_exec(cfg, cmd, args.audit, args.log_level, isolate))
    except EgressError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
