"""Secret injection: swap placeholders for real secrets on requests to bound hosts only."""

from __future__ import annotations

from egress.addons.base import EgressAddon, deny, meta
from mitmproxy import http

from egress.injection import Denial, RequestParts, plan
from egress.reasons import Reason


class SecretInjector(EgressAddon):
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or meta(flow).get("decision") != "allow":
            return
        rt = self.runtime
        m = meta(flow)
        req = flow.request
        streamed = req.raw_content is None
        body: bytes | None = None if streamed else req.get_content(strict=False)
        host = m["host"]
        if streamed and any("body" in s.surfaces and s.bound_to(host) for s in rt.config.secrets):
            deny(flow, rt, Reason.BODY_TOO_LARGE,
                 f"the request body is over limits.max_body_bytes "
                 f"({rt.config.max_body_bytes}) and cannot be scanned for placeholders")  # fmt: skip
            return
        parts = RequestParts(
            scheme=m["scheme"],
            host=host,
            method=req.method,
            path=req.path,
            headers=tuple(req.headers.items(multi=True)),
            body=body,
            content_type=req.headers.get("content-type", ""),
        )
        result = plan(parts, [(s, rt.secrets.get(s.name)) for s in rt.config.secrets])
        if isinstance(result, Denial):
            deny(flow, rt, result.reason, result.detail, rule=m.get("rule"), secret=result.secret)
            return
        if not result.injected:
            return
        req.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in result.headers]
        )  # fmt: skip
        req.path = result.path
        if result.body_changed and result.body is not None:
            req.content = result.body
        m["secrets"] = list(result.injected)
        if result.derived:
            m["derived"] = result.derived  # SecretValue pairs, for the response scrubber


addons = [SecretInjector()]
