"""What every egress addon shares: the runtime it works on and the flow helpers."""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any, cast

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy import context as connection_context
from mitmproxy.proxy.layer import NextLayer

from egress import decoding
from egress.errors import EgressError
from egress.messages import denial_body, denial_phrase
from egress.policyset import Policy
from egress.reasons import Reason, http_status
from egress.runtime import Runtime, shared

META = "egress"  # key in flow.metadata
# The policy each request is decided under. Not in flow.metadata, which mitmproxy serializes
# when flows are saved (mitmdump -w); gone with the flow.
_PINNED: weakref.WeakKeyDictionary[http.HTTPFlow, Policy] = weakref.WeakKeyDictionary()
log = logging.getLogger("egress")


class EgressAddon:
    """Base for egress addons. Embedded by ``egress run`` with a ready Runtime; loaded with
    ``mitmdump -s`` it builds one from the ``egress_config`` option."""

    def __init__(self, runtime: Runtime | None = None):
        self._runtime = runtime
        self._embedded = runtime is not None

    def load(self, loader: Any) -> None:
        if "egress_config" not in loader.master.options:
            loader.add_option(
                "egress_config", str, "",
                "Path to the egress config file (empty: the embedded default config).",
            )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if not self._embedded and ("egress_config" in updated or self._runtime is None):
            try:
                self._runtime = shared(ctx.options.egress_config)
            except EgressError as e:
                raise exceptions.OptionsError(str(e)) from None

    @property
    def runtime(self) -> Runtime:
        # Set by the constructor or configure(); hooks never run before. No assert here:
        # mitmproxy reads every attribute of an addon when it registers it.
        return cast(Runtime, self._runtime)


def fail_closed(hook: Callable[..., Any]) -> Callable[..., Any]:
    """An exception in an egress hook must never let a flow through: mitmproxy logs addon
    errors and carries on. Deny the flow (or refuse the connection) instead."""

    def refuse(self: EgressAddon, arg: Any, e: BaseException) -> None:
        log.error("egress: %s failed (%s); the flow is refused", hook.__name__, type(e).__name__)
        if isinstance(arg, http.HTTPFlow):
            try:
                deny(arg, self.runtime, Reason.INTERNAL_ERROR,
                     f"egress could not decide this request ({type(e).__name__}); it was not sent")  # fmt: skip
            except Exception:  # noqa: BLE001 (the refusal itself failed: drop the flow)
                meta(arg).update(decision="error", reason=Reason.INTERNAL_ERROR.value)
                arg.kill()
        elif isinstance(arg, NextLayer):
            arg.layer = RefuseConnection(arg.context, Reason.INTERNAL_ERROR,
                                         f"egress could not decide this connection ({type(e).__name__})")  # fmt: skip
        elif hasattr(arg, "server"):  # server_connect data
            arg.server.error = f"egress {Reason.INTERNAL_ERROR.value}: {type(e).__name__}"

    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def run_async(self: EgressAddon, arg: Any) -> None:
            try:
                await hook(self, arg)
            except Exception as e:  # noqa: BLE001 (any failure must refuse)
                refuse(self, arg, e)

        return run_async

    @functools.wraps(hook)
    def run(self: EgressAddon, arg: Any) -> None:
        try:
            hook(self, arg)
        except Exception as e:  # noqa: BLE001
            refuse(self, arg, e)

    return run


def decoded_body(message: http.Message, limit: int) -> bytes | None:
    """The body with its Content-Encoding undone, never past ``limit`` bytes and never
    through mitmproxy's decoder (no output limit, Python codecs for unknown names); None
    when it cannot be decoded within the limit."""
    raw = message.raw_content
    if raw is None:
        return None
    try:
        return decoding.decode(raw, message.headers.get("content-encoding", ""), limit)
    except decoding.DecodeError:
        return None


def meta(flow: http.HTTPFlow) -> dict[str, Any]:
    return flow.metadata.setdefault(META, {})


def policy_of(flow: http.HTTPFlow, runtime: Runtime) -> Policy:
    """The policy a request is decided under: the one in force at its first hook. A reload
    (egress.reload) changes the runtime's policy, never a request's in flight."""
    policy = _PINNED.get(flow)
    if policy is None:
        policy = _PINNED[flow] = runtime.policy
    return policy


