"""The blocked address classes, as a table."""

from __future__ import annotations

import ipaddress

import pytest

from egress.addresses import AddressPolicy

POLICY = AddressPolicy(
    allowed=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("127.0.0.1/32")),
    own=((ipaddress.ip_address("127.0.0.1"), 8080),),
)

CASES = [
    ("8.8.8.8", None),
    ("2606:4700::1111", None),
    ("10.1.2.3", None),  # allowed explicitly
    ("10.2.0.1", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("127.0.0.1", None),  # allowed explicitly
    ("127.0.0.2", "loopback"),
    ("::1", "loopback"),
    ("100.64.0.1", "cgnat"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("168.63.129.16", "metadata"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("fd12::1", "private"),
    ("240.0.0.1", "reserved"),
    ("::ffff:192.168.0.1", "private (embedded in ::ffff:c0a8:1)"),
    ("::ffff:10.1.2.3", None),  # embeds an explicitly allowed address
    ("64:ff9b::a9fe:a9fe", "metadata (embedded in 64:ff9b::a9fe:a9fe)"),
    ("2002:c0a8:101::1", "private (embedded in 2002:c0a8:101::1)"),
    (
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "reserved (embedded in 2001:0:4136:e378:8000:63bf:3fff:fdd2)",
    ),
]


@pytest.mark.parametrize(("address", "blocked"), CASES, ids=[c[0] for c in CASES])
def test_blocked_classes(address: str, blocked: str | None) -> None:
    assert POLICY.blocked(ipaddress.ip_address(address)) == blocked


def test_the_proxy_never_dials_itself() -> None:
    assert POLICY.blocked(ipaddress.ip_address("127.0.0.1"), 8080) == "the proxy itself"
    assert POLICY.blocked(ipaddress.ip_address("127.0.0.1"), 8081) is None


def test_a_wildcard_listener_is_every_local_address() -> None:
    p = AddressPolicy(
        allowed=(ipaddress.ip_network("10.0.0.0/8"),),
        own=((ipaddress.ip_address("0.0.0.0"), 8080),),
    )
    assert p.blocked(ipaddress.ip_address("10.1.2.3"), 8080) == "the proxy itself"
    assert p.blocked(ipaddress.ip_address("10.1.2.3"), 8081) is None
    assert p.blocked(ipaddress.ip_address("8.8.8.8"), 8080) is None


def test_usable_keeps_answer_order() -> None:
    addrs = [ipaddress.ip_address(a) for a in ("10.9.0.1", "8.8.4.4", "8.8.8.8")]
    ok, refused = POLICY.usable(addrs, 443)
    assert [str(a) for a in ok] == ["8.8.4.4", "8.8.8.8"]
    assert [(str(a), why) for a, why in refused] == [("10.9.0.1", "private")]
