"""Response scrubbing: a real secret value never reaches the agent, in any common encoding,
even when an upstream reflects it (echo services, error pages that quote the request).

Buffered bodies are decoded (gzip, deflate, br, zstd), scrubbed and encoded again, and
Content-Length follows. Bodies streamed because they are large or of unknown length are
scrubbed chunk by chunk, with same-length masks so that the Content-Length already sent
stays true. A body that cannot be scrubbed (an unknown content-encoding, or a compressed
body too large to buffer) is refused on a flow that carried an injected secret.
"""

from __future__ import annotations

import asyncio

from egress.addons.base import EgressAddon, deny, fail_closed, meta, policy_of
from egress.addons.inject import INLINE_SCAN_BYTES, yield_interpreter
from mitmproxy import http

from egress import decoding
from egress.encodings import make_forms
from egress.reasons import Reason
from egress.secretindex import SecretIndex
from egress.secrets import SecretValue
from egress.streamscrub import StreamScrubber


def _encoding(resp: http.Response) -> str:
    return resp.headers.get("content-encoding", "").strip().lower()


def _flow_index(flow: http.HTTPFlow) -> SecretIndex | None:
    """Values secret to this flow only (a signature egress made for it: a credential for
    that request), in every encoding the scrubber knows, each masked with zeros of its
    length. Built once per flow that has one."""
    m = meta(flow)
    values = m.get("scrub_extra")
    if not values:
        return None
    if "flow_index" not in m:
        forms = [make_forms("signature", SecretValue(v.decode("ascii", "replace")), "0" * len(v))
                 for v in dict.fromkeys(values)]  # fmt: skip
        m["flow_index"] = SecretIndex(forms)
    return m["flow_index"]


def _mask_extra(flow: http.HTTPFlow, data: bytes) -> tuple[bytes, int]:
    index = _flow_index(flow)
    if index is None or not data:
        return data, 0
    return index.scrub(data)


class _Chain:
    """Two stream scrubbers, one after the other (the runtime's, then the flow's)."""

    def __init__(self, first: StreamScrubber, second: StreamScrubber):
        self.first, self.second = first, second

    @property
    def count(self) -> int:
        return self.first.count + self.second.count

    def __call__(self, chunk: bytes) -> list[bytes]:
        out = [piece for part in self.first(chunk) for piece in self.second(part)]
        if chunk == b"":
            out += self.second(b"")
        return out


class _ReplaceBody:
    """A stream callable that sends ``body`` in place of the first upstream chunk and drops
    every upstream byte."""

    def __init__(self, body: bytes):
        self.body: bytes | None = body

    def __call__(self, chunk: bytes) -> list[bytes]:
        out, self.body = ([self.body] if self.body else []), None
        return out


