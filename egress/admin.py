"""The admin listener: /healthz (alive), /readyz (CA made, secrets loaded, listeners up) and
Prometheus /metrics. Separate from the proxy port; meant for loopback or the pod."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from egress.metrics import Metrics


class AdminServer:
    def __init__(self, metrics: Metrics, host: str, port: int):
        self.metrics = metrics
        self.host, self.port = host, port
        self.why_not_ready = "starting: loading secrets"
        self.before_scrape: Callable[[], None] = lambda: None
        # With workers (egress.workers): why not every worker is ready ("" when all are),
        # and a /metrics answer that sums them.
        self.workers_not_ready: Callable[[], str] = lambda: ""
        self.render: Callable[[], Awaitable[bytes]] | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def ready(self) -> bool:
        return self.why_not() == ""

    def why_not(self) -> str:
        return self.why_not_ready or self.workers_not_ready()

    def set_ready(self, why_not: str = "") -> None:
        self.why_not_ready = why_not
        self.metrics.ready.set(1 if self.ready else 0)

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
            if parts and parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif path == "/healthz":
                status, ctype, body = 200, "text/plain", b"ok\n"
            elif path == "/readyz":
                if self.ready:
                    status, ctype, body = 200, "text/plain", b"ready\n"
                else:
                    status, ctype, body = (
                        503,
                        "text/plain",
                        f"not ready: {self.why_not()}\n".encode(),
                    )
            elif path == "/metrics":
                self.before_scrape()
                self.metrics.ready.set(1 if self.ready else 0)
                body = await self.render() if self.render else self.metrics.render()
                status, ctype = 200, "text/plain; version=0.0.4"
            else:
                status, ctype, body = 404, "text/plain", b"not found: /healthz, /readyz, /metrics\n"
            reason = {
                200: "OK",
                404: "Not Found",
                405: "Method Not Allowed",
                503: "Service Unavailable",
            }[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
                         "connection: close\r\n\r\n".encode() + body)  # fmt: skip
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
