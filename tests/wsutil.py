"""A WebSocket upstream that reflects the handshake's Authorization in its first message and
echoes every message, and a WebSocket client over an existing socket (both on wsproto)."""

from __future__ import annotations

import socket
import ssl
import threading

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage


class WsUpstream:
    def __init__(self, tls: ssl.SSLContext):
        self.tls = tls
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen_auth: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            s = self.tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            return
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    auth = dict(
                        (k.decode().lower(), v.decode()) for k, v in event.extra_headers
                    ).get("authorization", "")
                    self.seen_auth.append(auth)
                    s.sendall(ws.send(AcceptConnection()))
                    s.sendall(ws.send(TextMessage(data=f"auth:{auth}")))
                elif isinstance(event, Message):
                    s.sendall(ws.send(TextMessage(data=f"echo:{event.data}")))
                elif isinstance(event, CloseConnection):
                    s.sendall(ws.send(event.response()))
                    return


def ws_exchange(
    sock: socket.socket, host: str, headers: list[tuple[str, str]], send: list[str]
) -> list[str]:
    """Open a WebSocket on ``sock``, send messages, and return every text message received."""
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=host, target="/ws", extra_headers=headers)))
    received: list[str] = []
    accepted = False
    sock.settimeout(10)
    want = 1 + len(send)
    while len(received) < want:
        data = sock.recv(65536)
        if not data:
            break
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection) and not accepted:
                accepted = True
                for text in send:
                    sock.sendall(ws.send(TextMessage(data=text)))
            elif isinstance(event, TextMessage):
                received.append(event.data)
    return received
