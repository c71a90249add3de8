from __future__ import annotations

import pytest

from egress.errors import InvalidHost
from egress.hostnames import canonical_host, parse_host_pattern, split_host_port

CANONICAL = [
    ("API.GitHub.com", "api.github.com"),
    ("api.github.com.", "api.github.com"),
    ("bücher.de", "xn--bcher-kva.de"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("[::ffff:7f00:1]", "127.0.0.1"),
    ("2001:DB8::1", "2001:db8::1"),
]


@pytest.mark.parametrize(("raw", "canonical"), CANONICAL)
def test_canonical_host(raw: str, canonical: str) -> None:
    assert canonical_host(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    ["", " a.com", "a..com", "a.com..", "a b.com", "a.com/x", "user@a.com", "1.2.3.999", "[a.com]",
     "-a.com", "a" * 64 + ".com", "xn--zz.com", "a\r\nb.com", "[fe80::1%eth0]", "fe80::1%25eth0"],
)  # fmt: skip
def test_invalid_hosts(raw: str) -> None:
    with pytest.raises(InvalidHost):
        canonical_host(raw)


PATTERNS = [
    # (entry, host, matches)
    ("a.com", "a.com", True),
    ("a.com", "x.a.com", False),
    ("A.COM.", "a.com", True),
    ("*.a.com", "x.a.com", True),
    ("*.a.com", "x.y.a.com", True),
    ("*.a.com", "a.com", False),
    ("*.a.com", "evila.com", False),
    ("*.a.com", "a.com.evil.com", False),
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("::1", "::1", True),
    ("127.0.0.1", "a.com", False),
    ("::ffff:127.0.0.1", "127.0.0.1", True),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", True),
]


@pytest.mark.parametrize(("entry", "host", "matches"), PATTERNS)
def test_pattern_matching(entry: str, host: str, matches: bool) -> None:
    assert parse_host_pattern(entry).matches(canonical_host(host)) is matches


BAD_PATTERNS = [
    ("*", "bare '*'"),
    ("*.com", "public suffix 'com'"),
    ("*.co.uk", "public suffix 'co.uk'"),
    ("*.github.io", "public suffix 'github.io'"),
    ("a.*.com", "leading '*.'"),
    ("*a.com", "leading '*.'"),
    ("https://a.com", "write the host alone ('a.com')"),
    ("a.com/path", "list paths under 'paths'"),
    ("user@a.com", "userinfo"),
    ("a.com:8443", "list the port under 'ports'"),
    ("bücher.de", "'xn--bcher-kva.de'"),
    (" a.com", "white space"),
    ("a\tb.com", "white space"),
    ("10.0.0.1/8", "did you mean '10.0.0.0/8'"),
    ("127.1", "write '127.0.0.1'"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_PATTERNS)
def test_bad_patterns_name_the_fix(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        parse_host_pattern(entry)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [("a.com", ("a.com", 443)), ("a.com:8443", ("a.com", 8443)), ("[::1]:9", ("[::1]", 9)),
     ("[::1]", ("[::1]", 443)), ("::1", ("::1", 443))],
)  # fmt: skip
def test_split_host_port(authority: str, expected: tuple[str, int]) -> None:
    assert split_host_port(authority, 443) == expected


@pytest.mark.parametrize("authority", ["a.com:0", "a.com:99999", "a.com:x", "[::1]x"])
def test_split_host_port_rejects(authority: str) -> None:
    with pytest.raises(InvalidHost):
        split_host_port(authority, 443)
