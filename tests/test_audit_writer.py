"""The audit writer: one line per record, byte-identical to the original serialization
(``json.dumps(dataclasses.asdict(record), separators=(",", ":"), ensure_ascii=True)``), and
one ``os.write`` per line, so that threads and processes appending to one file never tear a
line."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress import audit
from egress.audit import AuditRecord, AuditWriter, redact_path, to_line, write_all


def old_line(record: AuditRecord | dict[str, Any]) -> str:
    """The serialization before the writer built its dict directly."""
    data = dataclasses.asdict(record) if isinstance(record, AuditRecord) else record
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True)


def rec(**kw: Any) -> AuditRecord:
    base: dict[str, Any] = dict(
        time="2026-12-03T17:06:22.163Z", event="request",
        flow_id="60597193-b96e-4423-9173-14cfa5930c8c", client="127.0.0.1:49164", method="GET",
        scheme="https", host="api.egress.test", port=443, path="/v1/items?page=REDACTED",
        decision="allow", reason="allowed",
    )  # fmt: skip
    base.update(kw)
    return AuditRecord(**base)


RECORDS = [
    rec(),
    rec(rule="allow[0]", secrets=["api_token"], status=200, bytes_out=3, duration_ms=1.31),
    rec(secrets=["a", "b", "c"], scrubbed=2, bytes_in=10**12, duration_ms=0.0),
    rec(decision="deny", reason="host_not_allowed", status=403, detail="no rule allows 'x'"),
    rec(would_deny="path_not_allowed", detail="path /admin is not allowed for host 'h'"),
    rec(path="/caf\u00e9/\u65e5\u672c/\U0001f600?q=REDACTED", host="xn--caf-dma.example"),
    rec(path="/a\u2028b\u2029c\x85d\x0b\x0c\x1c\r\n", detail="line\nbreaks\r\tand \x00 NUL"),
    rec(path="/bytes/\udc80\udcff", host="\udce9t\udce9", detail="lone \ud800 surrogate \udfff"),
    rec(path='/quote"back\\slash', detail='"\\/'),
    rec(event="tunnel", method="", scheme="tcp", path="", status=None, duration_ms=None),
    rec(event="protocol", port=0, host="", client="", detail="x" * 70000),
    rec(duration_ms=1e-7, status=599, port=65535),
    rec(duration_ms=123456789.125, scrubbed=-1),
]


@pytest.mark.parametrize("record", RECORDS)
def test_a_record_serializes_as_before(record: AuditRecord) -> None:
    assert record.to_dict() == dataclasses.asdict(record)
    assert list(record.to_dict()) == [f.name for f in dataclasses.fields(AuditRecord)]
    assert record.to_json() == old_line(record)
    assert record.to_json().isascii()


def test_the_dict_holds_every_field_in_order() -> None:
    """A field added to AuditRecord must be added to to_dict too."""
    names = [f.name for f in dataclasses.fields(AuditRecord)]
    assert list(rec().to_dict()) == names


def test_the_secrets_list_is_a_copy() -> None:
    r = rec(secrets=["a"])
    d = r.to_dict()
    d["secrets"].append("b")
    assert r.secrets == ["a"]


texts = st.text() | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
optional_text = st.none() | texts


@settings(max_examples=300, deadline=None)
@given(
    path=texts, host=texts, detail=optional_text, rule=optional_text,
    secrets=st.lists(texts, max_size=4), port=st.integers(0, 2**70), status=st.none() | st.integers(),
    duration=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
def test_generated_records_serialize_as_before(
    path: str, host: str, detail: str | None, rule: str | None, secrets: list[str], port: int,
    status: int | None, duration: float | None,
) -> None:  # fmt: skip
    r = rec(path=path, host=host, detail=detail, rule=rule, secrets=secrets, port=port,
            status=status, duration_ms=duration)  # fmt: skip
    assert r.to_json() == old_line(r)
    assert to_line(r.to_dict()) == old_line(r)


@pytest.mark.parametrize("record", RECORDS)
def test_the_file_gets_the_line_and_a_newline(tmp_path: Path, record: AuditRecord) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    w = AuditWriter(str(path))
    w.write(record)
    w.write(record.to_dict())  # a record given as a dict
    w.close()
    assert path.read_bytes() == (old_line(record) + "\n").encode() * 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier":1}\n')
    w = AuditWriter(str(path))
    w.write(rec())
    w.close()
    assert path.read_text().splitlines() == ['{"earlier":1}', old_line(rec())]


def test_listeners_get_the_record_as_a_dict(tmp_path: Path) -> None:
    w = AuditWriter(str(tmp_path / "a.jsonl"))
    got: list[dict[str, Any]] = []
    w.listeners.append(got.append)
    w.write(RECORDS[1])
    w.write({"event": "custom"})
    w.close()
    assert got == [dataclasses.asdict(RECORDS[1]), {"event": "custom"}]


def _check_lines(data: bytes, expected: int) -> list[dict[str, Any]]:
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == expected
    return [json.loads(line) for line in lines]  # a torn line would not parse


def test_threads_sharing_a_writer_never_tear_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    w = AuditWriter(str(path))

    def work(t: int) -> None:
        for i in range(60):
            w.write(rec(flow_id=f"{t}-{i}", path="/" + chr(0x41 + t) * (1000 + 3000 * (i % 7))))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    records = _check_lines(path.read_bytes(), 8 * 60)
    assert sorted(r["flow_id"] for r in records) == sorted(
        f"{t}-{i}" for t in range(8) for i in range(60)
    )
    for r in records:  # each line holds its own writer's path, whole
        assert set(r["path"][1:]) == {chr(0x41 + int(r["flow_id"].split("-")[0]))}


WRITER = """
import sys
from egress.audit import AuditRecord, AuditWriter
w = AuditWriter(sys.argv[1])
tag, n = sys.argv[2], int(sys.argv[3])
sys.stdin.readline()  # start together
for i in range(n):
    w.write(AuditRecord(time="t", event="request", flow_id=f"{tag}-{i}", client="c",
                        method="GET", scheme="https", host="h", port=443,
                        path="/" + tag * (20000 + 37000 * (i % 5)), decision="allow",
                        reason="allowed", detail="\\u2028" * (i % 300)))
