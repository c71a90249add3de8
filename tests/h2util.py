"""A minimal HTTP/2 upstream that records each stream, and a raw HTTP/2 client that can put
several authorities on one connection (what connection coalescing does)."""

from __future__ import annotations

import json
import socket
import ssl
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.upstream import Received, Recorder


class H2Upstream:
    def __init__(self, tls: ssl.SSLContext):
        tls.set_alpn_protocols(["h2"])
        self.tls = tls
        self.recorder = Recorder()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> H2Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            with self.recorder.lock:
                self.recorder.connections += 1
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            s = self.tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        while True:
            try:
                data = s.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                               for k, v in event.headers}  # fmt: skip
                    with self.recorder.lock:
                        self.recorder.requests.append(
                            Received(headers[":method"], headers[":path"], headers, b"")
                        )
                    body = json.dumps({"authority": headers.get(":authority"),
                                       "authorization": headers.get("authorization", "")}).encode()  # fmt: skip
                    conn.send_headers(
                        event.stream_id, [(":status", "200"), ("content-length", str(len(body)))]
                    )
                    conn.send_data(event.stream_id, body, end_stream=True)
            s.sendall(conn.data_to_send())
        s.close()


def h2_requests(
    sock: ssl.SSLSocket,
    requests: list[tuple[str, str]],
    extra: list[tuple[str, str]] | None = None,
    bodies: dict[str, bytes] | None = None,
) -> dict[str, int]:
    """Send GET requests (authority, path) as streams of one connection; return path -> status."""
    # No outbound validation: this client sends what polite clients would not.
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    paths: dict[int, str] = {}
    for authority, path in requests:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                                (":path", path), *(extra or [])], end_stream=True)  # fmt: skip
        paths[sid] = path
    sock.sendall(conn.data_to_send())
    status: dict[str, int] = {}
    done: set[int] = set()
    sock.settimeout(10)
    while len(done) < len(paths):
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status[paths[event.stream_id]] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.StreamReset):
                status.setdefault(paths[event.stream_id], 0)  # 0: refused with a stream reset
                done.add(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                done.add(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if bodies is not None:
                    bodies[paths[event.stream_id]] = (
                        bodies.get(paths[event.stream_id], b"") + event.data
                    )
        sock.sendall(conn.data_to_send())
    for path in paths.values():
        status.setdefault(path, 0)  # no answer: the connection was closed on it
    return status


def h2_exchange(
    sock: ssl.SSLSocket, streams: list[list[tuple[bytes, bytes]]], timeout: float = 10
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send each header list as one stream (no validation: any bytes go), ending it at once;
    return (status, response headers, body) per stream. Status 0: the stream was reset;
    -1: the connection closed before an answer."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                  normalize_outbound_headers=False)
    )  # fmt: skip
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    order: list[int] = []
    for headers in streams:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=True)
        order.append(sid)
    sock.sendall(conn.data_to_send())
    out: dict[int, tuple[int, dict[bytes, bytes], bytes]] = {}
    done: set[int] = set()
    sock.settimeout(timeout)
    try:
        while len(done) < len(order):
            data = sock.recv(65536)
            if not data:
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            for event in events:
                sid = getattr(event, "stream_id", None)
                if isinstance(event, h2.events.ResponseReceived):
                    out[sid] = (int(dict(event.headers)[b":status"]), dict(event.headers), b"")
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    status, headers, body = out.get(sid, (-1, {}, b""))
                    out[sid] = (status, headers, body + event.data)
                elif isinstance(event, h2.events.StreamReset):
                    out.setdefault(sid, (0, {}, b""))
                    done.add(sid)
                elif isinstance(event, h2.events.StreamEnded):
                    done.add(sid)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    done.update(order)
            sock.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError):
        pass
    return [out.get(sid, (-1, {}, b"")) for sid in order]
