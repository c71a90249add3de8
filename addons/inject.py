"""Secret injection: swap placeholders for real secrets on requests to bound hosts only.

Two phases, because mitmproxy sends a streamed request's headers upstream before the body
has arrived: headers, path and query are checked and injected when the headers arrive
(before anything is sent); a buffered body is checked and injected when it is complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time

from egress.addons.audit import record_websocket
from egress.addons.base import EgressAddon, decoded_body, deny, fail_closed, meta, policy_of
from mitmproxy import http

from egress import azuresign, decoding, hmacsign, sigv4
from egress.awsplan import credential_action_denial
from egress.config import SecretSpec
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
    utc_now,
)
from egress.reasons import Reason
from egress.secrets import SecretValue

# Bodies up to this size are checked on the event loop; larger ones in a worker thread.
INLINE_SCAN_BYTES = 256 * 1024


def _both(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Secrets granted by both (None: every secret)."""
    if a is None:
        return b
    return a if b is None else a & b


def yield_interpreter() -> None:
    """Between two C-speed passes in a worker thread: let the event loop take the
    interpreter at once. Without it the loop waits for the switch interval (5 ms) at each
    hand-over, and a request that needs many hand-overs waits far longer."""
    time.sleep(0)


class SecretInjector(EgressAddon):
    def _plan(
        self, flow: http.HTTPFlow, parts: RequestParts, pause: Pause = no_pause
    ) -> Denial | Injection:
        granted = self._granted(flow)
        if granted is False:  # agents are configured and none was identified
            return Denial(Reason.PROXY_AUTH_REQUIRED, "no agent was identified")
        return plan(parts, None, self.runtime.index(), pause, granted)

    def _granted(self, flow: http.HTTPFlow) -> frozenset[str] | None | bool:
        """The secrets granted under the request's policy and under the one in force now
        (None: every secret; False: no agent): a reload that revokes a grant stops it at
        once, even for a request in flight."""
        agent = meta(flow).get("agent")
        view = policy_of(flow, self.runtime).view(agent)
        now = self.runtime.view(agent)
        if view is None or now is None:
            return False
        return view.granted if now is view else _both(view.granted, now.granted)

    def _still_allowed(self, flow: http.HTTPFlow, spec: SecretSpec) -> bool:
        """Before a signature made once the body is in (HMAC, AWS): the secret is still
        granted and still bound to the host under the policy in force now (a reload may
        have changed either since the headers were planned). Denies the flow if not."""
        m, rt = meta(flow), self.runtime
        granted = self._granted(flow)
        current = next((s for s in rt.config.secrets if s.name == spec.name), None)
        if (
            granted is not False
            and (granted is None or spec.name in granted)
            and (current is not None and current.bound_to(m.get("host", "")))
        ):
            return True
        deny(flow, rt, Reason.SECRET_NOT_GRANTED,
             f"secret {spec.name!r} is no longer granted to this request's agent or bound to "
             "this host (the config was reloaded while the request was sent); it was not sent",
             rule=m.get("rule"), secret=spec.name)  # fmt: skip
        return False

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
        await self._check_body(flow)
        await self._resign_pending(flow)
        self._hmac_pending(flow)

    async def _check_body(self, flow: http.HTTPFlow) -> None:
        m, req = meta(flow), flow.request
        if flow.response is not None or m.get("decision") != "allow" or req.raw_content is None:
            return  # a streamed body (over limits.max_body_bytes) is not scanned
        m["bytes_in"] = len(req.raw_content)  # as the client sent it
        if req.trailers and self._refuse_trailers(flow, req.trailers.fields):
            return
        if self._refuse_aws_trailers(flow):
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

    def _refuse_aws_trailers(self, flow: http.HTTPFlow) -> bool:
        """An aws-chunked body ends with trailer lines of its own (x-amz-checksum-crc32...),
        inside the body: checked like HTTP trailers. A framing egress cannot read is
        refused by the body check that follows (decoding.decode)."""
        req = flow.request
        if not decoding.is_aws_chunked(req.headers.get("content-encoding", "")):
            return False
        try:
            _, trailers = decoding.split_aws_chunked(
                req.raw_content or b"", self.runtime.config.max_body_bytes
            )
        except decoding.DecodeError:
            return False
        return bool(trailers) and self._refuse_trailers(flow, tuple(trailers))

    def _refuse_trailers(
        self, flow: http.HTTPFlow, fields: tuple[tuple[bytes, bytes], ...]
    ) -> bool:
        """Trailers are another channel the agent writes to: the same guards as headers, and
        never a substitution (a placeholder there is refused)."""
        parts = dataclasses.replace(
            self._parts(flow, headers=False, body=None),
            headers=tuple((k.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                          for k, v in fields),
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
        m, rt = meta(flow), self.runtime
        if isinstance(result, Denial):
            deny(flow, rt, result.reason, result.detail, rule=m.get("rule"), secret=result.secret)
            return
        if m.get("would_deny"):
            return  # report mode: never inject into a request enforce mode would deny
        if result.resign is not None:
            self._resign_or_wait(flow, *result.resign)
            return
        if result.injected:
            self._substitute(flow, result)
        if result.sign_hmac is not None and flow.response is None:
            self._hmac_wait(flow, result.sign_hmac)
        if result.sign_azure is not None and flow.response is None:
            self._sign_azure(flow, result.sign_azure)

    def _substitute(self, flow: http.HTTPFlow, result: Injection) -> None:
        m, req, rt = meta(flow), flow.request, self.runtime
        if result.body_changed and result.body is not None:
            if decoding.is_aws_chunked(req.headers.get("content-encoding", "")):
                # Setting the content would drop the framing but keep the headers that
                # announce it (x-amz-decoded-content-length...): the upstream would misread it.
                deny(flow, rt, Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED,
                     f"the placeholder of secret {result.injected[0]!r} is in an aws-chunked "
                     "body, which egress does not rewrite; send it in a header",
                     rule=m.get("rule"), secret=result.injected[0])  # fmt: skip
                return
            req.content = result.body
        else:
            req.headers = http.Headers(
                [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                 for k, v in result.headers]
            )  # fmt: skip
            req.path = result.path
        m["secrets"] = [*m.get("secrets", []), *result.injected]
        values = rt.index().values
        # Which token a minted secret's flow carried: a 401 forces a new one only for the
        # current token, not for one already replaced (StaleTokens).
        m["injected_digests"] = {name: token_digest(v) for name in result.injected
                                 if (v := values.get(name)) is not None}  # fmt: skip

    def _sign_azure(self, flow: http.HTTPFlow, spec: SecretSpec) -> None:
        """Shared Key covers headers, path and query, not the body: signed now."""
        m, req, rt = meta(flow), flow.request, self.runtime
        value = rt.index().values.get(spec.name)
        assert value is not None and spec.azure_account is not None  # plan() checked
        new, signature = azuresign.sign(value, spec.azure_account, req.method, req.path,
                                        list(req.headers.items(multi=True)), utc_now())  # fmt: skip
        req.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in new]
        )  # fmt: skip
        m["scrub_extra"] = [
            *m.get("scrub_extra", []),
            *(v.encode() for v in azuresign.masks(signature)),
        ]
        m["secrets"] = [*m.get("secrets", []), spec.name]

    def _hmac_wait(self, flow: http.HTTPFlow, spec: SecretSpec) -> None:
        """The signature covers the body: it is written once the body is in. The header
        with the placeholder goes now, so that it never leaves even if a chunked body
        turns out to be large and mitmproxy starts streaming it."""
        m, req, rt = meta(flow), flow.request, self.runtime
        assert spec.hmac is not None
        length = req.headers.get("content-length", "")
        if length.isdigit() and int(length) > rt.config.max_body_bytes:
            deny(flow, rt, Reason.BODY_TOO_LARGE,
                 f"the request body ({length} bytes) is over limits.max_body_bytes "
                 f"({rt.config.max_body_bytes}): the HMAC signature of {spec.name!r} covers the "
                 "body, and a streamed body cannot be read first",
                 rule=m.get("rule"), secret=spec.name)  # fmt: skip
            return
        m["hmac_sign"] = spec
        del req.headers[spec.hmac.header]

    def _hmac_pending(self, flow: http.HTTPFlow) -> None:
        m, req, rt = meta(flow), flow.request, self.runtime
        spec = m.pop("hmac_sign", None)
        if spec is None or flow.response is not None:
            return
        if not self._still_allowed(flow, spec):
            return
        value = rt.index().values.get(spec.name)
        if req.raw_content is None or value is None:
            reason = Reason.BODY_TOO_LARGE if value is not None else Reason.SECRET_UNAVAILABLE
            why = ("the request body streamed past limits.max_body_bytes before egress could "
                   "sign it; it went out unsigned and was cut off" if value is not None
                   else "the secret is not loaded, so the request was not sent")  # fmt: skip
            deny(flow, rt, reason, f"{spec.name!r}: {why}", rule=m.get("rule"), secret=spec.name)
            return
        signed = hmacsign.sign(spec.hmac, value, req.method, req.path,
                               list(req.headers.items(multi=True)), req.raw_content, time.time())  # fmt: skip
        req.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in signed.headers]
        )  # fmt: skip
        m["scrub_extra"] = [*m.get("scrub_extra", []), *(v.encode() for v in signed.masks)]
        m["secrets"] = [*m.get("secrets", []), spec.name]

    def _resign_or_wait(self, flow: http.HTTPFlow, spec: SecretSpec, signed: sigv4.Signed) -> None:
        """Sign an AWS request again now, when its signature does not cover the body (the
        agent declared the payload hash: S3, whose upstream checks the hash itself; or a
        presigned S3 URL), else once the body is in. Until then the agent's Authorization is
        removed, so that nothing signed with the placeholder goes out even if mitmproxy
        starts streaming a chunked body that turns out to be large."""
        m, req, rt = meta(flow), flow.request, self.runtime
        body_free = signed.payload_hash is not None and signed.payload_hash != sigv4.SIGNED_CHUNKS
        if signed.service == "s3" and (body_free or signed.form == "query"):
            self._resign(flow, spec, signed, None)
            return
        # Other services: their body is hashed, and read for a credential action first.
        length = req.headers.get("content-length", "")
        if length.isdigit() and int(length) > rt.config.max_body_bytes:
            deny(flow, rt, Reason.BODY_TOO_LARGE,
                 f"the request body ({length} bytes) is over limits.max_body_bytes "
                 f"({rt.config.max_body_bytes}): the AWS signature egress makes for "
                 f"{spec.name!r} covers the body's hash, and a streamed body cannot be hashed "
                 "first (S3 declares x-amz-content-sha256 and streams)",
                 rule=m.get("rule"), secret=spec.name)  # fmt: skip
            return
        m["aws_resign"] = (spec, signed)
        if signed.form == "header":
            del req.headers["authorization"]

    def _resign(
        self, flow: http.HTTPFlow, spec: SecretSpec, signed: sigv4.Signed, body: bytes | None
    ) -> None:
        m, req, rt = meta(flow), flow.request, self.runtime
        if not self._still_allowed(flow, spec):
            return
        value = rt.index().values.get(spec.name)
        if value is None:  # dropped since the headers were checked (Vault outage)
            deny(flow, rt, Reason.SECRET_UNAVAILABLE,
                 f"secret {spec.name!r} is not loaded, so the request was not sent",
                 rule=m.get("rule"), secret=spec.name)  # fmt: skip
            return
        authority = req.host_header or m["host"]
        headers = list(req.headers.items(multi=True))
        if signed.payload_hash == sigv4.SIGNED_CHUNKS:
            assert body is not None
            try:
                new, signature, framed = sigv4.resign_chunked(signed, value, req.method, authority,
                                                              req.path, headers, body, utc_now())  # fmt: skip
            except ValueError as e:
                deny(flow, rt, Reason.MALFORMED_REQUEST, f"a signed aws-chunked body: {e}",
                     rule=m.get("rule"), secret=spec.name)  # fmt: skip
                return
            req.raw_content = framed
        elif signed.form == "header":
            new, signature = sigv4.resign_header(signed, value, req.method, authority, req.path,
                                                 headers, body, utc_now())  # fmt: skip
        else:
            req.path, signature = sigv4.resign_query(signed, value, req.method, authority,
                                                     req.path, headers, body, utc_now())  # fmt: skip
            # An Authorization, date or token header beside a presigned URL goes nowhere.
            new = [(k, v) for k, v in headers if k.lower() not in sigv4.HEADER_AUTH]
        req.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in new]
        )  # fmt: skip
        # A signature is a credential for its request until it expires: an upstream that
        # echoes it must not hand it to the agent (addons/scrub.py masks it).
        m["scrub_extra"] = [
            *m.get("scrub_extra", []),
            signature.encode(),
            signature.upper().encode(),
        ]
        m["secrets"] = [*m.get("secrets", []), spec.name]

    async def _resign_pending(self, flow: http.HTTPFlow) -> None:
        """The body is in (or was streamed): sign the request whose signature covers it."""
        m, rt = meta(flow), self.runtime
        pending = m.pop("aws_resign", None)
        if pending is None or flow.response is not None:
            return
        spec, signed = pending
        raw = flow.request.raw_content
        if raw is not None:
            # The query API posts its Action in the body (maybe compressed): read both.
            decoded = decoded_body(flow.request, rt.config.max_body_bytes) or b""
            for body in (raw, decoded):
                refused = credential_action_denial(spec, signed, flow.request.path,
                                                   flow.request.headers.items(multi=True), body)  # fmt: skip
                if refused is not None:
                    deny(flow, rt, refused.reason, refused.detail, rule=m.get("rule"),
                         secret=spec.name)  # fmt: skip
                    return
        if flow.request.raw_content is None:
            deny(flow, rt, Reason.BODY_TOO_LARGE,
                 f"the request body streamed past limits.max_body_bytes "
                 f"({rt.config.max_body_bytes}) before egress could hash it for the AWS "
                 f"signature of {spec.name!r}; it went out unsigned and was cut off",
                 rule=m.get("rule"), secret=spec.name)  # fmt: skip
            return
        if signed.payload_hash == sigv4.SIGNED_CHUNKS:
            # A signature per chunk (up to a few thousand): off the event loop, as the body
            # scan, so that other clients are not kept waiting. The flow waits in this hook.
            await asyncio.to_thread(self._resign, flow, spec, signed, flow.request.raw_content)
        else:
            self._resign(flow, spec, signed, flow.request.raw_content)

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


class StaleTokens(EgressAddon):
    """A 401 from the upstream on a flow that carried a minted token: the token may have
    been revoked before its expiry, so egress mints a new one at once (rate-limited per
    secret, egress.mintsource). The 401 itself goes back to the agent, whose retry gets the
    new token."""

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flow.response.status_code != 401:
            return
        carried = meta(flow).get("injected_digests") or {}
        for spec in self.runtime.config.secrets:
            current = self.runtime.secrets.get(spec.name)
            if (
                spec.mint is not None
                and current is not None
                and carried.get(spec.name) == token_digest(current)
            ):
                self.runtime.mint_stale(spec.name)


def token_digest(value: SecretValue) -> str:
    """Which value a flow carried, without keeping the value in the flow."""
    return hashlib.sha256(value.reveal().encode()).hexdigest()


addons = [SecretInjector(), StaleTokens()]
