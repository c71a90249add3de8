"""Response scrubbing: a real secret value never reaches the agent, in any common encoding,
even when an upstream reflects it (echo services, error pages that quote the request).

Buffered bodies are decoded (gzip, deflate, br, zstd), scrubbed and encoded again, and
Content-Length follows. Bodies streamed because they are large or of unknown length are
scrubbed chunk by chunk, with same-length masks so that the Content-Length already sent
stays true. A body that cannot be scrubbed (an unknown content-encoding, or a compressed
body too large to buffer) is refused on a flow that carried an injected secret.
"""

from __future__ import annotations

from egress.addons.base import EgressAddon, deny, fail_closed, meta
from mitmproxy import http

from egress.encodings import StreamScrubber, scrub, stream_forms
from egress.reasons import Reason

# What mitmproxy can decode for us.
DECODABLE = {"", "identity", "gzip", "deflate", "br", "zstd"}


def _encoding(resp: http.Response) -> str:
    return resp.headers.get("content-encoding", "").strip().lower()


class ResponseScrubber(EgressAddon):
    def _active(self, flow: http.HTTPFlow) -> bool:
        return (
            flow.response is not None
            and meta(flow).get("decision") == "allow"
            and bool(self.runtime.forms())
        )

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not self._active(flow):
            return
        resp = flow.response
        assert resp is not None
        self._scrub_headers(flow, resp)
        length = resp.headers.get("content-length", "")
        large = not length.isdigit() or int(length) > self.runtime.config.max_body_bytes
        if not large and not resp.stream:
            return  # buffered: scrubbed whole in response()
        if _encoding(resp) in ("", "identity"):
            scrubber = StreamScrubber(stream_forms(self.runtime.forms()))
            meta(flow)["stream_scrubber"] = scrubber
            resp.stream = scrubber
        elif self._strict(flow):
            self._refuse(flow, f"the response is {_encoding(resp)}-compressed and too large to buffer "
                               f"(over limits.max_body_bytes), so it cannot be scrubbed")  # fmt: skip

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        if not self._active(flow):
            return
        resp = flow.response
        assert resp is not None
        m = meta(flow)
        if resp.trailers:  # HTTP/2 and chunked trailers (grpc-message echoes, for one)
            fields, n = [], 0
            for name, value in resp.trailers.fields:
                new, k = scrub(value, self.runtime.forms())
                fields.append((name, new))
                n += k
            if n:
                resp.trailers = http.Headers(fields)
                m["scrubbed"] = m.get("scrubbed", 0) + n
        if "stream_scrubber" in m:
            m["scrubbed"] = m.get("scrubbed", 0) + m.pop("stream_scrubber").count
            return
        if resp.raw_content is None:
            return
        if _encoding(resp) not in DECODABLE:
            if self._strict(flow):
                self._refuse(
                    flow, f"the response has an unknown content-encoding ({_encoding(resp)!r})"
                )
            return
        try:
            body = resp.get_content(strict=True) or b""
        except ValueError:
            if self._strict(flow):
                self._refuse(flow, f"the response's {_encoding(resp)} body cannot be decoded")
            return
        new_body, n = scrub(body, self.runtime.forms())
        if n:
            resp.content = new_body  # encodes again and fixes Content-Length
            m["scrubbed"] = m.get("scrubbed", 0) + n

    def _strict(self, flow: http.HTTPFlow) -> bool:
        """Did this flow carry an injected secret that does not allow unscrubbable responses?"""
        injected = set(meta(flow).get("secrets", ()))
        return any(
            s.name in injected and not s.allow_unscrubbable for s in self.runtime.config.secrets
        )

    def _scrub_headers(self, flow: http.HTTPFlow, resp: http.Response) -> None:
        forms = self.runtime.forms()
        total = 0
        fields = []
        for name, value in resp.headers.fields:
            new, n = scrub(value, forms)
            total += n
            fields.append((name, new))
        if total:
            resp.headers = http.Headers(fields)
            meta(flow)["scrubbed"] = meta(flow).get("scrubbed", 0) + total

    def _refuse(self, flow: http.HTTPFlow, why: str) -> None:
        resp = flow.response
        deny(flow, self.runtime, Reason.UNSCRUBBABLE_RESPONSE,
             f"{why}; this flow carried an injected secret, so the response was not passed on")  # fmt: skip
        if resp is not None and flow.response is not resp:
            flow.response.stream = False  # type: ignore[union-attr]

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or meta(flow).get("decision") != "allow":
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            try:
                new, n = scrub(message.content, self.runtime.forms())
            except Exception:  # noqa: BLE001 (never pass an unscrubbed message on)
                flow.kill()
                return
            if n:
                message.content = new
                meta(flow)["scrubbed"] = meta(flow).get("scrubbed", 0) + n


addons = [ResponseScrubber()]