class ResponseScrubber(EgressAddon):
    def _active(self, flow: http.HTTPFlow) -> bool:
        return (
            flow.response is not None
            and meta(flow).get("decision") == "allow"
            and bool(self.runtime.index().forms)
        )

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not self._active(flow):
            return
        resp = flow.response
        assert resp is not None
        self._scrub_headers(flow, resp)
        coding = resp.headers.get("transfer-encoding", "").strip().lower()
        if coding and coding != "chunked":
            # gzip, chunked (asked for with TE: gzip, which egress never forwards): the body
            # would pass undecoded, past the scrubber.
            self._refuse(
                flow,
                f"the response's Transfer-Encoding is {coding!r}, which egress does not decode",
            )
            return
        length = resp.headers.get("content-length", "")
        large = not length.isdigit() or int(length) > self.runtime.config.max_body_bytes
        if not large and not resp.stream:
            return  # buffered: scrubbed whole in response()
        if _encoding(resp) in ("", "identity"):
            scrubber: StreamScrubber | _Chain = StreamScrubber(self.runtime.index())
            extra = _flow_index(flow)
            if extra is not None:
                scrubber = _Chain(scrubber, StreamScrubber(extra))
            meta(flow)["stream_scrubber"] = scrubber
            resp.stream = scrubber
        elif self._strict(flow):
            self._refuse(flow, f"the response is {_encoding(resp)}-compressed and too large to buffer "
                               f"(over limits.max_body_bytes), so it cannot be scrubbed")  # fmt: skip

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        refusal = meta(flow).get("refusal_body")
        if refusal is not None and flow.response is not None:
            # Refused at its headers and the upstream sent no body: mitmproxy consumed the
            # (empty) body into the replacement; put egress's answer back.
            if not callable(flow.response.stream):
                flow.response.content = refusal
            return
        if not self._active(flow):
            return
        resp = flow.response
        assert resp is not None
        m = meta(flow)
        if resp.trailers:  # HTTP/2 and chunked trailers (grpc-message echoes, for one)
            fields, n = [], 0
            for name, value in resp.trailers.fields:
                new, k = self.runtime.index().scrub(value)
                new, k2 = _mask_extra(flow, new)
                fields.append((name, new))
                n += k + k2
            if n:
                resp.trailers = http.Headers(fields)
                m["scrubbed"] = m.get("scrubbed", 0) + n
        if "stream_scrubber" in m:
            m["scrubbed"] = m.get("scrubbed", 0) + m.pop("stream_scrubber").count
            return
        if resp.raw_content is None:
            return
        if not decoding.is_known(_encoding(resp)):
            if self._strict(flow):
                self._refuse(
                    flow, f"the response has an unknown content-encoding ({_encoding(resp)!r})"
                )
            return
        try:
            # Never mitmproxy's own decoder: it has no output limit.
            body = decoding.decode(
                resp.raw_content, _encoding(resp), self.runtime.config.max_body_bytes
            )
        except decoding.DecodeError as e:
            if self._strict(flow):
                self._refuse(
                    flow, f"the response's {_encoding(resp)} body cannot be scrubbed ({e})"
                )
            return
        if len(body) > INLINE_SCAN_BYTES:  # off the event loop: other clients keep going
            new_body, n = await asyncio.to_thread(
                self.runtime.index().scrub, body, yield_interpreter
            )
        else:
            new_body, n = self.runtime.index().scrub(body)
        new_body, k = _mask_extra(flow, new_body)
        n += k
        if n:
            resp.headers.pop("content-encoding", None)  # sent decoded: any coding, any stack
            resp.content = new_body  # fixes Content-Length
            m["scrubbed"] = m.get("scrubbed", 0) + n

    def _strict(self, flow: http.HTTPFlow) -> bool:
        """Did this flow carry an injected secret that does not allow unscrubbable responses?"""
        injected = set(meta(flow).get("secrets", ()))
        if not injected:
            return False
        # Under the request's policy and the one in force now (a reload between injection
        # and response): strict if either says so, or if the secret is in neither.
        specs = [*policy_of(flow, self.runtime).config.secrets, *self.runtime.config.secrets]
        lenient = {s.name for s in specs if s.allow_unscrubbable}
        strict = {s.name for s in specs if not s.allow_unscrubbable}
        return any(name in strict or name not in lenient for name in injected)

    def _scrub_headers(self, flow: http.HTTPFlow, resp: http.Response) -> None:
        index = self.runtime.index()
        # One pass over the whole head first: nearly always nothing to scrub.
        head = b"\n".join([resp.data.reason, *(v for _, v in resp.headers.fields)])
        if not index.candidates(head) and not _mask_extra(flow, head)[1]:
            return
        reason, total = index.scrub(resp.data.reason)  # the status line's reason phrase
        reason, k = _mask_extra(flow, reason)
        total += k
        if total:
            resp.data.reason = reason
        fields = []
        for name, value in resp.headers.fields:
            new, n = index.scrub(value)
            new, k = _mask_extra(flow, new)
            total += n + k
            fields.append((name, new))
        if total:
            resp.headers = http.Headers(fields)
            meta(flow)["scrubbed"] = meta(flow).get("scrubbed", 0) + total

    def _refuse(self, flow: http.HTTPFlow, why: str) -> None:
        """Answer with egress's 502 instead of the upstream's response. Refused at its
        headers, the upstream's body is still to come, and mitmproxy would put it into the
        response that replaced it (or stream it raw once it grows past the streaming limit):
        the replacement is therefore streamed, and every upstream byte is dropped."""
        headers_phase = flow.response is not None and flow.response.raw_content is None
        deny(
            flow,
            self.runtime,
            Reason.UNSCRUBBABLE_RESPONSE,
            f"{why}; the response was not passed on",
        )
        denial = flow.response
        if headers_phase and denial is not None:
            body = denial.raw_content or b""
            meta(flow)["refusal_body"] = body
            denial.stream = _ReplaceBody(body)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or meta(flow).get("decision") != "allow":
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            try:
                new, n = self.runtime.index().scrub(message.content)
                new, k = _mask_extra(flow, new)
                n += k
            except Exception:  # noqa: BLE001 (never pass an unscrubbed message on)
                flow.kill()
                return
            if n:
                message.content = new
                meta(flow)["scrubbed"] = meta(flow).get("scrubbed", 0) + n


addons = [ResponseScrubber()]
