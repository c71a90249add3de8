"""Resource limits: one agent must not starve the others or kill the proxy.

Each attack runs against the real egress while an unrelated client keeps making small
requests through the same proxy; the test asserts the attack is refused with its reason
code and an audit record, that the unrelated client's slowest request stays under a
generous bound, and that the proxy's resident memory stays under a stated bound. The exact
figures belong in bench/; these bounds only catch a proxy that stalls or balloons.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from tests.canary import CANARIES
from tests.conftest import (
    API,
    OTHER,
    RunningProxy,
    base_config,
    proxy_env,
    start_proxy,
    write_config,
)  # fmt: skip
from tests.nginx_upstream import NginxUpstream
from tests.rawclient import connect_tunnel, exchange, status_of
from tests.upstream import Upstream

EXTRA = {f"EGRESS_TEST_EXTRA{i}": f"extra-s3cr3t-{i}-0123456789abcdef" for i in range(6)}
CANARIES.update(EXTRA.values())
# Generous, for a loaded 2-core machine: an unrelated request normally takes a few ms.
SLOWEST_UNRELATED_S = 1.5
RSS_GROWTH_MB = 150


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def lproxy(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, nginx: NginxUpstream,
           test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("limits")
    cfg = base_config(tmp, test_ca_file, upstream.port)
    # nginx, in its own process: an HTTP/2 upstream, and the one the unrelated client and
    # the heavy attacks use (a Python upstream in the test process would share its GIL with
    # the client whose latency is measured).
    cfg["allow"] += [{"host": API, "ports": [nginx.h2_port, nginx.h1_port]},
                     {"host": OTHER, "ports": [nginx.h1_port]}]  # fmt: skip
    # More secrets not bound to OTHER: the leak guard's work must not grow with them.
    cfg["secrets"] += [{"name": f"extra{i}", "source": {"env": f"EGRESS_TEST_EXTRA{i}"},
                        "hosts": [API]} for i in range(6)]  # fmt: skip
    cfg["limits"] = {"max_body_bytes": 5 * 1024 * 1024, "max_websocket_message_bytes": 256 * 1024}
    env = proxy_env(**EXTRA)
    p = start_proxy(write_config(tmp, cfg), tmp, env=env)
    try:
        yield p
    finally:
        assert p.stop() == 0


def unrelated_latency(p: RunningProxy, port: int, attack: Callable[[], Any],
                      warmup: float = 0.3) -> tuple[float, Any]:  # fmt: skip
    """Run ``attack`` in a thread; meanwhile make small requests to OTHER (nginx's HTTP/1.1
    port) through the proxy over one kept-alive tunnel; return the slowest one and what the
    attack returned."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = attack()
        except Exception as e:  # noqa: BLE001 (reported by the caller)
            result["error"] = e

    s = connect_tunnel(p.port, OTHER, port, p.ca)
    t = threading.Thread(target=run)
    t.start()
    time.sleep(warmup)
    slowest = 0.0
    raw = f"GET /unrelated HTTP/1.1\r\nHost: {OTHER}:{port}\r\n\r\n".encode()
    try:
        while t.is_alive():
            start = time.monotonic()
            assert status_of(exchange(s, raw, timeout=10)) == 200
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.02)
    finally:
        s.close()
        t.join(60)
    if "error" in result:
        raise result["error"]
    return slowest, result.get("value")


def audited(p: RunningProxy, reason: str, since: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in p.audit()[since:] if r["reason"] == reason]
        if found:
            return found
        time.sleep(0.05)
    return []


# --- heads -------------------------------------------------------------------------------


def _flood_head(p: RunningProxy, port: int, connect: bool, mib: int = 200) -> bytes:
    """Send a request head that never ends: ``mib`` MiB of header lines."""
    if connect:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(f"CONNECT {API}:{port} HTTP/1.1\r\nHost: {API}:{port}\r\n".encode())
    else:
        s = connect_tunnel(p.port, API, port, p.ca)
        s.sendall(f"GET /h HTTP/1.1\r\nHost: {API}:{port}\r\n".encode())
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    answer = b""
    try:
        for _ in range(mib * 1024):
            s.sendall(line)
    except (OSError, ssl.SSLError):
        pass  # closed by the proxy: what we expect
    try:
        s.settimeout(5)
        while chunk := s.recv(65536):
            answer += chunk
    except (OSError, ssl.SSLError):
        pass
    s.close()
    return answer


@pytest.mark.parametrize("connect", [False, True], ids=["request in a tunnel", "CONNECT"])
def test_an_endless_request_head_is_refused_and_bounded(
    lproxy: RunningProxy, upstream: Upstream, nginx: NginxUpstream, connect: bool
) -> None:
    before, rss0 = len(lproxy.audit()), rss_mb(lproxy.proc.pid)
    peak = [rss0]

    def attack() -> bytes:
        out = _flood_head(lproxy, upstream.port, connect)
        peak.append(rss_mb(lproxy.proc.pid))
        return out

    slowest, answer = unrelated_latency(lproxy, nginx.h1_port, attack)
    assert status_of(answer) == 431 and b"head_too_large" in answer, answer[:200]
    assert audited(lproxy, "head_too_large", before)
    assert slowest < SLOWEST_UNRELATED_S, slowest
    assert max(peak) - rss0 < RSS_GROWTH_MB, (rss0, peak)
    assert not [r for r in upstream.requests if r.path == "/h"]