w.close()
"""


def test_processes_appending_to_one_file_never_tear_a_line(tmp_path: Path) -> None:
    """Worker processes share the audit file: lines of up to ~170 KB, far over any pipe or
    page buffer, written at once by four processes."""
    path = tmp_path / "audit.jsonl"
    tags, n = "ABCD", 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, str(n)],
            stdin=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        for tag in tags
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(timeout=120) == 0
    records = _check_lines(path.read_bytes(), len(tags) * n)
    for r in records:
        tag = r["flow_id"].split("-")[0]
        assert set(r["path"][1:]) == {tag}
    assert sorted(r["flow_id"] for r in records) == sorted(
        f"{t}-{i}" for t in tags for i in range(n)
    )


STDOUT_WRITER = """
import sys
from egress.audit import AuditRecord, AuditWriter
w = AuditWriter(sys.argv[1])
stream = sys.stdout if sys.argv[1] == "stdout" else sys.stderr
stream.write("before\\n")  # buffered in the text stream, not yet written
w.write(AuditRecord(time="t", event="request", flow_id="f", client="c", method="GET",
                    scheme="https", host="h", port=443, path="/\\u00e9", decision="allow",
                    reason="allowed"))
stream.write("after\\n")
"""


@pytest.mark.parametrize("target", ["stdout", "stderr"])
def test_stdout_and_stderr_keep_the_order_of_what_was_written(target: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", STDOUT_WRITER, target], capture_output=True, check=True,
        cwd=Path(__file__).parent.parent, env={**os.environ, "PYTHONUNBUFFERED": ""},
    )  # fmt: skip
    got = (out.stdout if target == "stdout" else out.stderr).decode().splitlines()
    assert got == ["before", '{"time":"t","event":"request","flow_id":"f","client":"c",'
                   '"method":"GET","scheme":"https","host":"h","port":443,"path":"/\\u00e9",'
                   '"decision":"allow","reason":"allowed","rule":null,"would_deny":null,'
                   '"secrets":[],"scrubbed":0,"status":null,"bytes_in":0,"bytes_out":0,'
                   '"duration_ms":null,"detail":null,"agent":null,"dlp":null}', "after"]  # fmt: skip


def test_a_stdout_without_a_file_descriptor_is_written_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = io.StringIO()
    monkeypatch.setattr(sys, "stdout", fake)
    w = AuditWriter("stdout")
    w.write(RECORDS[5])
    assert fake.getvalue() == old_line(RECORDS[5]) + "\n"


def test_short_writes_are_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write less than asked (a full disk, a signal, a pipe): the rest follows."""
    chunks: list[bytes] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        piece = bytes(data[:7])
        chunks.append(piece)
        return len(piece)

    monkeypatch.setattr(audit.os, "write", short_write)
    write_all(99, b"0123456789" * 5)
    assert b"".join(chunks) == b"0123456789" * 5
    assert len(chunks) == 8


