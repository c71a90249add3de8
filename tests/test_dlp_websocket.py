# ruff: noqa: F811 (ws_upstream is test_websocket's fixture, imported and used as a parameter)
"""Data-loss rules on WebSocket messages the agent sends, through the real proxy: block
closes the connection before the message reaches the upstream, mask rewrites it, report
lets it through; each in its own audit record without the value."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from tests.canary import CANARIES
from tests.conftest import RunningProxy, base_config, start_proxy, write_config
from tests.dlp_samples import VALID
from tests.test_websocket import _fragments, open_ws, websocket_records, ws_upstream  # noqa: F401
from tests.wsutil import ScriptedWsUpstream

AWS_KEY = VALID["aws_access_key"](random.Random(404))
EMAIL = VALID["email_address"](random.Random(405))
IBAN = VALID["iban"](random.Random(406)).replace(" ", "")
CANARIES.update({AWS_KEY, EMAIL, IBAN})


@pytest.fixture(scope="module")
def ws_proxy(tmp_path_factory: pytest.TempPathFactory, ws_upstream: ScriptedWsUpstream,
             test_ca_file: Path) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("dlpws")
    cfg = base_config(tmp, test_ca_file, ws_upstream.port)
    cfg["allow"][0]["websocket"] = True
    cfg["dlp"] = {"rules": [
        {"name": "no-credentials", "detectors": ["credentials"], "action": "block"},
        {"name": "mask-email", "detectors": ["email_address"], "action": "mask"},
        {"name": "report-iban", "detectors": ["iban"], "action": "report"},
    ]}  # fmt: skip
    p = start_proxy(write_config(tmp, cfg), tmp)
    try:
        yield p
    finally:
        assert p.stop() == 0
        assert "Traceback" not in p.stderr_path.read_text()


@pytest.mark.parametrize("framing", ["text", "binary", "fragmented", "base64 in JSON"])
def test_a_credential_in_a_message_closes_the_connection(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream, framing: str
) -> None:
    before, received = len(ws_proxy.audit()), len(ws_upstream.received)
    client = open_ws(ws_proxy, ws_upstream)
    text = f"here: {AWS_KEY} end"
    if framing == "text":
        client.send(TextMessage(data=text))
    elif framing == "binary":
        client.send(BytesMessage(data=text.encode()))
    elif framing == "fragmented":
        for fragment in _fragments(text, 4):
            client.send(fragment)
    else:
        client.send(
            TextMessage(data=json.dumps({"blob": base64.b64encode(text.encode()).decode()}))
        )
    client.read_until(CloseConnection, timeout=5)
    client.sock.close()
    records = websocket_records(ws_proxy, before)
    assert records and records[-1]["reason"] == "dlp_blocked", records
    assert [(f["detector"], f["action"]) for f in records[-1]["dlp"]] == [
        ("aws_access_key", "block")
    ]
    assert AWS_KEY not in json.dumps(records)
    assert len(ws_upstream.received) == received, "the message reached the upstream"


def test_an_email_in_a_message_is_masked(
    ws_proxy: RunningProxy, ws_upstream: ScriptedWsUpstream
) -> None:
    before = len(ws_proxy.audit())
    client = open_ws(ws_proxy, ws_upstream)
    client.send(TextMessage(data=json.dumps({"to": EMAIL, "cc": EMAIL})))
    client.read_until(TextMessage)
    assert json.loads(ws_upstream.received[-1]) == {"to": "[EMAIL_1]", "cc": "[EMAIL_1]"}
    records = websocket_records(ws_proxy, before)
    assert records[-1]["decision"] == "allow" and records[-1]["reason"] == "allowed"
    assert [(f["detector"], f["action"]) for f in records[-1]["dlp"]] == [("email_address", "mask")]


def test_a_reported_value_passes_and_is_recorded(ws_proxy: RunningProxy,
                                                 ws_upstream: ScriptedWsUpstream) -> None:  # fmt: skip
    before = len(ws_proxy.audit())
    client = open_ws(ws_proxy, ws_upstream)
    client.send(TextMessage(data=f"pay to {IBAN}"))
    client.read_until(TextMessage)
    assert ws_upstream.received[-1] == f"pay to {IBAN}"
    records = websocket_records(ws_proxy, before)
    assert records[-1]["dlp"] == [{"detector": "iban", "where": "body", "offset": 7,
                                   "action": "report", "rule": "report-iban"}]  # fmt: skip


def test_no_value_in_any_output(ws_proxy: RunningProxy) -> None:
    out = ws_proxy.outputs()
    assert AWS_KEY not in out and EMAIL not in out and IBAN not in out
