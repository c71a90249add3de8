"""A refused request's reason reaches the client through every channel it shows: the
status line's reason phrase (all a refused CONNECT gives most clients), X-Egress-Reason
and the body. Real clients against the real proxy."""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable

import httpx
import pytest
import requests

from tests.conftest import API, OTHER, RunningProxy
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"  # api_token's default placeholder (tests/conftest.py)


def via_urllib(proxy: RunningProxy, url: str) -> str:
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url, "http": proxy.url}),
        urllib.request.HTTPSHandler(context=ctx),
    )
    try:
        opener.open(url, timeout=20).read()
    except (urllib.error.URLError, OSError) as e:
        return str(e)
    return "no error"


def via_requests(proxy: RunningProxy, url: str) -> str:
    try:
        requests.get(
            url, proxies={"https": proxy.url, "http": proxy.url}, verify=str(proxy.ca), timeout=20
        )
    except requests.RequestException as e:
        return str(e)
    return "no error"


def via_httpx(proxy: RunningProxy, url: str) -> str:
    try:
        with httpx.Client(
            proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca))
        ) as c:
            c.get(url, timeout=20)
    except httpx.HTTPError as e:
        return str(e)
    return "no error"


def via_curl_verbose(proxy: RunningProxy, url: str) -> str:
    r = subprocess.run(["curl", "-sS", "-v", "--max-time", "20", "--proxy", proxy.url, "--cacert", str(proxy.ca), url],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    return r.stderr


CLIENTS: dict[str, Callable[[RunningProxy, str], str]] = {
    "urllib": via_urllib,
    "requests": via_requests,
    "httpx": via_httpx,
    "curl -v": via_curl_verbose,
}

REFUSED = [
    # (what, url (port filled in), the text every client must show)
    ("host not allowed", "https://evil.example.invalid/", "egress: host_not_allowed for evil.example.invalid:443"),
    ("port not allowed", "https://" + API + ":1/", f"egress: port_not_allowed for {API}:1"),
    ("address literal", "https://192.0.2.7/", "egress: ip_literal for 192.0.2.7:443"),
]  # fmt: skip


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("what", "url", "shown"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refused_tunnel_names_its_reason_in_the_client(
    proxy: RunningProxy, upstream: Upstream, client: str, what: str, url: str, shown: str
) -> None:
    out = CLIENTS[client](proxy, url)
    assert shown in out, out


def test_a_refused_request_inside_a_tunnel_has_phrase_header_and_body(
    proxy: RunningProxy, upstream: Upstream
) -> None:
    # The tunnel to OTHER is allowed; the placeholder of api_token inside it is not.
    tls = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=tls) as c:
        r = c.get(f"https://{OTHER}:{upstream.port}/leak", params={"q": PH}, timeout=20)
    assert r.status_code == 403
    assert r.headers["x-egress-reason"] == "placeholder_to_unbound_host"
    phrase = f"Forbidden (egress: placeholder_to_unbound_host for {OTHER}:{upstream.port})"
    assert r.reason_phrase == phrase
    assert "placeholder_to_unbound_host" in r.text


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("evil.example", 443, "Forbidden (egress: host_not_allowed for evil.example:443)"),
        (
            "bad host\r\nX-Injected: 1",
            443,
            "Forbidden (egress: host_not_allowed for badhostX-Injected:1:443)",
        ),
        ("", None, "Forbidden (egress: host_not_allowed)"),
        ("a" * 300, 443, "Forbidden (egress: host_not_allowed for " + "a" * 120 + ")"),
    ],
)
def test_the_phrase_is_one_line_of_visible_ascii(
    host: str, port: int | None, expected: str
) -> None:
    from egress.messages import denial_phrase
    from egress.reasons import Reason

    phrase = denial_phrase(Reason.HOST_NOT_ALLOWED, host, port)
    assert phrase == expected
    assert all("\x20" <= c <= "\x7e" for c in phrase)
