"""Hand-made requests through the proxy, for cases that polite clients never send."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def connect_tunnel(proxy_port: int, host: str, port: int, ca: Path, sni: str | None = "",
                   alpn: list[str] | None = None) -> ssl.SSLSocket:  # fmt: skip
    """CONNECT through the proxy, then TLS to it (SNI = host unless given; None: no SNI)."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError(f"proxy closed during CONNECT: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode(errors="replace"))
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if sni is None:
        ctx.check_hostname = False
        return ctx.wrap_socket(s)
    return ctx.wrap_socket(s, server_hostname=sni or host)


def exchange(sock: socket.socket, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; read until the peer closes or stays silent."""
    sock.settimeout(timeout)
    sock.sendall(data)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and _complete(out):
                break
    except (TimeoutError, ssl.SSLError, ConnectionError):
        pass
    return out


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def status_of(response: bytes) -> int:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0
