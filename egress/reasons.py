"""Stable reason codes for every decision egress takes, and the one place they map to HTTP.

A reason code is the contract between the proxy, its users and its tests: the same string
appears in the 403/5xx body, the ``X-Egress-Reason`` header, the audit record and the
assertions of the test suite. Never rename one; add a new code instead.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # allowed
    ALLOWED = "allowed"
    # denied by the allowlist
    HOST_NOT_ALLOWED = "host_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PATH_NOT_ALLOWED = "path_not_allowed"
    INVALID_HOST = "invalid_host"
    HOST_LOCKED = "host_locked"  # locked.deny: never opened, not even in report mode
    IP_LITERAL = "ip_literal"
    RESOLVED_PRIVATE = "resolved_private"
    # denied because the request's identity is inconsistent
    USERINFO_IN_URL = "userinfo_in_url"
    ABSOLUTE_FORM_IN_TUNNEL = "absolute_form_in_tunnel"
    MALFORMED_REQUEST = "malformed_request"
    NON_HTTP_PROTOCOL = "non_http_protocol"
    WEBSOCKET_NOT_ALLOWED = "websocket_not_allowed"
    PROXY_HEADER = "proxy_header"
    UPGRADE_NOT_ALLOWED = "upgrade_not_allowed"
    HOST_HEADER_MISMATCH = "host_header_mismatch"
    SNI_MISMATCH = "sni_mismatch"
    # the agent is not identified (docs/agents.md)
    PROXY_AUTH_REQUIRED = "proxy_auth_required"
    PROXY_AUTH_FAILED = "proxy_auth_failed"
    # denied by the secret guards
    PLACEHOLDER_TO_UNBOUND_HOST = "placeholder_to_unbound_host"
    SECRET_TO_UNBOUND_HOST = "secret_to_unbound_host"
    PLACEHOLDER_SURFACE_NOT_ALLOWED = "placeholder_surface_not_allowed"
    PLAINTEXT_INJECTION = "plaintext_injection"
    FOREIGN_CREDENTIAL = "foreign_credential"
    SIGNATURE_SCHEME_UNSUPPORTED = "signature_scheme_unsupported"
    AWS_SCOPE_MISMATCH = "aws_scope_mismatch"
    PRESIGN_EXPIRED = "presign_expired"
    AWS_CREDENTIAL_ACTION = "aws_credential_action"
    SECRET_NOT_GRANTED = "secret_not_granted"
    BODY_TOO_LARGE = "body_too_large"
    # denied by an outbound data-loss rule (docs/dlp.md)
    DLP_BLOCKED = "dlp_blocked"
    # a response carried prompt injection and a dlp.inbound rule withholds it
    PROMPT_INJECTION_BLOCKED = "prompt_injection_blocked"
    # tripwires (docs/tripwires.md): a canary went out; the agent is quarantined
    CANARY_TRIPPED = "canary_tripped"
    AGENT_QUARANTINED = "agent_quarantined"
    # refused below HTTP: a limit on what one client may make the proxy hold or do
    HEAD_TOO_LARGE = "head_too_large"
    STREAM_FLOOD = "stream_flood"
    MESSAGE_TOO_LARGE = "message_too_large"
    # the proxy could not do what the request needs
    SECRET_UNAVAILABLE = "secret_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    INTERNAL_ERROR = "internal_error"
    UNSCRUBBABLE_RESPONSE = "unscrubbable_response"
    DNS_FAILURE = "dns_failure"


# Errors map to HTTP status here and nowhere else.
_STATUS: dict[Reason, int] = {
    Reason.ALLOWED: 200,
    Reason.HOST_NOT_ALLOWED: 403,
    Reason.PORT_NOT_ALLOWED: 403,
    Reason.SCHEME_NOT_ALLOWED: 403,
    Reason.METHOD_NOT_ALLOWED: 403,
    Reason.PATH_NOT_ALLOWED: 403,
    Reason.INVALID_HOST: 400,
    Reason.HOST_LOCKED: 403,
    Reason.IP_LITERAL: 403,
    Reason.RESOLVED_PRIVATE: 403,
    Reason.USERINFO_IN_URL: 403,
    Reason.ABSOLUTE_FORM_IN_TUNNEL: 403,
    Reason.MALFORMED_REQUEST: 400,
    Reason.NON_HTTP_PROTOCOL: 403,
    Reason.WEBSOCKET_NOT_ALLOWED: 403,
    Reason.PROXY_HEADER: 403,
    Reason.UPGRADE_NOT_ALLOWED: 403,
    Reason.HOST_HEADER_MISMATCH: 403,
    Reason.SNI_MISMATCH: 403,
    Reason.PROXY_AUTH_REQUIRED: 407,
    Reason.PROXY_AUTH_FAILED: 407,
    Reason.PLACEHOLDER_TO_UNBOUND_HOST: 403,
    Reason.SECRET_TO_UNBOUND_HOST: 403,
    Reason.PLACEHOLDER_SURFACE_NOT_ALLOWED: 403,
    Reason.PLAINTEXT_INJECTION: 403,
    Reason.FOREIGN_CREDENTIAL: 403,
    Reason.SIGNATURE_SCHEME_UNSUPPORTED: 403,
    Reason.AWS_SCOPE_MISMATCH: 403,
    Reason.PRESIGN_EXPIRED: 403,
    Reason.AWS_CREDENTIAL_ACTION: 403,
    Reason.SECRET_NOT_GRANTED: 403,
    Reason.BODY_TOO_LARGE: 413,
    Reason.DLP_BLOCKED: 403,
    Reason.PROMPT_INJECTION_BLOCKED: 403,
    Reason.CANARY_TRIPPED: 403,
    Reason.AGENT_QUARANTINED: 403,
    Reason.HEAD_TOO_LARGE: 431,
    Reason.STREAM_FLOOD: 429,
    Reason.MESSAGE_TOO_LARGE: 413,
    Reason.SECRET_UNAVAILABLE: 503,
    Reason.UPSTREAM_ERROR: 502,
    Reason.INTERNAL_ERROR: 500,
    Reason.UNSCRUBBABLE_RESPONSE: 502,
    Reason.DNS_FAILURE: 502,
}


def http_status(reason: Reason) -> int:
    return _STATUS[reason]
