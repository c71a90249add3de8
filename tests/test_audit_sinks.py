"""Audit for a security team (docs/audit.md: OCSF, Sinks): the records in OCSF, validated
against the published schema; copies to syslog (RFC 5424, UDP and TCP) and to OpenTelemetry
(OTLP/HTTP, decoded by a real protobuf receiver on loopback), from one process and from
workers; a sink that is down never holds up a request and is counted.

Every byte a sink received is kept in a file the session's canary audit searches for every
secret (tests/canary.py), besides the direct checks here.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.auditsinks import rfc5424
from egress.config import parse
from egress.errors import ConfigError
from egress.ocsf import OCSF_VERSION, PROFILES, to_ocsf
from tests.canary import OUTPUTS
from tests.conftest import (
    API,
    SECRET,
    RunningProxy,
    assert_no_secret,
    base_config,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

ocsf_json_schema = pytest.importorskip("ocsf_json_schema", reason="pip install ocsf-json-schema")


def _validators() -> dict[int, Any]:
    from jsonschema import Draft202012Validator

    raw = ocsf_json_schema.get_ocsf_schema(OCSF_VERSION)  # the schema.ocsf.io export, offline
    embedded = ocsf_json_schema.OcsfJsonSchemaEmbedded(raw)
    out = {}
    for name, profiles in (("http_activity", PROFILES), ("network_activity", PROFILES),
                           ("application_lifecycle", [])):  # fmt: skip
        schema = embedded.get_class_schema(name, profiles=profiles)
        Draft202012Validator.check_schema(schema)
        out[raw["classes"][name]["uid"]] = Draft202012Validator(schema)
    return out


VALIDATORS = _validators()


def assert_ocsf(record: dict[str, Any]) -> None:
    """Valid against its class's published schema, and what the schema cannot say."""
    errors = [
        f"{list(e.path)}: {e.message}" for e in VALIDATORS[record["class_uid"]].iter_errors(record)
    ]
    assert not errors, (errors, record)
    assert record["type_uid"] == record["class_uid"] * 100 + record["activity_id"]
    assert None not in record.values()


BASE = {
    "time": "2026-12-04T02:31:42.000Z", "event": "request", "flow_id": "f1", "client": "127.0.0.1:5555",
    "method": "GET", "scheme": "https", "host": "api.test", "port": 443, "path": "/x?token=[redacted]",
    "decision": "allow", "reason": "allowed", "rule": "allow[0]", "would_deny": None, "secrets": ["t"],
    "scrubbed": 1, "status": 200, "bytes_in": 10, "bytes_out": 20, "duration_ms": 12.5, "detail": None,
    "agent": None,
}  # fmt: skip
# (id, changes to BASE, class, activity): one of each kind of record egress writes
RECORDS = [
    ("allowed GET", {}, 4002, 3),
    ("denied POST", {"method": "POST", "decision": "deny", "reason": "host_not_allowed", "rule": None,
                     "status": 403, "detail": "no rule allows it", "secrets": []}, 4002, 6),
    ("an agent's", {"agent": "agent-a"}, 4002, 3),
    ("report mode", {"would_deny": "path_not_allowed"}, 4002, 3),
    ("a method OCSF has no name for", {"method": "PROPFIND", "decision": "error",
                                       "reason": "upstream_error", "status": 502}, 4002, 99),
    ("refused CONNECT", {"event": "connect", "method": "CONNECT", "path": "", "decision": "deny",
                         "reason": "port_not_allowed", "status": 403}, 4002, 1),
    ("IPv6 client, no status", {"client": "[::1]:40000", "status": None, "duration_ms": None}, 4002, 3),
    ("websocket", {"event": "websocket", "decision": "deny", "reason": "secret_to_unbound_host"}, 4002, 3),
    ("tunnel refused", {"event": "tunnel", "method": "", "scheme": "tcp", "path": "", "decision": "deny",
                        "reason": "non_http_protocol", "status": None}, 4001, 5),
    ("protocol, no host", {"event": "protocol", "method": "", "scheme": "", "host": "", "port": 0,
                           "path": "", "decision": "deny", "reason": "head_too_large"}, 4001, 5),
    ("reload applied", {"event": "reload", "trigger": "sighup", "outcome": "applied", "reason": None,
                        "old_sha256": "a" * 64, "new_sha256": "b" * 64, "generation": 1,
                        "changes": {"rules_changed": ["allow[1]"]}}, 6002, 8),
    ("reload rejected", {"event": "reload", "trigger": "file", "outcome": "rejected",
                         "reason": "config_invalid", "old_sha256": "a" * 64, "new_sha256": None,
                         "generation": 0, "detail": "x: unknown key", "changes": {}}, 6002, 8),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "cls", "activity"), [r[1:] for r in RECORDS], ids=[r[0] for r in RECORDS]
)
def test_every_kind_of_record_is_valid_ocsf(
    changes: dict[str, Any], cls: int, activity: int
) -> None:
    record = {**BASE, **changes}
    if record["event"] == "reload":
        record = {k: record[k] for k in ("time", "event", "trigger", "outcome", "reason", "old_sha256",
                                         "new_sha256", "generation", "changes", "detail")}  # fmt: skip
    out = to_ocsf(record)
    assert (out["class_uid"], out["activity_id"]) == (cls, activity)
    assert_ocsf(out)
    if record["event"] != "reload":
        denied = record["decision"] != "allow"
        assert (out["action_id"], out["status_id"]) == ((2, 2) if denied else (1, 1))
        assert out["unmapped"]["reason"] == record["reason"] == out["status_code"]
        if record.get("agent"):
            assert out["actor"]["user"]["name"] == record["agent"]


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


