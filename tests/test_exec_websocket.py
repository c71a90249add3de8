"""A real WebSocket client (the `websockets` library, which reads HTTPS_PROXY) through
``egress exec`` with no setup: the upstream gets the real credential in the handshake,
the client only ever holds the placeholder (what the upstream echoes back is scrubbed)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import (
    API,
    SECRET,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    write_config,
)
from tests.wsutil import WsUpstream

pytest.importorskip("websockets", reason="needs the websockets client (pip install websockets)")

CLIENT = """
import asyncio, os, sys
import websockets

async def main() -> None:
    url = sys.argv[1]
    auth = {"Authorization": "Bearer " + os.environ["API_TOKEN"]}
    async with websockets.connect(url, additional_headers=auth, open_timeout=20) as ws:
        print("first:", await ws.recv())
        await ws.send("hello")
        print("echo:", await ws.recv())

asyncio.run(main())
"""


@pytest.fixture
def ws_upstream(test_ca: trustme.CA) -> Iterator[WsUpstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    up = WsUpstream(ctx)
    try:
        yield up
    finally:
        up.close()


def test_a_websocket_client_through_exec(
    tmp_path: Path, ws_upstream: WsUpstream, test_ca_file: Path
) -> None:
    cfg = base_config(tmp_path, test_ca_file, ws_upstream.port)
    cfg["allow"][0]["websocket"] = True
    path = write_config(tmp_path, cfg)
    r = subprocess.run(
        egress_cmd("exec", "--config", str(path), "--", sys.executable, "-c", CLIENT, f"wss://{API}:{ws_upstream.port}/ws"),
        capture_output=True, text=True, env=proxy_env(), timeout=90,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert ws_upstream.seen_auth == [f"Bearer {SECRET}"]
    assert "echo: echo:hello" in r.stdout
    assert "first:" in r.stdout and "egress-api_token-placeholder" in r.stdout  # scrubbed back
    assert_no_secret(r.stdout, r.stderr)
