"""The policy addon's fast paths never change what a hook does: the proxy-header step skips
requests with no header it could act on, and gives the same answer and leaves the same
headers as the full step (copied here as it was) for every other request."""

from __future__ import annotations

import pytest
from egress.addons import flowchecks, policy
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import tflow

from egress.grammar import fold_name, te_offers
from egress.request_checks import PROXY_ONLY_HEADERS, Problem, proxy_header_problem, upgrade_tokens


def reference_proxy_header(headers) -> Problem | None:  # type: ignore[no-untyped-def]
    """_proxy_header before the fast path."""
    problem = proxy_header_problem(headers.items(multi=True))
    if problem is not None:
        return problem
    for name in [n for n in headers if fold_name(n) in PROXY_ONLY_HEADERS]:
        headers.pop(name, None)
    te = headers.get_all("te")
    if te_offers(te):
        headers.pop("te")
        if any("trailers" in v.lower() for v in te):
            headers["te"] = "trailers"
    return None


NAMES = [b"Host", b"Accept", b"Proxy", b"proxy", b"PROXY", b"Proxy-Authorization",
         b"proxy_authorization", b"Proxy-Connection", b"PROXY_CONNECTION", b"Proxy-Foo", b"Proxyx",
         b"X-Proxy", b"TE", b"te", b"Te", b"Tex", b"xte", b"Transfer-Encoding", b"Connection",
         b"\xe2\x84\xaae", b"Pro\xe2\x84\xaay", b"proxy-author\xc4\xb0zation", b"\xff\xfe",
         b"pr\xc3\xb6xy", b"User-Agent"]  # fmt: skip
VALUES = [b"x", b"trailers", b"gzip", b"gzip, trailers", b"chunked;q=1", b"", b"Trailers, deflate"]


def run_both(fields: list[tuple[bytes, bytes]]) -> None:
    fast, slow = tflow.tflow(), tflow.tflow()
    fast.request.headers.fields = tuple(fields)
    slow.request.headers.fields = tuple(fields)
    assert flowchecks.proxy_header(fast) == reference_proxy_header(slow.request.headers)
    assert fast.request.headers.fields == slow.request.headers.fields


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", VALUES)
def test_one_header_among_others(name: bytes, value: bytes) -> None:
    run_both([(b"Host", b"api.test"), (name, value), (b"Accept", b"*/*")])
    run_both([(name, value)])


@settings(max_examples=600, deadline=None)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(NAMES) | st.binary(min_size=1, max_size=6),
                  st.sampled_from(VALUES) | st.binary(max_size=6)),
        max_size=6,
    )
)  # fmt: skip
def test_generated_headers_get_the_same_answer_and_headers(
    fields: list[tuple[bytes, bytes]],
) -> None:
    run_both(fields)


def test_the_prefilter_is_a_necessary_condition_over_every_character() -> None:
    """No header name the full step acts on is missed: every non-ASCII character whose
    lower case holds ASCII is the Kelvin sign or the dotted capital I."""
    odd = {c for c in range(0x80, 0x110000) if not 0xD800 <= c <= 0xDFFF
           and any(ord(ch) < 0x80 for ch in chr(c).lower())}  # fmt: skip
    assert odd == {0x212A, 0x130}
    for target in ("proxy", *PROXY_ONLY_HEADERS):
        assert "k" not in target  # the Kelvin sign lowers to 'k'
    # the dotted capital I lowers to 'i' and a combining dot, never an ASCII-only name
    assert not chr(0x130).lower().isascii()


UPGRADE_NAMES = [b"Upgrade", b"upgrade", b"UPGRADE", b"Upgrade-Insecure-Requests", b"Alt-Svc",
                 b"ALT-SVC", b"Sec-WebSocket-Extensions", b"sec-websocket-extensions", b"Alt-Svcx",
                 b"Connection", b"Content-Type", b"Upgr\xc3\xa4de", b"\xff"]  # fmt: skip
UPGRADE_VALUES = [b"websocket", b"h2c", b"WebSocket, h2c", b"", b'h3=":443"', b"permessage-deflate"]
header_lists = st.lists(
    st.tuples(st.sampled_from(UPGRADE_NAMES) | st.binary(min_size=1, max_size=6),
              st.sampled_from(UPGRADE_VALUES) | st.binary(max_size=6)),
    max_size=6,
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(fields=header_lists)
def test_upgrade_tokens_are_read_only_where_an_upgrade_header_is(
    fields: list[tuple[bytes, bytes]],
) -> None:
    f = tflow.tflow()
    f.request.headers.fields = tuple(fields)
    items = list(f.request.headers.items(multi=True))
    fast = (
        upgrade_tokens(items) if flowchecks.has_header(f.request.headers.fields, b"upgrade") else []
    )
    assert fast == upgrade_tokens(items)


def reference_responseheaders(flow) -> None:  # type: ignore[no-untyped-def]
    """What Allowlist.responseheaders did to the response headers before the fast path."""
    flow.response.headers.pop("alt-svc", None)
    flow.response.headers.pop("sec-websocket-extensions", None)


@settings(max_examples=600, deadline=None)
@given(fields=header_lists, status=st.sampled_from([200, 101]), request_fields=header_lists)
def test_response_headers_are_left_as_the_full_step_leaves_them(
    fields: list[tuple[bytes, bytes]], status: int, request_fields: list[tuple[bytes, bytes]]
) -> None:
    fast, slow = tflow.tflow(resp=True), tflow.tflow(resp=True)
    for f in (fast, slow):
        f.response.headers.fields = tuple(fields)
        f.response.status_code = status
        f.request.headers.fields = tuple(request_fields)
    policy.Allowlist().responseheaders(fast)
    reference_responseheaders(slow)
    assert fast.response.headers.fields == slow.response.headers.fields
    killed = status == 101 and upgrade_tokens(slow.request.headers.items(multi=True)) != [
        "websocket"
    ]
    assert (fast.error is not None) == killed
