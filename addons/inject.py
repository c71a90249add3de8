"""Secret injection: swap placeholders for real secrets on requests to bound hosts only.

Two phases, because mitmproxy sends a streamed request's headers upstream before the body
has arrived: headers, path and query are checked and injected when the headers arrive
(before anything is sent); a buffered body is checked and injected when it is complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from egress.addons.audit import record_websocket
from egress.addons.base import EgressAddon, decoded_body, deny, fail_closed, meta
from mitmproxy import http

from egress.deepfind import find_deep
from egress.encodings import Pause, no_pause
from egress.injection import (
    Denial,
    Injection,
    RequestParts,
    is_signed,
    plan,
    refuse_signed_body,
    undecodable_body,
    unscannable_body,
)
from egress.reasons import Reason

# Bodies up to this size are checked on the event loop; larger ones in a worker thread.
INLINE_SCAN_BYTES = 256 * 1024


def yield_interpreter() -> None:
    """Between two C-speed passes in a worker thread: let the event loop take the
    interpreter at once. Without it the loop waits for the switch interval (5 ms) at each
    hand-over, and a request that needs many hand-overs waits far longer."""
    time.sleep(0)


class SecretInjector(EgressAddon):
    def _plan(
        self, flow: http.HTTPFlow, parts: RequestParts, pause: Pause = no_pause
    ) -> Denial | Injection:
        return plan(parts, None, self.runtime.index(), pause)

    def _parts(self, flow: http.HTTPFlow, headers: bool, body: bytes | None) -> RequestParts:
        m, req = meta(flow), flow.request
        return RequestParts(
            scheme=m["scheme"],
            host=m["host"],
            method=req.method,
            path=req.path if headers else "/",
            headers=tuple(req.headers.items(multi=True)) if headers else (),
            body=body,
            content_type=req.headers.get("content-type", ""),
            transparent=bool(m.get("transparent")),
        )

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or meta(flow).get("decision") != "allow":
            return
        rt, m, req = self.runtime, meta(flow), flow.request
        length = req.headers.get("content-length", "")
        if length.isdigit():
            # Over the limit the body will stream unbuffered: it cannot be scanned.
            unscannable = unscannable_body(
                int(length), rt.config.max_body_bytes, rt.index(), m["host"]
            )
            if unscannable is not None:
                deny(flow, rt, unscannable.reason, unscannable.detail)
                return
        parts = self._parts(flow, headers=True, body=None)
        m["signed"] = is_signed(parts)
        m["bytes_in"] = int(length) if length.isdigit() else 0
        self._apply(flow, self._plan(flow, parts))

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        m, req = meta(flow), flow.request
        if flow.response is not None or m.get("decision") != "allow" or req.raw_content is None:
            return  # a streamed body (over limits.max_body_bytes) is not scanned
        m["bytes_in"] = len(req.raw_content)  # as the client sent it
        if req.trailers and self._refuse_trailers(flow, req.trailers):
            return
        body = decoded_body(req, self.runtime.config.max_body_bytes)
        if body is None:
            # Not mitmproxy's decoder (no output limit, Python codecs for unknown names):
            # a body egress cannot decode within the limit cannot be checked.
            undecodable = undecodable_body(
                req.headers.get("content-encoding", ""), self.runtime.config.max_body_bytes
            )
            deny(flow, self.runtime, undecodable.reason, undecodable.detail, rule=m.get("rule"))
            return
        if not body:
            return
        parts = self._parts(flow, headers=False, body=body)
        if len(body) > INLINE_SCAN_BYTES:
            # The leak guard reads a large body in several C-speed passes: off the event
            # loop, so that other clients are not kept waiting meanwhile.
            result = await asyncio.to_thread(self._plan, flow, parts, yield_interpreter)
        else:
            result = self._plan(flow, parts)
        self._apply(flow, refuse_signed_body(result, bool(m.get("signed"))))

    def _refuse_trailers(self, flow: http.HTTPFlow, trailers: http.Headers) -> bool:
        """Trailers are another channel the agent writes to: the same guards as headers, and
        never a substitution (a placeholder there is refused)."""
        parts = dataclasses.replace(
            self._parts(flow, headers=False, body=None),
            headers=tuple((k.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                          for k, v in trailers.fields),
        )  # fmt: skip
        result = self._plan(flow, parts)
        if isinstance(result, Denial):
            deny(flow, self.runtime, result.reason, f"{result.detail} (in the request's trailers)",
                 rule=meta(flow).get("rule"), secret=result.secret)  # fmt: skip
            return True
        if result.injected:
            deny(flow, self.runtime, Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED,
                 f"the placeholder of secret {result.injected[0]!r} is in the request's trailers, "
                 "where placeholders are never substituted; send it in a header",
                 rule=meta(flow).get("rule"), secret=result.injected[0])  # fmt: skip
            return True
        return False

    def _apply(self, flow: http.HTTPFlow, result: Denial | Injection) -> None:
        m, req, rt = meta(flow), flow.request, self.runtime
        if isinstance(result, Denial):
            deny(flow, rt, result.reason, result.detail, rule=m.get("rule"), secret=result.secret)
            return
        if not result.injected:
            return
        if m.get("would_deny"):
            return  # report mode: never inject into a request enforce mode would deny
        if result.body_changed and result.body is not None:
            req.content = result.body
        else:
            req.headers = http.Headers(
                [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                 for k, v in result.headers]
            )  # fmt: skip
            req.path = result.path
        m["secrets"] = [*m.get("secrets", []), *result.injected]

    @fail_closed
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """The outbound leak guard on every WebSocket message the agent sends (text and
        binary, however fragmented: mitmproxy hands over whole messages, capped in size by
        ProtocolGuard): a placeholder or a real value of a secret not bound to this host
        closes the connection, as it refuses a request."""
        if flow.websocket is None or meta(flow).get("decision") != "allow":
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            return
        rt, host = self.runtime, meta(flow)["host"]
        index = rt.index()
        view = index.host(host)
        content = message.content
        found: tuple[Reason, str, str] | None = None
        for k in sorted(index.placeholders_in(content)):
            if k not in view.bound_set:
                found = (Reason.PLACEHOLDER_TO_UNBOUND_HOST, index.specs[k].name, "its placeholder")
                break
        if found is None:
            if len(content) > INLINE_SCAN_BYTES:
                leaked = await asyncio.to_thread(
                    find_deep, content, index, view.guard, yield_interpreter
                )
            else:
                leaked = find_deep(content, index, view.guard)
            if leaked:
                found = (Reason.SECRET_TO_UNBOUND_HOST, leaked[0], f"its real value ({leaked[1]})")
        if found is not None:
            reason, name, what = found
            record_websocket(flow, rt, reason,
                             f"a WebSocket message to {host!r} carried {what} of secret {name!r}, "
                             "which is not bound to that host; the connection was closed", name)  # fmt: skip
            message.drop()
            flow.kill()


addons = [SecretInjector()]