def test_a_full_non_blocking_pipe_is_waited_for() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    data = bytes(range(256)) * 4096  # 1 MiB, far over the pipe's buffer
    got = bytearray()

    def drain() -> None:
        while len(got) < len(data):
            got.extend(os.read(r, 65536))

    t = threading.Thread(target=drain)
    t.start()
    write_all(w, data)
    t.join(timeout=30)
    os.close(r)
    os.close(w)
    assert bytes(got) == data


def old_redact_path(path: str) -> str:
    """redact_path before its fast path for plain queries."""
    base, sep, query = path.partition("?")
    if not sep:
        return base
    pairs = parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    keys = [quote(k, safe="", errors="surrogateescape") for k, _ in pairs]
    return base + "?" + "&".join(f"{k}={audit.REDACTED}" for k in keys)


QUERIES = ["", "a", "a=1", "a=1&b=2", "a=1&&b", "=x", "&", "&&a=", "a==b", "page=3&per_page=100",
           "x.y~z-w_v=1", "a+b=1", "a%20b=1", "a%=1", "%ff=1", "\u00e9=1", "a=\u00e9", "\udc80=x",
           "a;b=1", "a=1;b=2", "A=1&a=2", "a b=1", "a=1#f"]  # fmt: skip


@pytest.mark.parametrize("query", QUERIES)
def test_redacted_paths_equal_the_old_redaction(query: str) -> None:
    for path in (f"/p?{query}", f"/?{query}", f"/a/b?{query}?more"):
        assert redact_path(path) == old_redact_path(path)
    assert redact_path("/p") == old_redact_path("/p") == "/p"


@settings(max_examples=750, deadline=None)
@given(query=st.text(alphabet="aZ09_.~-=&+% ;?\u00e9\udc80/", max_size=24) | st.text(max_size=16))
def test_generated_queries_are_redacted_as_before(query: str) -> None:
    assert redact_path("/p?" + query) == old_redact_path("/p?" + query)


def test_a_process_forked_while_a_thread_writes_can_write(tmp_path: Path) -> None:
    """Workers are forked from a parent that may have threads: the child's writer must not
    inherit a held lock."""
    path = tmp_path / "audit.jsonl"
    w = AuditWriter(str(path))
    w._lock.acquire()  # as if another thread were in write() at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: write one line and leave at once
            try:
                w.write(rec(flow_id="child"))
            finally:
                os._exit(0)
    finally:
        w._lock.release()
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's write never returned (a held lock?)")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    w.write(rec(flow_id="parent"))
    w.close()
    assert [r["flow_id"] for r in _check_lines(path.read_bytes(), 2)] == ["child", "parent"]


def test_forked_workers_writing_long_lines_to_one_pipe_never_tear_a_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Audit to stdout with several workers: stdout is a pipe (a container's log), which
    takes a write over PIPE_BUF (4096 bytes) in pieces that another process's write can
    come between. The writer is made before the fork, as egress run makes it before its
    workers, and its processes take turns."""
    read_fd, write_fd = os.pipe()
    monkeypatch.setattr(sys, "stdout", os.fdopen(write_fd, "w", closefd=False))
    writer = AuditWriter("stdout")
    assert writer._fd == write_fd
    children = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:  # a worker
            try:
                for i in range(40):
                    writer.write({"worker": n, "i": i, "path": "/" + "p" * (20_000 + 997 * i)})
            finally:
                os._exit(0)
        children.append(pid)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 1 << 16):
        data += chunk
    os.close(read_fd)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    lines = data.decode().splitlines()
    assert len(lines) == 3 * 40
    assert sorted((r["worker"], r["i"]) for r in map(json.loads, lines)) == sorted(
        (n, i) for n in range(3) for i in range(40)
    )
