"""Protocol limits below the hooks: what an agent can make mitmproxy buffer, parse or relay.

mitmproxy has no hook for these, so egress swaps its own subclasses of mitmproxy's HTTP
connection layers in (from ``next_layer``, by class, so that the layer stack stays the one
mitmproxy built) and replaces two classes mitmproxy builds by name (the upstream HTTP/1
connection and the WebSocket connection). The subclasses:

- cap an HTTP/1 request head (client side, CONNECT included), the bytes a client sends ahead
  of a pending response, and an upstream's response head (``limits.max_head_bytes``);
- make HTTP/1 trailers visible to the ``request``/``response`` hooks instead of crashing
  the flow after the upstream executed it (mitmproxy raises NotImplementedError);
- cap HTTP/2 streams per connection and stream resets per window (rapid reset), and never
  let a stream reset in the same read as its HEADERS reach the upstream;
- never show the client mitmproxy's own error text, which quotes raw upstream bytes;
- cap WebSocket messages (reassembled and inflated) and scrub the upstream's Ping, Pong and
  Close payloads.

Each refusal fires ``egress_protocol_violation`` (one argument: mitmproxy's hook dispatch
unpacks exactly one), which the audit addon records. Tested on mitmproxy 11 and 12, whose
internals these classes touch: the versions are pinned in pyproject.toml.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h2.errors
import h2.events
import h11
import wsproto.connection
import wsproto.events
import wsproto.extensions
import wsproto.frame_protocol
from egress.addons.base import EgressAddon
from mitmproxy import connection, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import http as mhttp
from mitmproxy.proxy.layers import websocket as mws
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    RequestEndOfMessage,
    RequestProtocolError,
    RequestTrailers,
    ResponseEndOfMessage,
    ResponseProtocolError,
    ResponseTrailers,
)

from egress.messages import denial_body
from egress.reasons import Reason, http_status

_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head, as h11 looks for it
_ERROR_TEXT = re.compile(rb"<p>(.*?)</p>", re.DOTALL)  # the message in mitmproxy's error page


@dataclass
class Limits:
    """The process-wide limits the layers enforce; set from the config by ProtocolGuard."""

    max_head: int = 64 * 1024
    max_streams: int = 10_000
    max_resets: int = 100
    reset_window: float = 10.0
    max_ws_message: int = 10 * 1024 * 1024
    config: str = ""
    scrub: Callable[[bytes], bytes] = staticmethod(lambda data: data)  # type: ignore[assignment]


LIMITS = Limits()


@dataclass
class ProtocolViolation:
    client: connection.Client
    reason: Reason
    detail: str


@dataclass
class ProtocolViolationHook(commands.StartHook):
    """egress_protocol_violation(data): a refusal below the HTTP hooks, for the audit log."""

    name: ClassVar[str] = "egress_protocol_violation"
    data: ProtocolViolation


def _refusal(reason: Reason, detail: str) -> bytes:
    """egress's own answer on an HTTP/1 connection that has no flow yet."""
    body = denial_body(reason, detail, method="-", url="-", config=LIMITS.config).encode()
    status = http_status(reason)
    resp = http.Response.make(
        status, body,
        {"content-type": "text/plain; charset=utf-8", "x-egress-reason": reason.value,
         "connection": "close"},
    )  # fmt: skip
    resp.reason = {431: "Request Header Fields Too Large"}.get(status, resp.reason)
    from mitmproxy.net.http.http1 import assemble_response

    return assemble_response(resp)


def client_error_message(message: str) -> str:
    """What a client sees when the upstream failed: mitmproxy's text quotes raw upstream
    bytes (a malformed head, a cut-off response), which could hold a secret. The text with
    the cause goes to the audit log, redacted."""
    return (
        f"egress could not complete this request: {Reason.UPSTREAM_ERROR.value} "
        "(the upstream failed or sent something that is not valid HTTP; the audit log says what)"
    )


