"""A streamed request body inspected chunk by chunk (egress/dlp/stream.py): however the
body is cut into chunks, a value is found before any of it is forwarded; a clean body goes
through byte for byte; masks keep the length the Content-Length promised."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from egress.dlp.policy import DlpRule
from egress.dlp.scan import Masker, Scanner
from egress.dlp.stream import WINDOW, StreamInspector
from tests.dlp_samples import VALID

SCANNER = Scanner()
ALL = frozenset({"body"})


def _rule(action: str, detectors: set[str]) -> DlpRule:
    return DlpRule(0, "r", frozenset(detectors), action, None, None, ALL)  # type: ignore[arg-type]


def _run(body: bytes, cuts: list[int], rule: DlpRule) -> tuple[bytes, StreamInspector]:
    inspector = StreamInspector(SCANNER, (rule,), Masker(), lambda _: False, lambda t: t)
    points = sorted({c % (len(body) + 1) for c in cuts})
    out = b""
    start = 0
    for p in [*points, len(body)]:
        out += inspector(body[start:p])
        start = p
    out += inspector(b"")
    return out, inspector


@settings(max_examples=60, deadline=None)
@given(
    detector=st.sampled_from(["aws_access_key", "github_token", "payment_card", "email_address"]),
    seed=st.integers(0, 2**32),
    before=st.integers(0, 3 * WINDOW),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
)
def test_a_value_split_across_any_chunks_is_found_before_any_of_it_goes(
    detector: str, seed: int, before: int, cuts: list[int]
) -> None:
    value = VALID[detector](random.Random(seed)).encode()
    body = b"x " * (before // 2) + b" " + value + b" " + b"y " * 2000
    out, inspector = _run(body, cuts, _rule("block", {detector}))
    assert inspector.blocked
    assert [d.finding.detector for d in inspector.decisions] == [detector]
    assert inspector.decisions[0].finding.offset == before // 2 * 2 + 1
    # Nothing from the value on was forwarded.
    assert len(out) <= body.index(value) and value[:6] not in out


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 5 * WINDOW), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_a_clean_body_goes_through_byte_for_byte(size: int, cuts: list[int]) -> None:
    body = bytes(random.Random(size).choice(b"abc def\n{}:,0123") for _ in range(size))
    out, inspector = _run(body, cuts, _rule("block", {"aws_access_key", "payment_card"}))
    assert out == body and not inspector.blocked


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_a_mask_keeps_the_length_and_every_occurrence(seed: int, cuts: list[int]) -> None:
    email = VALID["email_address"](random.Random(seed)).encode()
    body = b"a" * 9000 + b" to " + email + b" cc " + b"b" * 20_000 + b" again " + email + b" end"
    out, inspector = _run(body, cuts, _rule("mask", {"email_address"}))
    assert not inspector.blocked
    assert len(out) == len(body) and email not in out
    assert out.count(b"[EMAIL_1") == 2