# The table above covers every kind of record; this looks for field values that break the
# mapping (it found a Unicode digit in a client's port and a lower-case method).
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "CONNECT", "BREW", "", "get"]), host=text, path=text,
    port=st.integers(0, 65535), decision=st.sampled_from(["allow", "deny", "error"]),
    status=st.none() | st.integers(100, 599), client=text, detail=st.none() | text,
    agent=st.none() | st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    scheme=st.sampled_from(["http", "https", "tcp", ""]),
)  # fmt: skip
def test_generated_records_are_valid_ocsf(method: str, host: str, path: str, port: int, decision: str,
                                          status: int | None, client: str, detail: str | None,
                                          agent: str | None, scheme: str) -> None:  # fmt: skip
    record = {**BASE, "method": method, "host": host, "path": path, "port": port, "decision": decision,
              "status": status, "client": client, "detail": detail, "agent": agent, "scheme": scheme}  # fmt: skip
    assert_ocsf(to_ocsf(record))


# RFC 5424 section 6: HEADER (PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP
# MSGID) SP STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"(?P<sd>-|\[.*?\]) (?P<msg>.*)$",
    re.S,
)


@pytest.mark.parametrize("fmt", ["egress", "ocsf"])
def test_a_syslog_message_is_rfc5424_with_the_record_as_message(fmt: str) -> None:
    for changes, _, _ in [r[1:] for r in RECORDS]:
        record = {**BASE, **changes}
        wire = rfc5424(record, 16, "egress", "host name with spaces", fmt)
        m = RFC5424.match(wire)
        assert m, wire
        pri = int(m["pri"])
        assert pri // 8 == 16  # local0
        if record["event"] == "reload":
            expected = 4 if record["outcome"] == "rejected" else 5  # warning, notice
        else:
            expected = {"allow": 6, "deny": 4, "error": 3}[record["decision"]]
        assert pri % 8 == expected, (record, pri)
        assert m["host"] == b"hostnamewithspaces" and m["msgid"] == record["event"].encode()
        msg = json.loads(m["msg"])
        assert msg == (to_ocsf(record) if fmt == "ocsf" else record)
        assert all(b < 0x80 for b in wire)


