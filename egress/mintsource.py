"""Minted tokens at run time: the HTTP call to the token endpoint, the secret source that
mints at load, and the thread that mints again before expiry (egress.minting holds the
pure request and answer logic).

The token endpoint is called by egress itself, never by the agent: it need not be in the
allowlist. It is reached with the upstream trust (system roots and ``upstream.ca_files``)
and the names in ``upstream.resolve``; its certificate is always verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from egress.config import SecretSpec
from egress.errors import SecretLoadError
from egress.minting import (
    MAX_ANSWER_BYTES,
    Minted,
    MintError,
    drop_at,
    minted_value,
    parse_answer,
    refresh_due,
    rotated_refresh_token,
    token_request,
)
from egress.secrets import SecretSource, SecretStore, SecretValue

log = logging.getLogger("egress.mint")
MAX_TOKEN_SCRUB = 86400  # a replaced token of unknown expiry is scrubbed this long

Transport = Callable[[str, str, tuple[tuple[str, str], ...], bytes], tuple[int, bytes]]


def https_transport(
    ca_files: list[Path],
    resolve: dict[str, tuple[str, ...]],
    static_only: bool,
    timeout: float = 10.0,
) -> Transport:
    """POST over verified HTTPS (``ca_files``: the upstream trust), dialling the
    ``upstream.resolve`` address of a name when it has one (the certificate is checked
    against the name)."""
    context = ssl.create_default_context()
    for f in ca_files:
        context.load_verify_locations(cafile=str(f))

    def call(
        method: str, url: str, headers: tuple[tuple[str, str], ...], body: bytes
    ) -> tuple[int, bytes]:
        u = urlsplit(url)
        if u.scheme != "https" or not u.hostname:
            raise MintError(f"the token endpoint {url} is not an https:// URL")
        host, port = u.hostname, u.port or 443
        addresses = resolve.get(host)
        if not addresses and static_only:
            raise MintError(f"the token endpoint's host {host!r} has no upstream.resolve entry "
                            "(upstream.dns: static)")  # fmt: skip
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        if addresses:
            address = addresses[0]

            def connect() -> None:
                sock = socket.create_connection((address, port), timeout)
                conn.sock = context.wrap_socket(sock, server_hostname=host)

            conn.connect = connect  # type: ignore[method-assign]
        deadline = time.monotonic() + timeout  # for the whole call, not per read
        try:
            conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body,
                         dict(headers))  # fmt: skip
            resp = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MintError(f"the token endpoint {url} did not answer within {timeout:g} s")
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = resp.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise MintError(
                        f"the token endpoint {url} answered more than {MAX_ANSWER_BYTES} bytes"
                    )
                chunks.append(chunk)
            return resp.status, b"".join(chunks)
        except (OSError, http.client.HTTPException) as e:
            # The type and errno only: some error texts quote what was sent.
            detail = type(e).__name__ + (
                f" {e.errno}" if isinstance(e, OSError) and e.errno else ""
            )
            if isinstance(e, ssl.SSLCertVerificationError):
                detail = f"certificate not verified ({e.verify_message})"
            if isinstance(e, TimeoutError):
                raise MintError(
                    f"the token endpoint {url} did not answer within {timeout:g} s"
                ) from None
            raise MintError(f"the token endpoint {url} could not be reached ({detail})") from None
        finally:
            conn.close()

    return call


class MintedSource(SecretSource):
    """A secret whose value is minted: the inner source gives the long-lived inputs; the
    token endpoint gives the token. A rotated refresh token is kept in memory and, with
    ``mint.store``, in a file only the proxy's user can read."""

    def __init__(self, spec: SecretSpec, inner: SecretSource, transport: Transport,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        super().__init__(spec)
        assert spec.mint is not None
        self.mint = spec.mint
        self.inner = inner
        self.transport = transport
        self.clock = clock
        self.obtained = 0.0
        self.expires_at = 0.0
        self._rotated: str | None = None  # the latest refresh token (mint.store: re-read)
        # The proxy's environment is scrubbed once secrets are loaded: env inputs are kept
        # from the first read. Files and Vault are read again at each mint (rotation).
        self._kept: SecretValue | None = None
        self._lock = threading.Lock()  # the refresher and a forced refresh never mint at once

    def describe(self) -> str:
        return f"{self.inner.describe()} -> {self.mint.type} token"

    def env_vars_consumed(self) -> tuple[str, ...]:
        return self.inner.env_vars_consumed()

    @staticmethod
    def _origin(configured: str | None) -> str:
        """Which configured refresh token a stored one descends from (a hash, not the
        token): when the operator configures a new one, the store no longer applies."""
        return hashlib.sha256((configured or "").encode()).hexdigest()[:32]

    def _read_store(self, configured: str | None) -> str | None:
        path = self.mint.store
        if path is None or not path.exists():
            return None
        lines = path.read_text(encoding="utf-8").split("\n")
        if len(lines) < 2 or lines[0].strip() != self._origin(configured):
            return None
        return lines[1].strip() or None

    def _write_store(self, token: str, configured: str | None) -> None:
        path = self.mint.store
        if path is None:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, new
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{self._origin(configured)}\n{token}\n")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Another egress on the same mint.store mints in turn and reads what this one
        wrote (a refresh token used twice revokes its whole family on some servers).
        docs/credentials.md still says: one process per store."""
        path = self.mint.store
        if path is None:
            yield
            return
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def fetch(self) -> SecretValue:
        with self._lock, self._store_lock():
            try:
                return self._mint()
            except SecretLoadError:
                raise
            except Exception as e:  # noqa: BLE001 (a refresher must never die of one answer)
                # The type only: an unexpected error's text could quote the answer.
                raise SecretLoadError(self.spec.name, self.describe(),
                                      f"minting failed ({type(e).__name__})") from None  # fmt: skip

    def _mint(self) -> SecretValue:
        inputs = self._kept or self.inner.fetch()
        if self.spec.source.kind == "env":
            self._kept = inputs
        configured = inputs.part("refresh_token")
        if self.mint.store is not None:
            self._rotated = self._read_store(configured) or self._rotated
        now = self.clock()
        try:
            request = token_request(self.mint, inputs, now, self._rotated)
            status, body = self.transport(
                request.method, request.url, request.headers, request.body
            )
            # Kept before the rest is checked: the server has already revoked the old one.
            rotated = rotated_refresh_token(self.mint, status, body)
            if rotated and rotated != self._rotated:
                self._rotated = rotated
                try:
                    self._write_store(rotated, configured)
                except OSError as e:
                    log.error("mint: secret %s: could not write the rotated refresh token to %s "
                              "(%s); it is kept in memory only", self.spec.name, self.mint.store,
                              type(e).__name__)  # fmt: skip
            minted: Minted = parse_answer(self.mint, request.url, status, body, self.clock())
        except MintError as e:
            raise SecretLoadError(self.spec.name, self.describe(), str(e)) from None
        self.obtained, self.expires_at = now, minted.expires_at
        return minted_value(minted.token, self.mint, inputs, self._rotated)


class MintRefresher:
    """Mints every minted secret again before it expires, on its own thread.

    Due ``refresh_before_seconds`` ahead of expiry (or two thirds into a short life). When
    the endpoint fails, egress retries every ``retry_seconds`` and serves the current token
    until ``expiry_margin_seconds`` before it expires; then it drops it, and requests that
    need it get 503 ``secret_unavailable`` until the endpoint answers again. A 401 from an
    upstream on a flow that carried the current token asks for one mint at once
    (``force``), at most once per ``min_refresh_interval_seconds`` per secret. A replaced
    token is still scrubbed until it expires (SecretStore.retain): it works upstream.
    Expiring tokens are dropped between any two mints, so a slow endpoint (each call is
    bounded by the transport's deadline) never keeps one served.
    """

    TICK = 0.1

    def __init__(self, store: SecretStore, sources: list[MintedSource],
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self.store = store
        self.sources = {s.spec.name: s for s in sources}
        self.clock = clock
        self.due: dict[str, float] = {}
        self.drop_at: dict[str, float] = {}
        self.expires: dict[str, float] = {}  # the current token's expiry, per secret
        self.last_forced: dict[str, float] = {}
        self.failing: set[str] = set()
        self.errors = 0
        self.mints = 0
        for name, src in self.sources.items():
            self._schedule(name, src)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="egress-mint", daemon=True)

    def _schedule(self, name: str, src: MintedSource) -> None:
        self.expires[name] = src.expires_at
        if src.expires_at:
            self.due[name] = refresh_due(src.obtained, src.expires_at, src.mint)
            self.drop_at[name] = drop_at(src.obtained, src.expires_at, src.mint)
        else:  # not loaded at start (required: false): try at once
            self.due[name] = self.clock()
            self.drop_at[name] = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def force(self, name: str) -> bool:
        """An upstream said 401 to the current token: mint again now, unless this secret was
        forced less than ``min_refresh_interval_seconds`` ago (an agent must not be able to
        hammer the token endpoint). True when a mint was asked for."""
        src = self.sources.get(name)
        if src is None:
            return False
        now = self.clock()
        if now - self.last_forced.get(name, -1e18) < src.mint.min_refresh_interval_seconds:
            return False
        self.last_forced[name] = now
        self.due[name] = now
        self._wake.set()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.TICK)
            self._wake.clear()
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 (this thread must outlive any one failure)
                self.errors += 1
                log.warning("mint: refresh failed unexpectedly (%s); retrying", type(e).__name__)

    def tick(self) -> None:
        self._drop_expiring()
        for name, src in self.sources.items():
            if self._stop.is_set():
                return
            now = self.clock()
            if now < self.due.get(name, 0.0):
                continue
            try:
                self._mint(name, src, now)
            except Exception as e:  # noqa: BLE001 (one secret's failure stops no other)
                self.errors += 1
                self.due[name] = now + src.mint.retry_seconds
                self.failing.add(name)
                log.warning("mint: secret %s: minting failed (%s)", name, type(e).__name__)
            self._drop_expiring()

    def _drop_expiring(self) -> None:
        now = self.clock()
        for name in self.sources:
            current = self.store.get(name)
            if current is not None and now >= self.drop_at.get(name, 0.0):
                self._retain(name, current, now)
                self.store.drop(name)
                log.error("mint: secret %s: no new token before the current one expires; requests "
                          "that need it get 503 until the token endpoint answers again", name)  # fmt: skip

    def _retain(self, name: str, value: SecretValue, now: float) -> None:
        """A replaced token still works upstream until it expires: keep scrubbing it."""
        expires = self.expires.get(name) or now + MAX_TOKEN_SCRUB
        self.store.retain(name, value, expires + 60, now)

    def _mint(self, name: str, src: MintedSource, now: float) -> None:
        try:
            value = src.fetch()
        except SecretLoadError as e:
            self.errors += 1
            self.due[name] = now + src.mint.retry_seconds
            if name not in self.failing:
                log.warning(
                    "mint: %s; serving the current token until shortly before it expires", e
                )
            self.failing.add(name)
            return
        self.mints += 1
        old = self.store.get(name)
        if old is not None and old != value:
            self._retain(name, old, now)
        self.store.set(name, value)
        self._schedule(name, src)
        if name in self.failing:
            self.failing.discard(name)
            log.warning("mint: secret %s: the token endpoint answers again", name)
