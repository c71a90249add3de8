"""The load clients: hey for keep-alive and new-connection runs, curl for the large body, a
small socket client for the SSE first event and asyncio for the idle connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from typing import Any

from bench.arms import Arm, proxy_env
from bench.fixtures import PLACEHOLDER_FMT
from bench.procs import cpu_seconds, peak_rss_mib, reset_peak_rss, rss_mib
from bench.report import parse_hey

AUTH = f"Authorization: Bearer {PLACEHOLDER_FMT.format(0)}"


def hey(arm: Arm, proto: str, conc: int, seconds: float, keepalive: bool = True) -> dict[str, Any]:
    """One hey run through the arm; req/s, p50/p99, proxy CPU per successful request."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(conc), "-t", "30", "-H", AUTH]
    if proto == "h2":
        cmd.append("-h2")
    if not keepalive:
        cmd.append("-disable-keepalive")
    if arm.proxy:
        cmd += ["-x", arm.proxy]
    cmd.append(arm.url("/"))
    cpu0 = cpu_seconds(arm.pid) if arm.pid else None
    r = subprocess.run(cmd, capture_output=True, text=True, env=proxy_env(), timeout=seconds + 120)
    cpu1 = cpu_seconds(arm.pid) if arm.pid else None
    try:
        out = parse_hey(r.stdout)
    except ValueError:
        raise RuntimeError(f"{arm.name}: hey failed: {r.stdout[-800:]} {r.stderr[-800:]}") from None
    if not out["ok"]:
        raise RuntimeError(f"{arm.name}: no request succeeded: {r.stdout[-1500:]}")
    if cpu0 is not None and cpu1 is not None and out["ok"]:
        out["cpu_ms_per_req"] = (cpu1 - cpu0) * 1000 / out["ok"]
    return out


def stream(arm: Arm, path: str = "/big") -> dict[str, Any]:
    """Download the large body through the arm with curl (HTTP/1.1); MiB/s and the proxy's
    peak RSS during the download."""
    if arm.pid:
        reset_peak_rss(arm.pid)
    cmd = ["curl", "-sSk", "--http1.1", "-o", "/dev/null", "-H", AUTH, "-w",
           "%{http_code} %{size_download} %{time_total}", arm.url(path)]  # fmt: skip
    if arm.proxy:
        cmd[1:1] = ["--proxy", arm.proxy]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=proxy_env(), timeout=3600)
    wall = time.monotonic() - t0
    code, size, total = r.stdout.split()
    out: dict[str, Any] = {"status": int(code), "bytes": int(size), "seconds": float(total) or wall}
    out["mib_s"] = out["bytes"] / 1048576 / out["seconds"]
    if arm.pid:
        out["peak_rss_mib"] = peak_rss_mib(arm.pid)
    return out


# --- SSE --------------------------------------------------------------------------------------


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # as hey: the client's trust is not what is measured
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _tunnel(arm: Arm, port: int) -> ssl.SSLSocket:
    host = arm.url_host
    if arm.proxy:
        sock = socket.create_connection(("127.0.0.1", arm.port), timeout=30)
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"{arm.name}: CONNECT closed")
            head += chunk
        if not head.split(b" ", 2)[1].startswith(b"2"):
            raise ConnectionError(f"{arm.name}: CONNECT answered {head[:80]!r}")
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _client_ctx().wrap_socket(sock, server_hostname=host)


def sse_first_event(arm: Arm, port: int, samples: int) -> list[float]:
    """Milliseconds from sending GET (on a warm tunnel) to the first event's bytes."""
    out = []
    tls = _tunnel(arm, port)
    try:
        for _ in range(samples + 1):  # the first one warms the tunnel up and is dropped
            req = (f"GET /sse HTTP/1.1\r\nHost: {arm.url_host}:{port}\r\n{AUTH}\r\n"
                   "Accept: text/event-stream\r\n\r\n").encode()  # fmt: skip
            t0 = time.perf_counter()
            tls.sendall(req)
            buf, first = b"", None
            while not buf.endswith(b"0\r\n\r\n"):
                chunk = tls.recv(65536)
                if not chunk:
                    raise ConnectionError(f"{arm.name}: SSE connection closed")
                buf += chunk
                if first is None and b"data: first" in buf:
                    first = time.perf_counter() - t0
            assert first is not None
            out.append(first * 1000)
    finally:
        tls.close()
    return out[1:]


# --- idle connections ---------------------------------------------------------------------


async def _open_idle(arm: Arm, n: int, parallel: int = 32) -> list[asyncio.StreamWriter]:
    sem = asyncio.Semaphore(parallel)
    writers: list[asyncio.StreamWriter] = []
    ctx = _client_ctx()
    host, port = arm.url_host, arm.upstream_port

    async def one() -> None:
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", arm.port)
            try:
                w.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                head = await r.readuntil(b"\r\n\r\n")
                if b" 200" not in head.split(b"\r\n", 1)[0]:
                    raise ConnectionError(head[:80])
                await w.start_tls(ctx, server_hostname=host)
                w.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n{AUTH}\r\n\r\n".encode())
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
                if b" 200" not in head.split(b"\r\n", 1)[0]:
                    raise ConnectionError(head[:80])
            except BaseException:
                w.close()
                raise
            writers.append(w)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    del results
    return writers


def idle_connections(arm: Arm, n: int, settle: float = 1.0) -> dict[str, Any]:
    """RSS before, with ``n`` idle keep-alive connections (each CONNECT + TLS + one request,
    then held open), and after they close."""
    assert arm.pid

    async def run() -> dict[str, Any]:
        before = rss_mib(arm.pid)  # type: ignore[arg-type]
        writers = await _open_idle(arm, n)
        await asyncio.sleep(settle)
        held = rss_mib(arm.pid)  # type: ignore[arg-type]
        for w in writers:
            w.close()
        for w in writers:
            with contextlib.suppress(Exception):
                await w.wait_closed()
        await asyncio.sleep(settle)
        after = rss_mib(arm.pid)  # type: ignore[arg-type]
        served = len(writers)
        return {
            "rss_before_mib": before,
            "rss_held_mib": held,
            "rss_after_close_mib": after,
            "served": served,
            "conn_kib_each": (held - before) * 1024 / served if served else None,
        }

    return asyncio.run(run())
