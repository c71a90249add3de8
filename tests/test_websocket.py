"""WebSocket: every channel the agent writes to is guarded, every byte it receives scrubbed,
and no message grows past the limit.

- the outbound leak guard reads every message the agent sends (text and binary, whole or
  fragmented), as deeply as it reads requests;
- Ping and Pong payloads and Close reasons from the upstream are scrubbed like messages;
- permessage-deflate is never negotiated (the agent's offer is removed), and a message
  over limits.max_websocket_message_bytes closes the connection with 1009.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from tests.conftest import (
    API,
    OTHER_SECRET,
    SECRET,
    RunningProxy,
    assert_no_secret,
    base_config,
    start_proxy,
    write_config,
)
from tests.rawclient import connect_tunnel
from tests.test_injection import ENCODERS
from tests.wsutil import ScriptedWsUpstream, WsClient

PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"  # bound to OTHER only: never to the WebSocket host
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def ws_upstream(test_ca: trustme.CA) -> Iterator[ScriptedWsUpstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    up = ScriptedWsUpstream(ctx)
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def ws_proxy(tmp_path_factory: pytest.TempPathFactory, ws_upstream: ScriptedWsUpstream,
             test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("ws")
    cfg = base_config(tmp, test_ca_file, ws_upstream.port)
    cfg["allow"][0]["websocket"] = True
    cfg["limits"] = {"max_websocket_message_bytes": LIMIT}
    p = start_proxy(write_config(tmp, cfg), tmp)
    try:
        yield p
    finally:
        assert p.stop() == 0


def open_ws(p: RunningProxy, up: ScriptedWsUpstream, **kw: Any) -> WsClient:
    s = connect_tunnel(p.port, API, up.port, p.ca)
    client = WsClient(s, f"{API}:{up.port}", [("authorization", f"Bearer {PH}")], **kw)
    assert client.accepted
    return client


def websocket_records(p: RunningProxy, since: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in p.audit()[since:] if r["event"] == "websocket"]
        if found:
            return found
        time.sleep(0.05)
    return []


def _fragments(data: str | bytes, parts: int) -> list[Any]:
    step = max(1, len(data) // parts)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    kind = TextMessage if isinstance(data, str) else BytesMessage
    return [
        kind(data=piece, message_finished=i == len(pieces) - 1) for i, piece in enumerate(pieces)
    ]


LEAKS = [(f"{name}, {framing}", encode, framing) for name, encode in ENCODERS.items()
         for framing in ("text", "binary", "fragmented")]  # fmt: skip


@pytest.mark.parametrize(("encode", "framing"), [c[1:] for c in LEAKS], ids=[c[0] for c in LEAKS])
def test_a_real_value_in_a_message_closes_the_connection(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream, encode: Any, framing: str
) -> None:
    before, received = len(ws_proxy.audit()), len(ws_upstream.received)
    client = open_ws(ws_proxy, ws_upstream)
    text = "report: " + encode(OTHER_SECRET) + " end"
    if framing == "text":
        client.send(TextMessage(data=text))
    elif framing == "binary":
        client.send(BytesMessage(data=text.encode()))
    else:
        for fragment in _fragments(text, 4):
            client.send(fragment)
    client.read_until(CloseConnection, timeout=5)
    client.sock.close()
    records = websocket_records(ws_proxy, before)
    assert records and records[-1]["reason"] == "secret_to_unbound_host", records
    assert len(ws_upstream.received) == received, "the message reached the upstream"


def test_a_foreign_placeholder_in_a_message_closes_the_connection(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream
) -> None:
    before, received = len(ws_proxy.audit()), len(ws_upstream.received)
    client = open_ws(ws_proxy, ws_upstream)
    client.send(TextMessage(data=f"use {quote(OTHER_PH)} or {OTHER_PH}"))
    client.read_until(CloseConnection, timeout=5)
    records = websocket_records(ws_proxy, before)
    assert records and records[-1]["reason"] == "placeholder_to_unbound_host"
    assert len(ws_upstream.received) == received


def test_a_harmless_message_passes(ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream) -> None:
    client = open_ws(ws_proxy, ws_upstream)
    client.send(TextMessage(data="hello"))
    got = client.read_until(TextMessage)
    assert [e.data for e in got if isinstance(e, TextMessage)] == ["ok"]


def test_ping_payload_and_close_reason_are_scrubbed(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream
) -> None:
    client = open_ws(ws_proxy, ws_upstream)
    client.send(TextMessage(data="ping"))
    pings = [e for e in client.read_until(Ping) if isinstance(e, Ping)]
    client.send(TextMessage(data="close"))
    closes = [e for e in client.read_until(CloseConnection) if isinstance(e, CloseConnection)]
    assert pings and bytes(pings[0].payload).startswith(f"Bearer {PH}".encode())
    assert closes and closes[0].reason.startswith(f"Bearer {PH}")
    assert_no_secret(bytes(pings[0].payload), closes[0].reason)
    assert SECRET not in repr(client.events)


def test_permessage_deflate_is_never_negotiated(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream
) -> None:
    client = open_ws(ws_proxy, ws_upstream, extensions=[PerMessageDeflate()])
    client.send(TextMessage(data="hello"))
    client.read_until(TextMessage)
    assert ws_upstream.extensions[-1] == ""  # the agent's offer was removed


@pytest.mark.parametrize("direction", ["from the agent", "from the upstream"])
def test_a_message_over_the_limit_closes_with_1009(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream, direction: str
) -> None:
    before = len(ws_proxy.audit())
    client = open_ws(ws_proxy, ws_upstream)
    if direction == "from the agent":
        for fragment in _fragments(b"a" * (LIMIT * 4), 16):
            try:
                client.send(fragment)
            except OSError:
                break
    else:
        client.send(TextMessage(data=f"big:{LIMIT * 4}"))
    closes = [e for e in client.read_until(CloseConnection) if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1009, client.events[-3:]
    records = websocket_records(ws_proxy, before)
    assert records and records[-1]["reason"] == "message_too_large", records