class _TrailerReader:
    """An h11 body reader whose EndOfMessage keeps its trailers aside, so that mitmproxy
    (which raises on HTTP/1 trailers) sees a plain end and egress emits the trailers."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def __call__(self, buf: Any) -> Any:
        ev = self.inner(buf)
        if isinstance(ev, h11.EndOfMessage) and ev.headers:
            self.trailers = [(bytes(k), bytes(v)) for k, v in ev.headers]
            return h11.EndOfMessage()
        return ev

    def read_eof(self) -> Any:
        return self.inner.read_eof()


def _read_body_with_trailers(conn: Any, parent: Any, event: Any, trailers_cls: Any,
                             eom_cls: Any) -> layer.CommandGenerator[None]:  # fmt: skip
    if not isinstance(conn.body_reader, _TrailerReader):
        conn.body_reader = _TrailerReader(conn.body_reader)
    reader = conn.body_reader
    gen = parent(event)
    reply = None
    while True:
        try:
            cmd = gen.send(reply)
        except StopIteration:
            return
        if isinstance(cmd, ReceiveHttp) and isinstance(cmd.event, eom_cls) and reader.trailers:
            yield ReceiveHttp(trailers_cls(cmd.event.stream_id, http.Headers(reader.trailers)))
            reader.trailers = None
        reply = yield cmd


def _head_too_large(buf: Any) -> bool:
    return len(buf) > LIMITS.max_head and not _BLANK_LINE.search(bytes(buf)[: LIMITS.max_head + 4])


def _end_with_trailers(
    conn: Any, headers: http.Headers, trailers: http.Headers, **done: bool
) -> layer.CommandGenerator[bool]:
    """End a chunked HTTP/1 message with its trailers in the last chunk; False when the
    message is not chunked (HTTP/1 has no way to send them: the caller ends it as usual)."""
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return False
    yield commands.SendData(conn.conn, b"0\r\n" + bytes(trailers) + b"\r\n")
    yield from conn.mark_done(**done)
    return True


class GuardedHttp1Server(_http1.Http1Server):
    _resp_trailers: http.Headers | None = None

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and _head_too_large(self.buf):
            detail = f"the request head is over limits.max_head_bytes ({LIMITS.max_head} bytes)"
            yield ProtocolViolationHook(ProtocolViolation(self.conn, Reason.HEAD_TOO_LARGE, detail))
            yield commands.SendData(self.conn, _refusal(Reason.HEAD_TOO_LARGE, detail))
            yield commands.CloseConnection(self.conn)
            self.buf = _http1.ReceiveBuffer()
            self.state = self.done
            return
        # A head mitmproxy cannot parse gets its 400 page, unaudited: egress answers with its
        # own (reason code, what to change) and audits it.
        inner = super().read_headers(event)
        reply = None
        while True:
            try:
                cmd = inner.send(reply)
            except StopIteration:
                return
            if (
                isinstance(cmd, commands.SendData)
                and cmd.connection is self.conn
                and cmd.data.startswith(b"HTTP/1.1 400 ")
            ):
                found = _ERROR_TEXT.search(cmd.data)
                cause = html.unescape(found.group(1).decode("utf-8", "replace")) if found else ""
                detail = f"the request head is not valid HTTP/1.1 ({cause})"
                if self.request is None:  # with a request, the flow's error hook audits it
                    yield ProtocolViolationHook(
                        ProtocolViolation(self.conn, Reason.MALFORMED_REQUEST, detail)
                    )
                cmd = commands.SendData(self.conn, _refusal(Reason.MALFORMED_REQUEST, detail))
            reply = yield cmd

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from _read_body_with_trailers(
            self, super().read_body, event, RequestTrailers, RequestEndOfMessage
        )

    def wait(self, event: events.Event) -> layer.CommandGenerator[None]:
        # mitmproxy appends whatever the client sends while its response is pending and
        # ignores it here: without a cap, a client can fill the proxy's memory.
        if isinstance(event, events.DataReceived) and len(self.buf) > LIMITS.max_head:
            detail = f"the client sent over {LIMITS.max_head} bytes ahead of its pending response"
            yield ProtocolViolationHook(ProtocolViolation(self.conn, Reason.HEAD_TOO_LARGE, detail))
            yield commands.CloseConnection(self.conn)
            yield ReceiveHttp(
                RequestProtocolError(self.stream_id, detail, RequestProtocolError.code)  # type: ignore[arg-type]
            )
            self.buf = _http1.ReceiveBuffer()
            self.state = self.done
            return
        yield from super().wait(event)

    def send(self, event: Any) -> layer.CommandGenerator[None]:
        if isinstance(event, ResponseProtocolError):
            event = dataclasses.replace(event, message=client_error_message(event.message))
        if isinstance(event, ResponseTrailers):
            self._resp_trailers = event.trailers  # written with the last chunk
            return
        if isinstance(event, ResponseEndOfMessage) and self._resp_trailers and self.response:
            trailers, self._resp_trailers = self._resp_trailers, None
            headers = self.response.headers
            if self.request is not None and self.request.method != "HEAD":
                if (yield from _end_with_trailers(self, headers, trailers, response=True)):
                    return
        yield from super().send(event)


class GuardedHttp1Client(_http1.Http1Client):
    _req_trailers: http.Headers | None = None

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        if (
            isinstance(event, events.DataReceived)
            and self.request is not None
            and self.stream_id is not None
            and _head_too_large(self.buf)
        ):
            yield commands.CloseConnection(self.conn)
            yield ReceiveHttp(
                ResponseProtocolError(
                    self.stream_id,
                    f"the upstream's response head is over limits.max_head_bytes ({LIMITS.max_head} bytes)",
                    ResponseProtocolError.code,  # type: ignore[arg-type]
                )
            )
            self.buf = _http1.ReceiveBuffer()
            self.state = self.done
            return
        yield from super().read_headers(event)

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from _read_body_with_trailers(
            self, super().read_body, event, ResponseTrailers, ResponseEndOfMessage
        )

    def send(self, event: Any) -> layer.CommandGenerator[None]:
        if isinstance(event, RequestTrailers):
            self._req_trailers = event.trailers
            return
        if isinstance(event, RequestEndOfMessage) and self._req_trailers and self.request:
            trailers, self._req_trailers = self._req_trailers, None
            if (yield from _end_with_trailers(self, self.request.headers, trailers, request=True)):
                return
        yield from super().send(event)


class GuardedHttp2Server(_http2.Http2Server):
    def __init__(self, context: Any):
        super().__init__(context)
        self._resets: collections.deque[float] = collections.deque()
        self._streams_seen = 0
        self._reset_in_read: set[int] = set()
        receive = self.h2_conn.receive_data

        def receive_data(data: bytes) -> list[h2.events.Event]:
            # Look ahead: a stream reset in the same read as its HEADERS would otherwise be
            # dropped by mitmproxy, and the request sent upstream all the same.
            evs = receive(data)
            self._reset_in_read = {e.stream_id for e in evs if isinstance(e, h2.events.StreamReset)}
            return evs

        self.h2_conn.receive_data = receive_data  # type: ignore[method-assign]

    def _refuse(self, detail: str) -> layer.CommandGenerator[None]:
        yield ProtocolViolationHook(ProtocolViolation(self.conn, Reason.STREAM_FLOOD, detail))
        yield from super().protocol_error(detail, error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def protocol_error(
        self, message: str, error_code: int = h2.errors.ErrorCodes.PROTOCOL_ERROR
    ) -> layer.CommandGenerator[None]:
        """The HTTP/2 library refused what the client sent (an invalid header, a bad
        frame): the connection ends with a GOAWAY, and egress audits why."""
        yield ProtocolViolationHook(ProtocolViolation(self.conn, Reason.MALFORMED_REQUEST, message))
        yield from super().protocol_error(message, error_code)

    def _count_reset(self) -> bool:
        now = time.monotonic()
        self._resets.append(now)
        while self._resets and now - self._resets[0] > LIMITS.reset_window:
            self._resets.popleft()
        return len(self._resets) > LIMITS.max_resets

    def handle_h2_event(self, event: h2.events.Event) -> layer.CommandGenerator[bool]:
        if isinstance(event, h2.events.RequestReceived):
            self._streams_seen += 1
            if self._streams_seen > LIMITS.max_streams:
                yield from self._refuse(
                    f"more than limits.max_streams_per_connection ({LIMITS.max_streams}) streams"
                )
                return True
            if event.stream_id in self._reset_in_read:
                if self._count_reset():
                    yield from self._refuse(self._reset_detail())
                    return True
                return False  # reset before egress saw it: never a flow, never sent
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id not in self._reset_in_read or event.stream_id in self.streams:
                if self._count_reset():
                    yield from self._refuse(self._reset_detail())
                    return True
        return (yield from super().handle_h2_event(event))

    @staticmethod
    def _reset_detail() -> str:
        return (
            f"more than limits.max_stream_resets ({LIMITS.max_resets}) stream resets in "
            f"{LIMITS.reset_window:g} s (HTTP/2 rapid reset)"
        )

    def _handle_event(self, event: Any) -> layer.CommandGenerator[None]:
        if isinstance(event, ResponseProtocolError):
            event = dataclasses.replace(event, message=client_error_message(event.message))
        yield from super()._handle_event(event)


class GuardedHttpLayer(mhttp.HttpLayer):
    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start) and self.context.client not in self.connections:
            alpn = self.context.client.alpn
            if alpn == b"h2":
                self.connections[self.context.client] = GuardedHttp2Server(self.context.fork())
            elif not mhttp.is_h3_alpn(alpn):
                self.connections[self.context.client] = GuardedHttp1Server(self.context.fork())
        # HttpLayer fills its client connection with connections.setdefault(): ours stays.
        yield from super()._handle_event(event)


def guard_layers(top: layer.Layer | None) -> None:
    """Turn the plain HttpLayers of a freshly chosen layer stack into GuardedHttpLayers."""
    for _ in range(10):
        if top is None:
            return
        if type(top) is mhttp.HttpLayer:
            top.__class__ = GuardedHttpLayer
        top = getattr(top, "child_layer", None)


# --- WebSocket ---------------------------------------------------------------------------


class CappedPerMessageDeflate(wsproto.extensions.PerMessageDeflate):
    """permessage-deflate that never inflates a message past the cap (wsproto's has no
    output limit)."""

    _inflated = 0

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> Any:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        room = LIMITS.max_ws_message - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)  # type: ignore[union-attr]
        except zlib.error:
            return wsproto.frame_protocol.CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > LIMITS.max_ws_message:
            return wsproto.frame_protocol.CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: Any, fin: bool) -> Any:
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)


class GuardedWebsocketConnection(mws.WebsocketConnection):
    """Caps messages (close 1009) and scrubs the upstream's control-frame payloads."""

    _msg_size = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for ext in self._proto.extensions:
            if type(ext) is wsproto.extensions.PerMessageDeflate:
                ext.__class__ = CappedPerMessageDeflate

    def events(self) -> Any:
        from_upstream = self.client  # wsproto's client side talks to the upstream
        for ev in super().events():
            if isinstance(ev, wsproto.events.Message):
                data = ev.data.encode() if isinstance(ev.data, str) else ev.data
                self._msg_size += len(data)
                if self._msg_size > LIMITS.max_ws_message:
                    self._msg_size = 0
                    yield wsproto.events.CloseConnection(
                        code=1009, reason="egress: message_too_large"
                    )
                    return
                if ev.message_finished:
                    self._msg_size = 0
            elif from_upstream and isinstance(ev, wsproto.events.Ping | wsproto.events.Pong):
                ev = type(ev)(payload=LIMITS.scrub(bytes(ev.payload)))
            elif from_upstream and isinstance(ev, wsproto.events.CloseConnection) and ev.reason:
                reason = LIMITS.scrub(ev.reason.encode()).decode("utf-8", "replace")
                ev = wsproto.events.CloseConnection(code=ev.code, reason=reason)
            yield ev


