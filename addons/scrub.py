"""Response scrubbing: a real secret value never reaches the agent, even when an upstream
reflects it (echo services, error pages that quote the request)."""

from __future__ import annotations

from egress.addons.base import EgressAddon, meta
from mitmproxy import http

from egress.injection import scrub


class ResponseScrubber(EgressAddon):
    def _pairs(self, flow: http.HTTPFlow) -> list[tuple[bytes, bytes]]:
        derived = [
            (v.reveal().encode(), orig.encode()) for v, orig in meta(flow).get("derived", ())
        ]
        return derived + [
            (v.reveal().encode(), s.placeholder.encode()) for s, v in self.runtime.secrets.loaded()
        ]

    def response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or meta(flow).get("decision") != "allow":
            return
        pairs = self._pairs(flow)
        if not pairs:
            return
        total = 0
        for name, value in list(resp.headers.items(multi=True)):
            new, n = scrub(value.encode("utf-8", "surrogateescape"), pairs)
            if n:
                resp.headers.set_all(name, [
                    scrub(v.encode("utf-8", "surrogateescape"), pairs)[0].decode("utf-8", "surrogateescape")
                    for v in resp.headers.get_all(name)
                ])  # fmt: skip
                total += n
        if resp.raw_content:  # buffered body (streamed bodies pass by; see docs/secrets.md)
            body = resp.get_content(strict=False) or b""
            new_body, n = scrub(body, pairs)
            if n:
                resp.content = new_body  # re-encodes and fixes Content-Length
                total += n
        if total:
            meta(flow)["scrubbed"] = total


addons = [ResponseScrubber()]