def test_bytes_piled_up_behind_a_pending_response_are_capped(
    lproxy: RunningProxy, upstream: Upstream
) -> None:
    before = len(lproxy.audit())
    with connect_tunnel(lproxy.port, API, upstream.port, lproxy.ca) as s:
        # A request whose response the upstream delays, then 8 MiB more behind it.
        s.sendall(
            f"GET /reflect?as=sse HTTP/1.1\r\nHost: {API}:{upstream.port}\r\nx-pause: 3\r\n\r\n".encode()
        )
        try:
            for _ in range(8 * 1024):
                s.sendall(b"Z" * 1024)
        except (OSError, ssl.SSLError):
            pass
    assert audited(lproxy, "head_too_large", before)


# --- HTTP/2 rapid reset -----------------------------------------------------------------


def _rapid_reset(p: RunningProxy, port: int, streams: int = 20_000) -> tuple[int, bool]:
    """HEADERS then RST_STREAM, as fast as possible; returns (streams sent, GOAWAY seen)."""
    s = connect_tunnel(p.port, API, port, p.ca, alpn=["h2"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sent, goaway = 0, False
    s.settimeout(0.0)
    try:
        for i in range(streams):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                    (":authority", f"{API}:{port}"), (":path", f"/rr{i}")],
                              end_stream=True)  # fmt: skip
            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            s.setblocking(True)
            s.sendall(conn.data_to_send())
            s.setblocking(False)
            sent += 1
            try:
                data = s.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    goaway = ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
                    raise StopIteration
    except (StopIteration, OSError, ssl.SSLError, h2.exceptions.ProtocolError):
        pass
    s.close()
    return sent, goaway


def test_http2_rapid_reset_is_cut_off(
    lproxy: RunningProxy, upstream: Upstream, nginx: NginxUpstream
) -> None:
    before, rss0 = len(lproxy.audit()), rss_mb(lproxy.proc.pid)
    parsed_before = len(nginx.records())
    slowest, (sent, goaway) = unrelated_latency(
        lproxy, nginx.h1_port, lambda: _rapid_reset(lproxy, nginx.h2_port)
    )
    assert sent < 20_000, "the connection was never closed"
    assert audited(lproxy, "stream_flood", before)
    assert slowest < SLOWEST_UNRELATED_S, slowest
    assert rss_mb(lproxy.proc.pid) - rss0 < RSS_GROWTH_MB
    # Streams reset in the same read as their HEADERS never reach the upstream; the others
    # stop at the limit (100 resets per window).
    assert len(nginx.records_after(parsed_before)) <= 101


# --- bodies ------------------------------------------------------------------------------


def test_a_compressed_request_body_is_not_inflated_past_the_limit(
    lproxy: RunningProxy, upstream: Upstream, nginx: NginxUpstream
) -> None:
    bomb = gzip.compress(b"\0" * (512 * 1024 * 1024), compresslevel=9)  # 512 MiB from ~500 KiB
    before, rss0 = len(lproxy.audit()), rss_mb(lproxy.proc.pid)
    head = (f"POST /bomb HTTP/1.1\r\nHost: {API}:{upstream.port}\r\nContent-Encoding: gzip\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(bomb)}\r\n\r\n").encode()  # fmt: skip

    def attack() -> bytes:
        with connect_tunnel(lproxy.port, API, upstream.port, lproxy.ca) as s:
            return exchange(s, head + bomb, timeout=20)

    slowest, answer = unrelated_latency(lproxy, nginx.h1_port, attack, warmup=0.05)
    assert status_of(answer) == 413 and b"body_too_large" in answer
    assert audited(lproxy, "body_too_large", before)
    assert slowest < SLOWEST_UNRELATED_S, slowest
    assert rss_mb(lproxy.proc.pid) - rss0 < RSS_GROWTH_MB
    assert not [r for r in upstream.requests if r.path == "/bomb"]


@pytest.mark.parametrize("codec", ["bz2_codec", "zlib_codec", "base64_codec"])
def test_python_codecs_are_not_content_encodings(
    lproxy: RunningProxy, upstream: Upstream, codec: str
) -> None:
    """mitmproxy decodes unknown Content-Encodings through Python codecs; egress never does:
    a body it cannot decode to check is refused, not inflated."""
    import codecs

    body = codecs.encode(b'{"k": "v"}', codec)
    head = (f"POST /codec HTTP/1.1\r\nHost: {API}:{upstream.port}\r\nContent-Encoding: {codec}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with connect_tunnel(lproxy.port, API, upstream.port, lproxy.ca) as s:
        answer = exchange(s, head + body)
    assert status_of(answer) == 413 and b"body_too_large" in answer


def test_a_percent_dense_body_does_not_stall_other_clients(
    lproxy: RunningProxy, nginx: NginxUpstream
) -> None:
    """The leak guard decodes percent-encoding in C and large bodies off the event loop."""
    body = b"d=" + b"%41" * (4 * 1024 * 1024 // 3)  # 4 MiB, under max_body_bytes (5 MiB here)
    port = nginx.h1_port
    head = (f"POST /dense HTTP/1.1\r\nHost: {OTHER}:{port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip

    def attack() -> list[int]:
        statuses = []
        for _ in range(3):
            with connect_tunnel(lproxy.port, OTHER, port, lproxy.ca) as s:
                statuses.append(status_of(exchange(s, head + body, timeout=60)))
        return statuses

    rss0 = rss_mb(lproxy.proc.pid)
    slowest, statuses = unrelated_latency(lproxy, port, attack, warmup=0.05)
    assert statuses == [200] * 3
    print(f"slowest unrelated request during the attack: {slowest:.3f} s")
    assert slowest < SLOWEST_UNRELATED_S, slowest
    assert rss_mb(lproxy.proc.pid) - rss0 < RSS_GROWTH_MB