def deny(
    flow: http.HTTPFlow, runtime: Runtime, reason: Reason, detail: str, *,
    rule: str | None = None, hint: str | None = None, secret: str | None = None,
) -> None:  # fmt: skip
    """Answer the flow ourselves; nothing reaches the upstream."""
    m = meta(flow)
    m.update(decision="deny" if http_status(reason) < 500 else "error", reason=reason.value,
             rule=rule, detail=detail)  # fmt: skip
    if secret:
        m["secret"] = secret
    req = flow.request
    url = runtime.redact(m.get("url") or req.pretty_url)
    body = denial_body(reason, runtime.redact(detail), method=req.method, url=url,
                       config=runtime.config.path, hint=hint)  # fmt: skip
    if req.method != "CONNECT" and req.stream:
        # mitmproxy cannot answer a request whose body it streams (Content-Length over
        # limits.max_body_bytes): drop it unsent. The audit record says why.
        m["status"] = None
        m["detail"] = (
            f"{detail} (the body is too large to read before answering: connection closed)"
        )
        flow.kill()
        return
    flow.response = http.Response.make(
        http_status(reason),
        # The detail may quote bytes the client sent that are not UTF-8: never fail on them.
        body.encode("utf-8", "backslashreplace"),
        {"content-type": "text/plain; charset=utf-8", "x-egress-reason": reason.value,
         "connection": "close"},
    )  # fmt: skip
    # Many clients show only the status line of a refused CONNECT: put the reason there too.
    # The host is the agent's: where a secret's value was found in it (a DNS-exfiltration
    # attempt, in any encoding), it is left out; elsewhere it is redacted like the body's URL.
    leak = reason is Reason.SECRET_TO_UNBOUND_HOST
    host = "" if leak else runtime.redact(str(m.get("host") or req.host))
    flow.response.reason = denial_phrase(reason, host, None if leak else m.get("port") or req.port)


def close_client(client_ids: set[str] | None, match: Callable[[str], bool] | None = None) -> int:
    """Close client connections (and their upstream connections) now: those whose id is in
    ``client_ids``, or for which ``match(id)`` is true. What mitmproxy's flow.kill() cannot
    do for a request whose body streams: mitmproxy does not look at a killed flow again
    before it sends the request's end. Returns how many were closed."""
    proxyserver = ctx.master.addons.get("proxyserver") if getattr(ctx, "master", None) else None
    closed = 0
    for handler in list(getattr(proxyserver, "connections", {}).values()):
        client = getattr(handler, "client", None)
        if client is None:
            continue
        if not (
            (client_ids is not None and client.id in client_ids) or (match and match(client.id))
        ):
            continue
        for conn in list(getattr(handler, "transports", {})):
            try:
                handler.close_connection(conn)
            except Exception:  # noqa: BLE001 (closing one must not stop the others)
                log.debug("egress: could not close a connection")
        closed += 1
    return closed


def cut_streamed(flow: http.HTTPFlow) -> None:
    """End a request whose body streams, before its end goes upstream: the flow is killed
    and its connections closed at once, so that its record is written now (AuditLog's
    error hook) and the upstream never gets a complete request."""
    if flow.killable:
        flow.kill()
    close_client({flow.client_conn.id})


# A fatal TLS alert record, access_denied (49): what a client shows for a refused TLS
# connection ("tlsv1 alert access denied"), sent before any handshake message.
TLS_ACCESS_DENIED = bytes([21, 3, 3, 0, 2, 2, 49])


class RefuseConnection(layer.Layer):
    """Closes the client connection (and its upstream one) without relaying a byte; the
    audit addon records why."""

    def __init__(
        self, context: connection_context.Context, reason: Reason = Reason.NON_HTTP_PROTOCOL,
        detail: str = "the client spoke something other than HTTP; the connection was closed",
        *, host: str = "", port: int = 0, scheme: str = "tcp", rule: str | None = None,
        tls_alert: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(context)
        self.reason, self.detail, self.rule = reason, detail, rule
        self.host, self.port, self.scheme = host, port, scheme
        self.tls_alert = tls_alert

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if self.tls_alert:
                yield commands.SendData(self.context.client, TLS_ACCESS_DENIED)
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
