"""The admin listener: /healthz (alive), /readyz (CA made, secrets loaded, listeners up),
Prometheus /metrics, and the tripwires' quarantine (GET /tripwires; POST /tripwires/clear
with the operator token). Separate from the proxy port; meant for loopback or the pod."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from egress.metrics import Metrics


@dataclass
class TripwireAdmin:
    """What the admin listener may do with the quarantine (egress.tripwires)."""

    entries: Callable[[], list[dict[str, object]]]
    clear: Callable[[str | None], Awaitable[list[str]]]
    token_sha256: Callable[[], str | None]  # the config's operator_token_sha256 in force


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
        self.tripwires: TripwireAdmin | None = None
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

    async def _clear(self, auth: str, query: str) -> tuple[int, str, bytes]:
        """Clear one agent's quarantine (?agent=NAME) or all, with the operator token."""
        t = self.tripwires
        want = t.token_sha256() if t is not None else None
        if t is None or want is None:
            return 403, "text/plain", (b"clearing a quarantine here needs tripwires.operator_token_sha256 "
                                       b"in the config; without it only a restart clears one\n")  # fmt: skip
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        got = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        if not token or not hmac.compare_digest(got, want):
            return 401, "text/plain", b"send the operator token: Authorization: Bearer <token>\n"
        asked = parse_qs(query, keep_blank_values=True).get("agent")
        if asked is not None and (len(asked) != 1 or not asked[0]):
            return 400, "text/plain", b"give one agent (?agent=NAME), or none to clear all\n"
        cleared = await t.clear(asked[0] if asked else None)
        return 200, "application/json", json.dumps({"cleared": cleared}).encode() + b"\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            auth = ""
            for _ in range(100):
                header = await asyncio.wait_for(reader.readline(), 5)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "authorization":
                    auth = value.strip()
            parts = line.decode("latin-1").split()
            path, _, query = parts[1].partition("?") if len(parts) > 1 else ("", "", "")
            if parts and parts[0] == "POST" and path == "/tripwires/clear":
                status, ctype, body = await self._clear(auth, query)
            elif parts and parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET (and POST /tripwires/clear)\n"
            elif path == "/tripwires" and self.tripwires is not None:
                doc = {"quarantined": self.tripwires.entries()}
                status, ctype, body = 200, "application/json", json.dumps(doc).encode() + b"\n"
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
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden",
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
