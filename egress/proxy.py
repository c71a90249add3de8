"""Embedding mitmproxy: a trimmed master with only the addons egress needs.

mitmproxy's default master loads ~35 addons whose hooks cost CPU on every request and some
of which (map_remote, blocklist, save, ...) have no place in a security proxy. egress runs
the proxy core, the layer selection, its own TLS and its own addons, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from mitmproxy import options
from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver
from mitmproxy.master import Master

from egress.addons.audit import AuditLog
from egress.addons.inject import SecretInjector
from egress.addons.policy import Allowlist
from egress.addons.protocol import ProtocolGuard
from egress.addons.scrub import ResponseScrubber
from egress.addons.tls import EgressTls
from egress.errors import EgressError
from egress.runtime import Runtime


class ProxyStartError(EgressError):
    pass


class _Ready:
    """Sets an event once mitmproxy has bound its listeners and run every addon's start-up."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


class _QuietMitmproxyLogs(logging.Filter):
    """mitmproxy logs every connection at INFO and, when upstream verification fails while
    the client keeps sending, a spurious 'mitmproxy has crashed!' traceback. The user sees
    the outcome in the audit log and the client's 502 instead. Its advice on a busy port
    names mitmproxy's flags, not egress's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False  # connections cancelled at shutdown
        if "failed to listen on" in record.getMessage():
            # It suggests `--mode regular@PORT`, a flag egress does not have; egress says
            # what to change itself (ProxyStartError: listen.port, or 0 for a free port).
            return False
        if "has crashed" in record.getMessage():
            # One line, no traceback (it can quote request bytes); the flows of that
            # connection are audited as errors when it closes (AuditLog).
            error = record.exc_info[1] if record.exc_info else None
            record.msg, record.args, record.exc_info = (
                "mitmproxy failed on a connection (%s); it was closed",
                (type(error).__name__ if error else "unknown error",),
                None,
            )
            record.exc_text = None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("egress: %(levelname)s: %(message)s"))
    handler.addFilter(_QuietMitmproxyLogs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)


class EmbeddedProxy:
    def __init__(self, rt: Runtime, listen_host: str, listen_port: int, transparent: bool = False):
        self.rt = rt
        self.opts = options.Options()
        self.master = Master(self.opts)
        self._ready = _Ready()
        self.master.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            disable_h2c.DisableH2C(),
            EgressTls(rt),
            Allowlist(rt),
            ProtocolGuard(rt),
            SecretInjector(rt),
            ResponseScrubber(rt),
            AuditLog(rt),
            self._ready,
        )
        if transparent:
            hosts = [listen_host]
            if listen_host == "127.0.0.1" and _has_ipv6_loopback():
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


def _has_ipv6_loopback() -> bool:
    """Can this network namespace listen on ::1? (Not where IPv6 is disabled.)"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
