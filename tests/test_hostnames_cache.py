"""The caches on canonical_host and the address parser never change an answer, and stay
bounded however many distinct names an agent sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress import hostnames
from egress.errors import InvalidHost
from egress.hostnames import CACHE_ENTRIES, CACHE_MAX_CHARS, canonical_host, is_ip

TABLE = [
    "api.github.com", "API.GitHub.com", "api.github.com.", "bücher.de", "xn--bcher-kva.de",
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]", "::1",
    "::ffff:127.0.0.1", "[::ffff:7f00:1]", "2001:DB8::1", "", " a.com", "a..com", "a.com..",
    "a b.com", "a.com/x", "user@a.com", "1.2.3.999", "[a.com]", "-a.com", "a" * 64 + ".com",
    "xn--zz.com", "a\r\nb.com", "[fe80::1%eth0]", "fe80::1%25eth0", "ａｐｉ.example",
    "a\u00adb.example", "x" * 253, "x" * (CACHE_MAX_CHARS + 1), "a\u00ad" * 400 + ".example",
    "Ex\u0130mple.com", "\udce9.example", "1.2.3.4.", "0x7f.1", "[::ffff:127.0.0.1]:443",
]  # fmt: skip


def uncached(raw: str) -> tuple[str, str]:
    """("ok", canonical) or ("error", message) from the function without its cache."""
    try:
        return "ok", hostnames._canonical_host(raw)
    except InvalidHost as e:
        return "error", str(e)


def cached(raw: str) -> tuple[str, str]:
    try:
        return "ok", canonical_host(raw)
    except InvalidHost as e:
        return "error", str(e)


def same_answers(raw: str) -> None:
    want = uncached(raw)
    assert cached(raw) == want  # the first call fills the cache
    assert cached(raw) == want  # the second answers from it
    assert hostnames._ip(raw) == hostnames._ip_uncached(raw)
    assert hostnames._ip(raw) == hostnames._ip_uncached(raw)
    assert is_ip(raw) == (hostnames._ip_uncached(raw) is not None)


@pytest.mark.parametrize("raw", TABLE)
def test_the_cache_never_changes_an_answer(raw: str) -> None:
    same_answers(raw)


label = st.text(alphabet="abcxyz019-_ÄßéЖ.", min_size=0, max_size=12)
names = st.lists(label, min_size=1, max_size=5).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t)))
ipv4_odd = st.integers(0, 2**33).map(lambda n: st.sampled_from([str(n), hex(n), oct(n)[2:]])).flatmap(lambda s: s)  # fmt: skip
ipv6 = st.ip_addresses(v=6).map(str) | st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = (
    names | ipv4 | ipv4_odd | ipv6 | st.text(max_size=40)
    | st.builds(lambda h, s: h + s, names, st.sampled_from(["", ".", " ", "%25x", ":443", "/", "\x00"]))
    | names.map(str.upper)
)  # fmt: skip


@settings(max_examples=750, deadline=None)
@given(raw=hosts)
def test_generated_hosts_get_the_uncached_answer(raw: str) -> None:
    same_answers(raw)


def test_the_caches_stay_bounded_under_many_distinct_names() -> None:
    for i in range(3 * CACHE_ENTRIES):
        assert canonical_host(f"h{i}.Example.com") == f"h{i}.example.com"
        with pytest.raises(InvalidHost):
            canonical_host(f"bad host {i}")
        assert hostnames._ip(f"10.0.{i // 256 % 256}.{i % 256}") is not None
    assert hostnames._canonical_cached.cache_info().currsize <= CACHE_ENTRIES
    assert hostnames._ip_cached.cache_info().currsize <= CACHE_ENTRIES
    # the early names were pushed out, and still get their answer
    assert canonical_host("h0.Example.com") == "h0.example.com"


def test_long_strings_are_never_kept() -> None:
    hostnames._canonical_cached.cache_clear()
    hostnames._ip_cached.cache_clear()
    long_name = "a\u00ad" * 5000 + ".example"  # soft hyphens map to nothing under UTS 46
    assert cached(long_name) == uncached(long_name)
    assert hostnames._ip(long_name) is None
    assert hostnames._canonical_cached.cache_info().currsize == 0
    assert hostnames._ip_cached.cache_info().currsize == 0


def test_errors_are_raised_anew_each_time() -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(InvalidHost) as e:
            canonical_host("a..com")
        errors.append(e.value)
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])
