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


class ScriptedWsUpstream(WsUpstream):
    """A WebSocket upstream driven by the client's messages: ``ping`` answers with a Ping
    whose payload is the handshake's Authorization, ``close`` closes with it as the reason,
    ``big:N`` sends an N-byte message; every message it receives is recorded."""

    def __init__(self, tls: ssl.SSLContext):
        self.received: list[bytes | str] = []
        self.extensions: list[str] = []
        super().__init__(tls)

    def _handle(self, raw: socket.socket) -> None:
        from wsproto.events import BytesMessage, Ping

        try:
            s = self.tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            return
        ws = WSConnection(ConnectionType.SERVER)
        auth = ""
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
                    headers = {k.decode().lower(): v.decode() for k, v in event.extra_headers}
                    auth = headers.get("authorization", "")
                    # wsproto hands the offered extensions over apart from the other headers
                    self.extensions.append(", ".join(str(e) for e in event.extensions))
                    s.sendall(ws.send(AcceptConnection()))
                elif isinstance(event, Message):
                    if not event.message_finished:
                        continue
                    self.received.append(event.data)
                    if event.data == "ping":
                        s.sendall(ws.send(Ping(payload=auth.encode())))
                    elif event.data == "close":
                        s.sendall(ws.send(CloseConnection(code=1000, reason=auth)))
                        return
                    elif isinstance(event.data, str) and event.data.startswith("big:"):
                        try:
                            s.sendall(ws.send(BytesMessage(data=b"b" * int(event.data[4:]))))
                        except OSError:  # the proxy closed it mid-message (1009): expected
                            return
                    else:
                        s.sendall(ws.send(TextMessage(data="ok")))
                elif isinstance(event, CloseConnection):
                    try:
                        s.sendall(ws.send(event.response()))
                    except Exception:  # noqa: BLE001, S110 (closing anyway)
                        pass
                    return


class WsClient:
    """A WebSocket client over an existing (tunnelled) socket that reports everything."""

    def __init__(self, sock: socket.socket, host: str, headers: list[tuple[str, str]],
                 extensions: list[object] | None = None):  # fmt: skip
        self.sock, self.ws = sock, WSConnection(ConnectionType.CLIENT)
        self.events: list[object] = []
        sock.settimeout(10)
        sock.sendall(self.ws.send(Request(host=host, target="/ws", extra_headers=headers,
                                          extensions=extensions or [])))  # fmt: skip
        self.accepted = any(
            isinstance(e, AcceptConnection) for e in self.read_until(AcceptConnection)
        )

    def send(self, event: object) -> None:
        self.sock.sendall(self.ws.send(event))

    def read_until(self, kind: type, timeout: float = 10) -> list[object]:
        """Events until one of ``kind`` arrives or the connection ends."""
        got: list[object] = []
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except (OSError, ssl.SSLError):
                return got
            if not data:
                return got
            self.ws.receive_data(data)
            for event in self.ws.events():
                got.append(event)
                self.events.append(event)
                if isinstance(event, kind):
                    return got
