"""Audit integrity: every audit line is one JSON object under any line-splitting convention,
and every flow egress decided has exactly one record, whatever failed after."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from egress.audit import AuditRecord, redact_path
from tests.conftest import API, RunningProxy
from tests.rawclient import connect_tunnel, exchange, status_of
from tests.upstream import Upstream

# Every character some line reader splits on: str.splitlines(), JavaScript, Unicode.
SPLITTERS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
texts = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(SPLITTERS)) | st.text(
    alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)  # bytes that were not UTF-8
)


@settings(max_examples=500, deadline=None)
@given(path=texts, host=texts, detail=texts)
def test_a_record_is_one_line_whatever_it_holds(path: str, host: str, detail: str) -> None:
    rec = AuditRecord(time="t", event="request", flow_id="f", client="c", method="GET",
                      scheme="https", host=host, port=443, path=path, decision="deny",
                      reason="malformed_request", detail=detail)  # fmt: skip
    line = rec.to_json()
    assert len(line.splitlines()) == 1 and line.isascii()
    assert len((line + "\n").encode().split(b"\n")) == 2
    back = json.loads(line)
    assert (back["path"], back["host"], back["detail"]) == (path, host, detail)


@settings(max_examples=300, deadline=None)
@given(query=st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("%&=+\udc80")))
def test_redacting_a_query_never_fails(query: str) -> None:
    assert redact_path("/p?" + query).startswith("/p")


def test_separators_in_a_request_never_split_an_audit_line(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    before = len(proxy.audit())
    for raw_path in ["/a\u2028b".encode(), "/q?x=\u2029".encode(), b"/n?x=\x85", b"/%e2%80%a8"]:
        raw = b"GET " + raw_path + f" HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode()
        with connect_tunnel(proxy.port, API, upstream.port, proxy.ca) as s:
            assert status_of(exchange(s, raw)) in (200, 400)
    text = proxy.audit_path.read_text()
    lines = text.splitlines()
    assert len(lines) == len(text.split("\n")) - 1  # no splitter inside any line
    records = [json.loads(line) for line in lines]
    assert len(records) - before == 4
