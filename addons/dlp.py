"""Outbound data-loss prevention (docs/dlp.md): what an allowed request may say.

Runs after the allowlist and before injection, on what the agent sent: the request target
and headers when they arrive, the body when it is complete. egress's placeholders are
blanked out before matching (they are never findings) and a real secret value is left to
the secret guards (``secret_to_unbound_host``). Each finding gets the strongest action of
the rules that cover it: ``block`` answers 403 ``dlp_blocked`` naming the detectors and
where they matched; ``mask`` replaces each value by a typed token (``[EMAIL_1]``) and checks
that nothing is left; ``report`` only records. Every finding goes into the audit record and
the ``egress_dlp_findings`` counter, never its value.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from egress.addons.audit import record_websocket
from egress.addons.base import EgressAddon, cut_streamed, decoded_body, deny, fail_closed, meta
from mitmproxy import http

from egress.dlp import inbound
from egress.dlp.catalogue import catalogue
from egress.dlp.fields import Field, body_fields, header_fields, url_fields
from egress.dlp.policy import Decision, DlpConfig, DlpRule, decide, strongest, surfaces_of, too_deep
from egress.dlp.scan import Masker, Scanner
from egress.dlp.stream import StreamInspector
from egress.reasons import Reason

# Bodies up to this size are inspected on the event loop; larger ones in a worker thread.
INLINE_BYTES = 64 * 1024
# The masked values of a request, for restoring them in its response. Not in
# flow.metadata, which mitmproxy serializes when flows are saved: gone with the flow.
_MASKERS: weakref.WeakKeyDictionary[http.HTTPFlow, Masker] = weakref.WeakKeyDictionary()
# The inspector of each request whose body streams (Content-Length over the limit).
_STREAMS: weakref.WeakKeyDictionary[http.HTTPFlow, StreamInspector] = weakref.WeakKeyDictionary()


def _where(d: Decision) -> str:
    f = d.finding
    at = f" at offset {f.offset}" if f.offset is not None else ""
    how = f" ({f.how})" if f.how != "as sent" else ""
    return f"{f.detector} in {f.where}{at}{how}"


class DataLossGuard(EgressAddon):
    _scanner: tuple[DlpConfig, Scanner] | None = None

    def _config(self) -> DlpConfig | None:
        return self.runtime.config.dlp

    def _scanner_for(self, dlp: DlpConfig) -> Scanner:
        cached = self._scanner
        if cached is None or cached[0] is not dlp:
            cached = self._scanner = (dlp, Scanner(catalogue(dlp.phone_regions)))
        return cached[1]

    def _rules(self, flow: http.HTTPFlow, answered_ok: bool = False) -> tuple[DlpRule, ...]:
        """The rules for this request (``answered_ok``: its response is in, a WebSocket's
        101)."""
        dlp = self._config()
        m = meta(flow)
        if (
            dlp is None
            or (flow.response is not None and not answered_ok)
            or m.get("decision") != "allow"
        ):
            return ()
        return dlp.active(m.get("host", ""), m.get("agent"))

    def _neutral(self, text: str) -> str:
        """``text`` with egress's placeholders blanked out (same length: offsets hold)."""
        index = self.runtime.index()
        for k in index.placeholders_in(text.encode("utf-8", "surrogatepass")):
            placeholder = index.specs[k].placeholder
            text = text.replace(placeholder, " " * len(placeholder))
        return text

    def _is_secret(self, value: str) -> bool:
        """A loaded secret's real value: the secret guards decide about it."""
        return self.runtime.index().find(value.encode("utf-8", "surrogateescape")) is not None

    def _inspect(self, dlp: DlpConfig, rules: tuple[DlpRule, ...], fields: list[Field],
                 surface: str) -> list[Decision]:  # fmt: skip
        result = self._scanner_for(dlp).scan(fields, self._is_secret, neutral=self._neutral)
        findings = list(result.findings)
        if not result.complete:
            findings.append(too_deep(surface, "request"))
        return decide(findings, rules)

    def _record(self, flow: http.HTTPFlow, decisions: list[Decision]) -> None:
        m = meta(flow)
        m["dlp"] = [*m.get("dlp", []), *(d.to_dict() for d in decisions)]
        if any(d.finding.surface == "url" for d in decisions):
            # The URL holds the value: neither the audit record nor the 403 repeats it. The
            # whole query goes (a parameter's name can be the value); the path too, when
            # the value is there.
            route, sep, _ = flow.request.path.partition("?")
            if any(d.finding.where.startswith("path") for d in decisions):
                route = "/[redacted: data-loss finding]"
            m["path"] = route + ("?[redacted: data-loss finding]" if sep else "")
            m["url"] = (
                f"{m.get('scheme', 'https')}://{m.get('host', '')}:{m.get('port', '')}{m['path']}"
            )

    def _act(
        self, flow: http.HTTPFlow, decisions: list[Decision], mask: Callable[[], None]
    ) -> None:
        """Record the findings, then the strongest action: block, or ``mask``."""
        self._record(flow, decisions)
        action = strongest(decisions)
        if action == "block":
            self._block(flow, decisions)
        elif action == "mask":
            mask()

    def _block(self, flow: http.HTTPFlow, decisions: list[Decision], why: str = "") -> None:
        blocking = [d for d in decisions if d.action == "block"] or decisions
        rules = list(dict.fromkeys(d.rule.label for d in blocking))
        found = "; ".join(_where(d) for d in blocking[:8])
        more = f" and {len(blocking) - 8} more" if len(blocking) > 8 else ""
        deny(flow, self.runtime, Reason.DLP_BLOCKED,
             f"the request carries data a data-loss rule blocks{why}: {found}{more} "
             f"(rule {', '.join(rules)}); it was not sent",
             rule=", ".join(rules),
             hint="take the value out of the request; if it must reach this host, change the "
                  "rule's action or hosts under dlp.rules in the config")  # fmt: skip

    def _masker(self, flow: http.HTTPFlow) -> Masker:
        masker = _MASKERS.get(flow)
        if masker is None:
            masker = _MASKERS[flow] = Masker()
        return masker

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        rules = self._rules(flow)
        if not rules:
            return
        dlp, req = self._config(), flow.request
        assert dlp is not None
        surfaces = surfaces_of(rules)
        length = req.headers.get("content-length", "")
        if (
            "body" in surfaces
            and length.isdigit()
            and int(length) > self.runtime.config.max_body_bytes
        ):
            # mitmproxy streams it (it has set req.stream): inspect it chunk by chunk.
            # A real secret value is a finding here too: the leak guard does not read a
            # streamed body.
            inspector = _STREAMS[flow] = StreamInspector(
                self._scanner_for(dlp), rules, self._masker(flow), lambda _: False, self._neutral
            )
            before = req.stream
            if callable(before):  # the tripwires' canary search goes first
                before._then = inspector  # type: ignore[union-attr]
            else:
                req.stream = inspector
        fields: list[Field] = []
        if "url" in surfaces:
            fields += url_fields(req.path)
        if "headers" in surfaces:
            fields += header_fields(list(req.headers.items(multi=True)))
        if not fields:
            return
        decisions = self._inspect(dlp, rules, fields, "url" if "url" in surfaces else "headers")
        if not decisions:
            return
        self._act(flow, decisions, lambda: self._mask_head(flow, dlp, rules, decisions))

    def _mask_head(self, flow: http.HTTPFlow, dlp: DlpConfig, rules: tuple[DlpRule, ...],
                   decisions: list[Decision]) -> None:  # fmt: skip
        req, masker = flow.request, self._masker(flow)
        masked = [d.finding for d in decisions if d.action == "mask"]
        if any(not f.in_place for f in masked):
            self._block(flow, decisions, " (found only once decoded: it cannot be masked in place)")
            return
        url = [f for f in masked if f.surface == "url"]
        if url:
            req.path = masker.replace(
                req.path.encode("utf-8", "surrogateescape"), url, in_url=True
            ).decode("utf-8", "surrogateescape")
        if any(f.surface == "headers" for f in masked):
            heads = [f for f in masked if f.surface == "headers"]
            for name in list(req.headers.keys()):
                values = req.headers.get_all(name)
                new = [masker.replace(v.encode("utf-8", "surrogateescape"), heads).decode(
                       "utf-8", "surrogateescape") for v in values]  # fmt: skip
                if new != values:
                    req.headers.set_all(name, new)
        fields = url_fields(req.path) + header_fields(list(req.headers.items(multi=True)))
        head = "url" if "url" in surfaces_of(rules) else "headers"
        left = [d for d in self._inspect(dlp, rules, fields, head) if d.action != "report"]
        if left:
            self._block(flow, left, " (it could not be masked in place)")

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        rules = self._rules(flow)
        if not rules or "body" not in surfaces_of(rules):
            return
        dlp, req, m = self._config(), flow.request, meta(flow)
        assert dlp is not None
        strict = "body" in surfaces_of(rules, strict=True)
        inspector = _STREAMS.pop(flow, None)
        if inspector is not None:  # streamed through the inspector; the end is not sent yet
            if inspector.decisions:
                self._record(flow, inspector.decisions)
            if inspector.blocked:
                blocking = [d for d in inspector.decisions if d.action != "report"]
                m.update(decision="deny", reason=Reason.DLP_BLOCKED.value, status=None,
                         rule=", ".join(dict.fromkeys(d.rule.label for d in blocking)),
                         detail="the streamed request body carries data a data-loss rule blocks: "
                         + "; ".join(_where(d) for d in blocking[:8]) + "; nothing from the value "
                         "on was sent and the request was cut off before its end")  # fmt: skip
                cut_streamed(flow)
            return
        if req.raw_content is None:  # streamed: grew past limits.max_body_bytes
            if strict:
                m.update(decision="deny", reason=Reason.DLP_BLOCKED.value, status=None,
                         detail="the request body grew past limits.max_body_bytes without a "
                         "Content-Length, so the data-loss rules could not inspect it: the "
                         "request was cut off before its end and the connection closed")  # fmt: skip
                cut_streamed(flow)
            return
        body = decoded_body(req, self.runtime.config.max_body_bytes)
        if body is None:
            if strict:
                deny(flow, self.runtime, Reason.BODY_TOO_LARGE,
                     "the request body's content-encoding cannot be decoded within "
                     "limits.max_body_bytes, so the data-loss rules cannot inspect it")  # fmt: skip
            return
        if not body:
            return
        fields = body_fields(body, req.headers.get("content-type", ""))
        if len(body) > INLINE_BYTES:
            decisions = await asyncio.to_thread(self._inspect, dlp, rules, fields, "body")
        else:
            decisions = self._inspect(dlp, rules, fields, "body")
        if not decisions:
            return
        self._act(flow, decisions, lambda: self._mask_body(flow, dlp, rules, decisions, body))

    def _mask_body(self, flow: http.HTTPFlow, dlp: DlpConfig, rules: tuple[DlpRule, ...],
                   decisions: list[Decision], body: bytes) -> None:  # fmt: skip
        masked = [d.finding for d in decisions if d.action == "mask"]
        if any(not f.in_place for f in masked):
            self._block(flow, decisions, " (found only once decoded: it cannot be masked in place)")
            return
        new = self._masker(flow).replace(body, masked)
        fields = body_fields(new, flow.request.headers.get("content-type", ""))
        left = [d for d in self._inspect(dlp, rules, fields, "body") if d.action != "report"]
        if left:
            self._block(flow, left, " (it could not be masked in place)")
            return
        flow.request.content = new  # encoded again as the agent's Content-Encoding says

    @fail_closed
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Each message the agent sends (whole: mitmproxy hands over complete messages,
        capped by ProtocolGuard) is a body: block closes the connection, mask rewrites
        the message, report records it."""
        rules = self._rules(flow, answered_ok=True)
        if flow.websocket is None or not rules or "body" not in surfaces_of(rules):
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            return
        dlp = self._config()
        assert dlp is not None
        content = message.content
        fields = body_fields(content, "application/json" if message.is_text else "")
        if len(content) > INLINE_BYTES:
            decisions = await asyncio.to_thread(self._inspect, dlp, rules, fields, "body")
        else:
            decisions = self._inspect(dlp, rules, fields, "body")
        if not decisions:
            return
        action = strongest(decisions)
        masked = [d.finding for d in decisions if d.action == "mask"]
        if action == "mask" and all(f.in_place for f in masked):
            new = self._masker(flow).replace(content, masked)
            left = [
                d
                for d in self._inspect(dlp, rules, body_fields(new, ""), "body")
                if d.action != "report"
            ]
            if not left:
                message.content = new
                record_websocket(flow, self.runtime, Reason.ALLOWED, None,
                                 dlp=[d.to_dict() for d in decisions])  # fmt: skip
                return
            action = "block"
        if action == "report":
            record_websocket(flow, self.runtime, Reason.ALLOWED, None,
                             dlp=[d.to_dict() for d in decisions])  # fmt: skip
            return
        blocking = [d for d in decisions if d.action != "report"]
        record_websocket(flow, self.runtime, Reason.DLP_BLOCKED,
                         "a WebSocket message carried data a data-loss rule blocks: "
                         + "; ".join(_where(d) for d in blocking[:8])
                         + "; the connection was closed", dlp=[d.to_dict() for d in decisions])  # fmt: skip
        message.drop()
        flow.kill()

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)
        await self._inbound(flow)

    def _restore(self, flow: http.HTTPFlow) -> None:
        dlp, masker = self._config(), _MASKERS.get(flow)
        resp = flow.response
        if dlp is None or not dlp.restore_masked or not masker or resp is None:
            return
        if resp.stream or resp.raw_content is None:
            return  # streamed responses keep their tokens (docs/dlp.md)
        body = decoded_body(resp, self.runtime.config.max_body_bytes)
        if not body:
            return
        media = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        restored, n = masker.restore(body, json_escaped=media.endswith("json"))
        if n:
            resp.content = restored
            meta(flow)["dlp_restored"] = n

    async def _inbound(self, flow: http.HTTPFlow) -> None:
        """Prompt injection in what comes back (dlp.inbound): flagged, or withheld."""
        dlp, resp, m = self._config(), flow.response, meta(flow)
        if dlp is None or not dlp.inbound or resp is None or m.get("decision") != "allow":
            return
        rules = dlp.inbound_for(m.get("host", ""), m.get("agent"))
        if not rules or resp.stream or resp.raw_content is None:
            return  # a streamed response is not read (docs/dlp.md)
        if not inbound.is_text(resp.headers.get("content-type", "")):
            return
        body = decoded_body(resp, self.runtime.config.max_body_bytes)
        if not body:
            return
        text = body.decode("utf-8", "replace")
        if len(body) > INLINE_BYTES:
            finding = await asyncio.to_thread(inbound.inspect, text)
        else:
            finding = inbound.inspect(text)
        if finding is None:
            return
        rule = next((r for r in rules if r.action == "block"), rules[0])
        m["dlp"] = [
            *m.get("dlp", []),
            {**finding.to_dict(), "action": rule.action, "rule": rule.label},
        ]
        if rule.action == "block":
            status = resp.status_code
            deny(flow, self.runtime, Reason.PROMPT_INJECTION_BLOCKED,
                 f"the response ({status}) carries instructions aimed at the agent "
                 f"({', '.join(finding.categories)}, at offset {finding.offset}); egress withheld it "
                 f"(rule {rule.label})",
                 rule=rule.label,
                 hint="if this host's content is trusted, change the rule's action to report "
                      "under dlp.inbound in the config")  # fmt: skip
