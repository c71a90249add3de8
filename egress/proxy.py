"""Embedding mitmproxy: a trimmed master with only the addons egress needs.

mitmproxy's default master loads ~35 addons whose hooks cost CPU on every request and some
of which (map_remote, blocklist, save, ...) have no place in a security proxy. egress runs
the proxy core, the layer selection, its own TLS and its own addons, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
from typing import Any


def _import_mitmproxy_addons_without_init() -> None:
    """Make ``import mitmproxy.addons.X`` load module X only.

    mitmproxy/addons/__init__.py imports every addon mitmproxy ships (the Flask onboarding
    app, ldap3 and passlib for proxyauth, the web and save addons...): about 21 MiB of RSS
    and 0.3 s of start-up that egress never runs. ``mitmproxy.master`` imports
    ``mitmproxy.addons.termlog`` and egress.addons.tls imports ``mitmproxy.addons.tlsconfig``,
    so the package would run on the first import. Registering the package module without
    executing its __init__ (its __path__ set, so submodules import as usual) avoids that.
    Nothing egress runs calls ``mitmproxy.addons.default_addons()``, the one thing the
    __init__ defines. Where the package is already imported (a plain mitmdump loading
    egress's addons with -s) this does nothing. tests/test_startup.py checks that a running
    ``egress run`` has no flask, ldap3 or passlib in sys.modules.
    """
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy.addons")
    if spec is None or spec.submodule_search_locations is None:
        return  # not a package any more: import it as usual
    package = importlib.util.module_from_spec(spec)  # made, not executed
    sys.modules["mitmproxy.addons"] = package
    import mitmproxy

    mitmproxy.addons = package  # type: ignore[attr-defined]


_import_mitmproxy_addons_without_init()

from mitmproxy import options  # noqa: E402 (after the import set-up above)
from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver  # noqa: E402
from mitmproxy.master import Master  # noqa: E402

from egress.addons.audit import AuditLog  # noqa: E402
from egress.addons.dlp import DataLossGuard  # noqa: E402
from egress.addons.identity import AgentIdentity  # noqa: E402
from egress.addons.inject import SecretInjector, StaleTokens  # noqa: E402
from egress.addons.policy import Allowlist  # noqa: E402
from egress.addons.protocol import ProtocolGuard  # noqa: E402
from egress.addons.scrub import ResponseScrubber  # noqa: E402
from egress.addons.tls import EgressTls  # noqa: E402
from egress.addons.tripwire import Tripwires  # noqa: E402
from egress.errors import EgressError  # noqa: E402
from egress.logsetup import configure_logging  # noqa: E402,F401 (egress.proxy.configure_logging)
from egress.runtime import Runtime  # noqa: E402

# On stop: how long requests in flight may take to finish once the listener is closed.
IN_FLIGHT_GRACE = 10.0


class ProxyStartError(EgressError):
    pass


class _Ready:
    """Sets an event once mitmproxy has bound its listeners and run every addon's start-up."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


class _InFlight:
    """The HTTP requests being answered now: a stopping proxy lets them finish."""

    def __init__(self) -> None:
        self.flows: set[str] = set()

    def requestheaders(self, flow: Any) -> None:
        self.flows.add(flow.id)

    def response(self, flow: Any) -> None:
        self.flows.discard(flow.id)

    def error(self, flow: Any) -> None:
        self.flows.discard(flow.id)


def _serve_on_inherited_sockets(sockets: list[socket.socket]) -> None:
    """Make mitmproxy serve on listening sockets bound by egress's parent process
    (egress.workers) instead of binding its own: the one place egress reaches into how
    mitmproxy listens (``AsyncioServerInstance.listen``, mitmproxy 11 and 12). Only ever
    called in a worker process, which serves nothing else."""
    from mitmproxy.proxy import mode_servers

    by_addr = {s.getsockname()[:2]: s for s in sockets}
    original = mode_servers.AsyncioServerInstance.listen

    async def listen(self: Any, host: str, port: int) -> list[Any]:
        sock = by_addr.get((host, port))
        if sock is None or self.mode.transport_protocol != "tcp":
            return await original(self, host, port)
        return [await asyncio.start_server(self.handle_stream, sock=sock, backlog=1024)]

    mode_servers.AsyncioServerInstance.listen = listen  # type: ignore[method-assign]


class EmbeddedProxy:
    def __init__(
        self, rt: Runtime, listen_host: str, listen_port: int, transparent: bool = False,
        sockets: list[socket.socket] | None = None,
    ):  # fmt: skip
        """``sockets``: listening sockets bound by the parent (egress.workers), one per
        address the proxy listens on; without them mitmproxy binds its own."""
        self.rt = rt
        self.opts = options.Options()
        self.master = Master(self.opts)
        self._ready = _Ready()
        self.in_flight = _InFlight()
        if sockets:
            _serve_on_inherited_sockets(sockets)
        self.master.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            disable_h2c.DisableH2C(),
            EgressTls(rt),
            AgentIdentity(rt),
            Tripwires(rt),
            Allowlist(rt),
            ProtocolGuard(rt),
            DataLossGuard(rt),
            SecretInjector(rt),
            StaleTokens(rt),
            ResponseScrubber(rt),
            AuditLog(rt),
            self.in_flight,
            self._ready,
        )
        if transparent:
            hosts = [listen_host]
            if listen_host == "127.0.0.1" and has_ipv6_loopback():
                hosts.append("::1")  # ip6tables' REDIRECT sends IPv6 connections there
            modes = [f"transparent@{h}:{listen_port}" for h in hosts]
        else:
            modes = ["regular"]
        updates: dict[str, Any] = dict(
            mode=modes,
            listen_host=listen_host,
            listen_port=listen_port,
            # Redirected connections are decided on their first bytes (SNI or Host header),
            # so nothing may be dialled before them; explicit mode dials at CONNECT, after
            # the decision, so that an unreachable upstream gets a clear 502.
            connection_strategy="lazy" if transparent else "eager",
            # A private, empty folder: mitmproxy never reads or writes a CA there.
            confdir=str(rt.private_dir),
            ssl_insecure=False,
            ssl_verify_upstream_trusted_ca=str(rt.upstream_trust),
            # Leaf certificates name only the contacted host (EgressTls.get_cert).
            upstream_cert=False,
            # Stay on TCP: QUIC/HTTP3 is not proxied.
            http3=False,
            # Bodies over the limit stream through instead of being buffered whole.
            stream_large_bodies=str(rt.config.max_body_bytes),
        )
        self.opts.update(**updates)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Start serving; return the bound (host, port). Raises ProxyStartError."""
        self._task = asyncio.create_task(self.master.run())
        ready = asyncio.create_task(self._ready.event.wait())
        done, _ = await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            exc = self._task.exception() if self._task.done() else None
            raise ProxyStartError(f"the proxy did not start: {exc or 'it stopped during start-up'}")
        addrs = self.master.addons.get("proxyserver").listen_addrs()
        if len(addrs) < len(self.opts.mode):  # a listener failed (mitmproxy only logs it)
            await self.stop()
            raise ProxyStartError(
                f"could not listen on {', '.join(self._wanted())} "
                "(is the port in use? set listen.port, or 0 for a free port)"
            )
        for addr in addrs:
            self.rt.listening_on(str(addr[0]), int(addr[1]))
        host, port = str(addrs[0][0]), int(addrs[0][1])
        return host, port

    def _wanted(self) -> list[str]:
        default = f"{self.opts.listen_host}:{self.opts.listen_port}"
        return [m.split("@", 1)[1] if "@" in m else default for m in self.opts.mode]

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        self.master.shutdown()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task

    async def stop_accepting(self) -> None:
        """Close the listeners; connections already accepted go on."""
        with contextlib.suppress(Exception):
            await self.master.addons.get("proxyserver").servers.update([])

    async def finish_in_flight(self, grace: float, now: asyncio.Event | None = None) -> None:
        """Wait until no request is in flight, ``grace`` seconds or ``now`` at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.in_flight.flows and loop.time() < deadline:
            if now is not None and now.is_set():
                return
            await asyncio.sleep(0.05)
        if not self.in_flight.flows:
            await asyncio.sleep(0.1)  # the last response's final bytes reach the client


async def serve_until_stopped(
    proxy: EmbeddedProxy, stop: asyncio.Event, now: asyncio.Event, grace: float = IN_FLIGHT_GRACE
) -> None:
    """Serve until ``stop`` is set, then stop accepting, let the requests in flight finish
    (until ``now`` is set or ``grace`` runs out) and shut the proxy down."""
    server = asyncio.ensure_future(proxy.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({server, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not server.done():
        await proxy.stop_accepting()
        await proxy.finish_in_flight(grace, now)
    await proxy.stop()


def has_ipv6_loopback() -> bool:
    """Can this network namespace listen on ::1? (Not where IPv6 is disabled.)"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
