"""Secret injection: swap placeholders for real secrets on requests to bound hosts only.

Two phases, because mitmproxy sends a streamed request's headers upstream before the body
has arrived: headers, path and query are checked and injected when the headers arrive
(before anything is sent); a buffered body is checked and injected when it is complete.
"""

from __future__ import annotations

from egress.addons.base import EgressAddon, deny, fail_closed, meta
from mitmproxy import http

from egress.encodings import SecretForms
from egress.injection import Denial, Injection, RequestParts, is_signed, plan
from egress.reasons import Reason


class SecretInjector(EgressAddon):
    def _plan(self, flow: http.HTTPFlow, parts: RequestParts) -> Denial | Injection:
        rt = self.runtime
        forms: dict[str, list[SecretForms]] = {}
        for f in rt.forms():
            forms.setdefault(f.name, []).append(f)
        return plan(parts, [(s, rt.secrets.get(s.name)) for s in rt.config.secrets], forms)

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
        host = m["host"]
        if (
            length.isdigit()
            and int(length) > rt.config.max_body_bytes
            and any("body" in s.surfaces and s.bound_to(host) for s in rt.config.secrets)
        ):
            # The body will stream unbuffered: it cannot be scanned for placeholders.
            deny(flow, rt, Reason.BODY_TOO_LARGE,
                 f"the request body ({length} bytes) is over limits.max_body_bytes "
                 f"({rt.config.max_body_bytes}) and cannot be scanned for placeholders")  # fmt: skip
            return
        parts = self._parts(flow, headers=True, body=None)
        m["signed"] = is_signed(parts)
        m["bytes_in"] = int(length) if length.isdigit() else 0
        self._apply(flow, self._plan(flow, parts))

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        m, req = meta(flow), flow.request
        if flow.response is not None or m.get("decision") != "allow" or req.raw_content is None:
            return  # a streamed body (over limits.max_body_bytes) is not scanned
        body = req.get_content(strict=False)
        m["bytes_in"] = len(req.raw_content)  # as the client sent it
        if not body:
            return
        result = self._plan(flow, self._parts(flow, headers=False, body=body))
        if isinstance(result, Injection) and result.injected and m.get("signed"):
            deny(flow, self.runtime, Reason.SIGNATURE_SCHEME_UNSUPPORTED,
                 "the request is signed (AWS SigV4) and its body carries a placeholder: the signature "
                 "was computed over the placeholder; egress does not inject into signed requests",
                 rule=m.get("rule"), secret=result.injected[0])  # fmt: skip
            return
        self._apply(flow, result)

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


addons = [SecretInjector()]