class GuardedWebsocketLayer(mws.WebsocketLayer):
    """A message an addon killed the flow over (the leak guard) closes both sides (1008):
    mitmproxy's own layer ignores a kill while relaying."""

    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        inner = super().relay_messages(event)
        reply = None
        while True:
            try:
                cmd = inner.send(reply)
            except StopIteration:
                return
            reply = yield cmd
            if isinstance(cmd, mws.WebsocketMessageHook) and self.flow.error is not None:
                inner.close()
                yield from self._close_both()
                return

    def _close_both(self) -> layer.CommandGenerator[None]:
        assert self.flow.websocket is not None
        close = wsproto.events.CloseConnection(code=1008, reason="egress: policy violation")
        self.flow.websocket.close_code, self.flow.websocket.close_reason = close.code, close.reason
        self.flow.websocket.timestamp_end = time.time()
        for ws in (self.server_ws, self.client_ws):
            if ws.state in (wsproto.connection.ConnectionState.OPEN,
                            wsproto.connection.ConnectionState.REMOTE_CLOSING):  # fmt: skip
                yield ws.send2(close)
            yield commands.CloseConnection(ws.conn)
        yield mws.WebsocketEndHook(self.flow)
        self.flow.live = False
        self._handle_event = self.done


def install() -> None:
    """Replace the two classes mitmproxy builds by name; idempotent. Refuses to start over
    someone else's replacement rather than silently losing the limits."""
    originals = ((mhttp, "Http1Client", GuardedHttp1Client),
                 (mws, "WebsocketConnection", GuardedWebsocketConnection),
                 (mws, "WebsocketLayer", GuardedWebsocketLayer))  # fmt: skip
    for module, name, ours in originals:
        current = getattr(module, name)
        if current not in (ours, ours.__bases__[0]):
            raise RuntimeError(
                f"mitmproxy's {name} was replaced by {current!r}; egress needs its own"
            )
        setattr(module, name, ours)


class ProtocolGuard(EgressAddon):
    """Puts the guarded layers in place and hands them the config's limits."""

    def load(self, loader: Any) -> None:
        super().load(loader)
        install()

    def configure(self, updated: set[str]) -> None:
        super().configure(updated)
        if self._runtime is None:
            return
        rt = self.runtime
        lim = rt.config.limits
        LIMITS.max_head, LIMITS.max_streams = lim.max_head_bytes, lim.max_streams_per_connection
        LIMITS.max_resets, LIMITS.reset_window = (
            lim.max_stream_resets,
            lim.stream_reset_window_seconds,
        )
        LIMITS.max_ws_message, LIMITS.config = lim.max_websocket_message_bytes, rt.config.path
        LIMITS.scrub = lambda data: rt.index().scrub(data)[0]

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        guard_layers(nextlayer.layer)


addons = [ProtocolGuard()]