CONFIG_ERRORS = [
    ({"format": "cef"}, "audit.format: 'cef' is not one of egress, ocsf"),
    ({"syslog": {}}, "audit.syslog.address: is required"),
    ({"syslog": {"address": "127.0.0.1"}}, "must be host:port"),
    ({"syslog": {"address": "127.0.0.1:99999"}}, "must be host:port"),
    ({"syslog": {"address": "dev/log", "protocol": "unix"}}, "the path of a socket"),
    ({"syslog": {"address": "127.0.0.1:514", "facility": "local9"}}, "audit.syslog.facility"),
    ({"syslog": {"address": "127.0.0.1:514", "app_name": "my app"}}, "no spaces"),
    ({"syslog": {"address": "127.0.0.1:514", "port": 1}}, "audit.syslog.port: unknown key"),
    ({"otlp": {"endpoint": "grpc://collector:4317"}}, "must be an http(s) URL"),
    ({"otlp": {"endpoint": "http://c:4318/v1/logs", "headers": {"bad name": "x"}}}, "is not a header name"),
    ({"otlp": {"endpoint": "http://c:4318/v1/logs", "headers": {"a": "x\r\ny: z"}}}, "on one line"),
    ({"otlp": {"endpoint": "http://c:4318/v1/logs", "timeout_seconds": 0}}, "more than 0"),
]  # fmt: skip


@pytest.mark.parametrize(("audit", "message"), CONFIG_ERRORS, ids=[m for _, m in CONFIG_ERRORS])
def test_audit_config_errors_name_the_key_and_the_fix(
    tmp_path: Path, audit: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"allow": ["a.test"], "audit": audit}, str(tmp_path / "egress.yaml"), tmp_path)
    assert message in str(e.value) and "egress.yaml" in str(e.value), str(e.value)


def test_otlp_headers_never_show_in_a_repr(tmp_path: Path) -> None:
    cfg = parse({"audit": {"otlp": {"endpoint": "https://c:4318/v1/logs",
                                    "headers": {"authorization": "Bearer collector-key-0001"}}}},
                str(tmp_path / "e.yaml"), tmp_path)  # fmt: skip
    assert "collector-key-0001" not in repr(cfg) and "collector-key-0001" not in repr(
        cfg.audit_otlp
    )


# ---------------------------------------------------------------- receivers on loopback


class SyslogReceiver:
    """UDP datagrams or an RFC 6587 octet-counted TCP stream; keeps every byte in a file."""

    def __init__(self, protocol: str, keep: Path):
        self.protocol, self.keep = protocol, keep
        self.messages: list[bytes] = []
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        OUTPUTS.append(keep)

    def _add(self, msg: bytes) -> None:
        self.messages.append(msg)
        with self.keep.open("ab") as f:
            f.write(msg + b"\n")

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                if self.protocol == "udp":
                    self._add(self.sock.recv(65535))
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._stream, args=(conn,), daemon=True).start()

    def _stream(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while chunk := conn.recv(65536):
                buf += chunk
                while (m := re.match(rb"^(\d+) ", buf)) and len(buf) >= m.end() + int(m[1]):
                    end = m.end() + int(m[1])
                    self._add(buf[m.end() : end])
                    buf = buf[end:]

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(5)

    def wait(self, n: int, timeout: float = 20) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)


