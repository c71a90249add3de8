"""The minting source and refresher (egress.mintsource) with a scripted token endpoint and
a clock the test moves: the bookkeeping the end-to-end tests cannot time precisely.
(The smallest unit tests: tests/test_minted_tokens.py is the proof against real endpoints.)

Each case here is one the adversarial review of the first version found: tokens replaced
faster than they expire must stay scrubbed; one bad answer must not stop the refresher;
a rotated refresh token must be kept even when the rest of its answer is refused; a store
written for another configured refresh token must not be used; a slow endpoint is cut off
by a deadline for the whole call.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from egress.config import parse
from egress.errors import SecretLoadError
from egress.minting import MintError
from egress.mintsource import MintedSource, MintRefresher, https_transport
from egress.secrets import SecretStore, make_source


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """Answers in order; each answer is (status, JSON-able body) or an exception to raise."""

    def __init__(self, *answers: Any):
        self.answers = list(answers)
        self.sent: list[dict[str, str]] = []

    def __call__(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, bytes]:
        from urllib.parse import parse_qsl

        self.sent.append(dict(parse_qsl(body.decode())))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        status, data = answer
        return status, data if isinstance(data, bytes) else json.dumps(data).encode()


def spec_for(tmp: Path, kind: str = "oauth_client_credentials", **mint: Any) -> Any:
    source = ({"env": {"client_id": "I", "client_secret": "S"}} if kind == "oauth_client_credentials"
              else {"env": {"client_id": "I", "refresh_token": "R"}})  # fmt: skip
    cfg = {"allow": ["api.test"], "secrets": [
        {"name": n, "hosts": ["api.test"], "source": source,
         "mint": {"type": kind, "token_url": "https://auth.test/t", **mint}} for n in ("a", "b")]}  # fmt: skip
    return parse(cfg, "t.yaml", tmp).secrets


def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch, endpoints: list[Endpoint], clock: Clock,
          kind: str = "oauth_client_credentials", **mint: Any) -> tuple[SecretStore, MintRefresher, list[MintedSource]]:  # fmt: skip
    for k, v in {"I": "client", "S": "client-secret-000", "R": "rt-configured-1"}.items():
        monkeypatch.setenv(k, v)
    specs = spec_for(tmp, kind, **mint)
    sources = [
        MintedSource(s, make_source(s), e, clock) for s, e in zip(specs, endpoints, strict=True)
    ]
    store = SecretStore(tuple(specs), {s.spec.name: s for s in sources})
    store.clock = clock
    store.load_all()
    return store, MintRefresher(store, sources, clock), sources


def tok(name: str, life: int = 3600, **extra: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"access_token": name, "expires_in": life, **extra}


def known(store: SecretStore) -> set[str]:
    return {v.reveal() for _, v in store.known()}


def test_every_token_replaced_before_it_expires_stays_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    a = Endpoint(tok("tok-1"), tok("tok-2"), tok("tok-3"))
    store, refresher, _ = setup(
        tmp_path, monkeypatch, [a, Endpoint(tok("b-1"))], clock, min_refresh_interval_seconds=1
    )
    for _ in range(2):  # two 401s, far apart enough to force two mints
        clock.now += 2
        assert refresher.force("a")
        refresher.tick()
    assert store.get("a").reveal() == "tok-3"  # type: ignore[union-attr]
    assert {"tok-1", "tok-2", "tok-3"} <= known(store)  # the old store kept only one previous
    clock.now += 3600 + 61  # tok-1 has expired: no longer a credential, no longer searched
    assert "tok-1" not in known(store)


def test_one_bad_answer_stops_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    a = Endpoint(
        tok("a-1", 100),
        (200, b'{"access_token": "a-2", "expires_in": 1' + b"0" * 400 + b"}"),
        RuntimeError("boom"),
    )
    b = Endpoint(tok("b-1", 100), MintError("down"))
    store, refresher, _ = setup(
        tmp_path, monkeypatch, [a, b], clock, retry_seconds=5, expiry_margin_seconds=10
    )
    calls = []
    for _ in range(120):  # 120 ticks, 1 s apart: both fail from their first refresh (50 s) on
        clock.now += 1
        refresher.tick()
        calls.append(len(a.sent) + len(b.sent))
    assert store.get("a") is None and store.get("b") is None  # dropped before they expired
    assert calls[-1] - calls[0] <= 2 * (70 // 5 + 2)  # every retry_seconds, not every tick
    assert {"a", "b"} <= refresher.failing


def test_rotated_refresh_token_kept_though_the_answer_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    store_file = tmp_path / "rt"
    a = Endpoint(
        tok("t-1", refresh_token="rt-2"),
        (200, {"refresh_token": "rt-3"}),
        tok("t-3", refresh_token="rt-4"),
    )
    store, refresher, sources = setup(tmp_path, monkeypatch, [a, Endpoint(tok("b"))], clock,
                                      kind="oauth_refresh_token", store=str(store_file))  # fmt: skip
    assert a.sent[0]["refresh_token"] == "rt-configured-1"
    clock.now += 3000
    refresher.tick()  # answer without access_token: refused, but rt-3 is the live one now
    assert store_file.read_text().split("\n")[1] == "rt-3"
    clock.now += 5
    refresher.tick()
    assert a.sent[-1]["refresh_token"] == "rt-3" and store.get("a").reveal() == "t-3"  # type: ignore[union-attr]
    assert oct(store_file.stat().st_mode & 0o777) == "0o600"
    assert "rt-configured-1" not in store_file.read_text()  # only a hash of where it came from
    # A new refresh token in the config: the store (descended from the old one) is ignored.
    monkeypatch.setenv("R", "rt-new-from-operator")
    fresh = MintedSource(sources[0].spec, make_source(sources[0].spec), Endpoint(tok("t-9")), clock)
    fresh.fetch()
    assert fresh.transport.sent[0]["refresh_token"] == "rt-new-from-operator"  # type: ignore[attr-defined]


def test_unexpected_errors_become_load_errors_naming_no_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    _, _, sources = setup(tmp_path, monkeypatch, [Endpoint(tok("ok")), Endpoint(tok("ok"))], clock)
    sources[0].transport = Endpoint(ValueError("client-secret-000 in the message"))
    with pytest.raises(SecretLoadError) as e:
        sources[0].fetch()
    assert "ValueError" in str(e.value) and "client-secret-000" not in str(e.value)


@pytest.fixture
def dribbling_server(tmp_path: Path) -> Any:
    """A TLS server that answers one byte every 0.4 s: per-read timeouts never fire."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("auth.test").configure_cert(ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    while not stop.is_set():
                        conn.sendall(b"x")
                        time.sleep(0.4)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        yield listener.getsockname()[1], ca_file
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_slow_endpoint_is_cut_off_by_a_deadline_for_the_whole_call(dribbling_server: Any) -> None:
    port, ca_file = dribbling_server
    call = https_transport([ca_file], {"auth.test": ("127.0.0.1",)}, True, timeout=1.5)
    start = time.monotonic()
    with pytest.raises(MintError, match="did not answer within 1.5 s"):
        call("POST", f"https://auth.test:{port}/t", (), b"x=1")
    assert time.monotonic() - start < 5
