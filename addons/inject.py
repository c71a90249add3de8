"""Secret injection: swap placeholders for real secrets on requests to bound hosts only."""

from __future__ import annotations

from egress.addons.base import EgressAddon, deny, fail_closed, meta
from mitmproxy import http

from egress.injection import Denial, RequestParts, plan
from egress.reasons import Reason


class SecretInjector(EgressAddon):
    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A body over limits.max_body_bytes streams through unbuffered, so it cannot be
        scanned: refuse it here, before it is sent, if a secret bound to this host injects
        into bodies."""
        if flow.response is not None or meta(flow).get("decision") != "allow":
            return
        rt = self.runtime
        length = flow.request.headers.get("content-length", "")
        if not (length.isdigit() and int(length) > rt.config.max_body_bytes):
            return
        host = meta(flow)["host"]
        if any("body" in s.surfaces and s.bound_to(host) for s in rt.config.secrets):
            deny(flow, rt, Reason.BODY_TOO_LARGE,
                 f"the request body ({length} bytes) is over limits.max_body_bytes "
                 f"({rt.config.max_body_bytes}) and cannot be scanned for placeholders")  # fmt: skip

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or meta(flow).get("decision") != "allow":
            return
        rt = self.runtime
        m = meta(flow)
        req = flow.request
        # A streamed body (over limits.max_body_bytes) is not scanned; requestheaders()
        # refused it already if a secret bound to this host injects into bodies.
        body = None if req.raw_content is None else req.get_content(strict=False)
        m["bytes_in"] = len(req.raw_content or b"")  # as the client sent it
        host = m["host"]
        parts = RequestParts(
            scheme=m["scheme"],
            host=host,
            method=req.method,
            path=req.path,
            headers=tuple(req.headers.items(multi=True)),
            body=body,
            content_type=req.headers.get("content-type", ""),
        )
        forms: dict[str, list] = {}
        for f in rt.forms():
            forms.setdefault(f.name, []).append(f)
        result = plan(parts, [(s, rt.secrets.get(s.name)) for s in rt.config.secrets], forms)
        if isinstance(result, Denial):
            deny(flow, rt, result.reason, result.detail, rule=m.get("rule"), secret=result.secret)
            return
        if not result.injected:
            return
        if m.get("would_deny"):
            return  # report mode: never inject into a request enforce mode would deny
        req.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in result.headers]
        )  # fmt: skip
        req.path = result.path
        if result.body_changed and result.body is not None:
            req.content = result.body
        m["secrets"] = list(result.injected)


addons = [SecretInjector()]
