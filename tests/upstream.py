"""A recording upstream: a real HTTP(S) server on loopback that reports what it received.

The proof of injection is what this server saw; the proof that a denied destination was
never contacted is its connection counter.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.connections = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("location", self.path.split("=", 1)[1])
            self.send_header("content-length", "0")
            self.end_headers()
            with self.server.recorder.lock:
                self.server.recorder.requests.append(Received(self.command, self.path, {}, b""))
            return
        if self.path.startswith("/reflect"):
            return self._reflect()
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = Received(
            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
        )
        with self.server.recorder.lock:
            self.server.recorder.requests.append(rec)
        parts = urlsplit(self.path)
        payload = json.dumps(
            {
                "method": self.command,
                "path": parts.path,
                "query": dict(parse_qsl(parts.query)),
                "headers": rec.headers,
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("alt-svc", 'h3=":443"; ma=86400')
        self.end_headers()
        self.wfile.write(payload)

    def _reflect(self) -> None:
        """Echo the request's Authorization in the form ?as= asks for, in a header too."""
        import base64
        import gzip
        import zlib

        with self.server.recorder.lock:
            self.server.recorder.requests.append(
                Received(self.command, self.path, dict(self.headers), b"")
            )
        auth = self.headers.get("authorization", "")
        form = self.path.split("as=", 1)[1] if "as=" in self.path else "raw"
        doc = json.dumps({"authorization": auth, "headers": dict(self.headers)}).encode()
        body, extra = doc, {}
        if form == "base64":
            body = base64.b64encode(doc)
        elif form == "hex":
            body = doc.hex().encode()
        elif form == "gzip":
            body, extra = gzip.compress(doc), {"content-encoding": "gzip"}
        elif form == "deflate":
            body, extra = zlib.compress(doc), {"content-encoding": "deflate"}
        elif form == "weird-encoding":
            body, extra = doc, {"content-encoding": "x-egress-unknown"}
        elif form == "big":
            body = b"a" * 70_000 + doc + b"b" * 70_000  # over the proxy's buffering limit
        elif form.startswith(
            "wrap"
        ):  # wrap<width>-<lf|crlf|jsonlf>[-big]: as code hosts send files
            width, _, rest = form[4:].partition("-")
            br = {"lf": b"\n", "crlf": b"\r\n", "jsonlf": b"\\n"}[rest.split("-")[0]]
            blob = base64.b64encode(b"#!/bin/sh\n" + doc)
            blob = br.join(blob[i : i + int(width)] for i in range(0, len(blob), int(width)))
            pad = b" " * 70_000 if rest.endswith("-big") else b""
            body = b'{"encoding": "base64", "content": "' + blob + b'"}' + pad
        elif form == "te-gzip":
            body = gzip.compress(doc)
            self.send_response(200)
            self.send_header("transfer-encoding", "gzip, chunked")
            self.end_headers()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            return
        elif form == "reason":
            self.send_response(401, f"Unauthorized: {auth}")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        elif form == "sse":  # one event now, the next one after a pause
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i, event in enumerate([b'data: {"n": 1, "auth": "' + auth.encode() + b'"}\n\n',
                                       b'data: {"n": 2}\n\n']):  # fmt: skip
                if i:
                    time.sleep(float(self.headers.get("x-pause", "2")))
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo", auth)
        self.send_header("set-cookie", f"session={base64.b64encode(auth.encode()).decode()}")
        for k, v in extra.items():
            self.send_header(k, v)
        if form == "chunked":
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(0, len(doc), 7):  # small chunks: the secret is split across them
                piece = doc[i : i + 7]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    recorder: Recorder
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        with self.recorder.lock:
            self.recorder.connections += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class _Server6(_Server):
    address_family = socket.AF_INET6  # dual stack: IPv4 peers arrive as ::ffff:a.b.c.d


class Upstream:
    def __init__(self, tls: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 0):
        self.recorder = Recorder()
        server = _Server6 if ":" in host else _Server
        self._server = server((host, port), _Handler)
        self._server.recorder = self.recorder
        self._server.tls = tls
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def requests(self) -> list[Received]:
        return self.recorder.requests

    @property
    def connections(self) -> int:
        return self.recorder.connections


class RawUpstream:
    """A TLS server that answers each request with raw bytes made from what it received
    (``answer(request bytes)``), then closes: for upstreams that misbehave on purpose."""

    def __init__(self, tls: ssl.SSLContext, answer: Callable[[bytes], bytes]):
        self.answer = answer
        self.tls = tls
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.tls.wrap_socket(raw, server_side=True) as s:
                    s.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    self.seen.append(data)
                    s.sendall(self.answer(data))
            except (OSError, ssl.SSLError):
                continue

    def close(self) -> None:
        self.sock.close()