class OtlpReceiver:
    """An OTLP/HTTP logs endpoint: decodes each ExportLogsServiceRequest with the
    OpenTelemetry protobuf definitions."""

    def __init__(self, keep: Path, fail: bool = False):
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
            ExportLogsServiceResponse,
        )

        received: list[Any] = []
        self.received, self.keep, self.fail = received, keep, fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                with keep.open("ab") as f:
                    f.write(body + b"\n")
                if outer.fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = ExportLogsServiceRequest()
                req.ParseFromString(body)
                received.append((self.path, dict(self.headers), req))
                out = ExportLogsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        OUTPUTS.append(keep)

    def records(self) -> list[Any]:
        return [(res, lr) for _, _, req in self.received for res in req.resource_logs
                for sl in res.scope_logs for lr in sl.log_records]  # fmt: skip

    def wait(self, n: int, timeout: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.records()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.records()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attr(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_attr(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[RunningProxy]]:
    procs: list[RunningProxy] = []
    yield procs
    for p in procs:
        assert p.stop() == 0, p.stderr_path.read_text()
        assert "Traceback" not in p.stderr_path.read_text()
        assert_no_secret(p.outputs())


def _traffic(p: RunningProxy, upstream: Upstream) -> None:
    """An allowed request with the secret injected, and a denied one."""
    import ssl

    verify = ssl.create_default_context(cafile=str(p.ca))
    with httpx.Client(proxy=p.url, verify=verify, timeout=20) as c:
        r = c.get(
            f"https://{API}:{upstream.port}/sink",
            headers={"authorization": "Bearer egress-api_token-placeholder"},
        )
        assert r.status_code == 200
    with (
        pytest.raises(httpx.ProxyError, match="403"),
        httpx.Client(proxy=p.url, verify=verify, timeout=20) as c,
    ):
        c.get("https://denied.example:443/")


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_syslog_gets_every_record_as_the_audit_file_has_it(
    tmp_path: Path,
    upstream: Upstream,
    test_ca_file: Path,
    started: list[RunningProxy],
    protocol: str,
) -> None:
    rx = SyslogReceiver(protocol, tmp_path / f"syslog-{protocol}.bin")
    try:
        cfg = base_config(tmp_path, test_ca_file, upstream.port)
        cfg["audit"]["syslog"] = {
            "address": f"127.0.0.1:{rx.port}",
            "protocol": protocol,
            "facility": "authpriv",
        }
        p = start_proxy(write_config(tmp_path, cfg), tmp_path)
        started.append(p)
        _traffic(p, upstream)
        deadline = time.monotonic() + 20
        while len(p.audit()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = rx.wait(len(p.audit()))
        assert p.stop() == 0
    finally:
        rx.close()
    audit = p.audit()
    assert len(got) == len(audit) >= 2
    for wire, record in zip(got, audit, strict=True):
        m = RFC5424.match(wire)
        assert m, wire
        assert int(m["pri"]) // 8 == 10  # authpriv
        assert int(m["pri"]) % 8 == (6 if record["decision"] == "allow" else 4)
        assert json.loads(m["msg"]) == record
        assert int(m["procid"]) == p.proc.pid
    assert any(r["secrets"] == ["api_token"] for r in audit)
    assert_no_secret(*got)


def test_otlp_gets_every_record_from_every_worker(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, started: list[RunningProxy]
) -> None:
    rx = OtlpReceiver(tmp_path / "otlp.bin")
    try:
        cfg = base_config(tmp_path, test_ca_file, upstream.port)
        cfg["workers"] = 2
        cfg["audit"].update(format="ocsf", otlp={"endpoint": f"http://127.0.0.1:{rx.port}/v1/logs",
                                                 "headers": {"x-collector-key": "k-0001"}, "format": "ocsf"})  # fmt: skip
        p = start_proxy(write_config(tmp_path, cfg), tmp_path)
        started.append(p)
        for _ in range(4):  # new connections: spread over both workers
            _traffic(p, upstream)
        lines = [json.loads(x) for x in p.audit_path.read_text().splitlines()]
        got = rx.wait(len(lines))
        assert len(got) == len(lines) == 8
        assert p.stop() == 0
    finally:
        rx.close()
    # The audit file is OCSF too (audit.format), and so is each log record's body.
    for line in lines:
        assert_ocsf(line)
    bodies = sorted((json.loads(lr.body.string_value) for _, lr in got), key=json.dumps)
    assert bodies == sorted(lines, key=json.dumps)
    pids = set()
    for res, lr in got:
        resource = {a.key: _attr(a.value) for a in res.resource.attributes}
        assert resource["service.name"] == "egress"
        pids.add(resource["process.pid"])
        attrs = {a.key: _attr(a.value) for a in lr.attributes}
        assert attrs["egress.decision"] in ("allow", "deny") and lr.event_name == "egress.audit"
        assert lr.severity_text == ("INFO" if attrs["egress.decision"] == "allow" else "WARN")
        assert lr.time_unix_nano > 0
    assert len(pids) == 2, pids  # both workers sent theirs
    assert {h["x-collector-key"] for _, h, _ in rx.received} == {"k-0001"}
    assert_no_secret((tmp_path / "otlp.bin").read_bytes())
    assert SECRET.encode() not in (tmp_path / "otlp.bin").read_bytes()


def test_a_sink_that_is_down_holds_up_nothing_and_is_counted(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, started: list[RunningProxy]
) -> None:
    rx = OtlpReceiver(tmp_path / "otlp-down.bin", fail=True)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: every TCP connect is refused
    try:
        cfg = base_config(tmp_path, test_ca_file, upstream.port)
        cfg["admin"] = {"host": "127.0.0.1", "port": 0}
        cfg["audit"].update(otlp={"endpoint": f"http://127.0.0.1:{rx.port}/v1/logs", "timeout_seconds": 1},
                            syslog={"address": f"127.0.0.1:{dead.getsockname()[1]}", "protocol": "tcp"})  # fmt: skip
        p = start_proxy(write_config(tmp_path, cfg), tmp_path)
        started.append(p)
        t0 = time.monotonic()
        for _ in range(3):
            _traffic(p, upstream)
        assert time.monotonic() - t0 < 15  # generous: a sink never waits in a request's path
        port = int(
            re.search(r"admin listener on http://127\.0\.0\.1:(\d+)", p.stderr_path.read_text())[1]
        )  # type: ignore[index]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if 'sink="otlp"' in metrics and 'sink="syslog"' in metrics:
                break
            time.sleep(0.2)
        assert re.search(r'egress_audit_sink_errors_total\{sink="syslog"\} [1-9]', metrics), metrics
        assert re.search(r'egress_audit_sink_errors_total\{sink="otlp"\} [1-9]', metrics), metrics
        assert len(p.audit()) == 6  # the audit file has every record
        assert p.stop() == 0  # and the sinks, still down, do not hold up the stop
    finally:
        dead.close()
        rx.close()
    err = p.stderr_path.read_text()
    assert err.count("audit syslog:") == 1 and err.count("audit otlp:") == 1, err


def test_an_agents_long_path_is_cut_in_a_sinks_copy() -> None:
    """A 64 KiB head of undecodable bytes is a path of ~380 KB of JSON escapes: a sink's
    copy cuts it, so a message fits a UDP datagram and a queue stays small."""
    from egress.auditsinks import FIELD_MAX, bounded

    record = {**BASE, "path": "/" + "\udcff" * 60_000, "detail": "d" * 10_000}
    for fmt in ("egress", "ocsf"):
        wire = rfc5424(bounded(record), 16, "egress", "h", fmt)
        assert len(wire) < 32 * 1024, len(wire)  # under a UDP datagram's 65,507 bytes
        msg = json.loads(RFC5424.match(wire)["msg"])  # type: ignore[index]
        text = json.dumps(msg)
        assert "more characters cut" in text
    assert bounded(BASE) is BASE and len(bounded(record)["detail"]) < FIELD_MAX + 40


def test_ocsf_counts_bytes_from_the_agents_side() -> None:
    out = to_ocsf({**BASE, "bytes_in": 1000, "bytes_out": 7})  # an upload of 1000 bytes
    assert out["traffic"] == {"bytes_out": 1000, "bytes_in": 7}
