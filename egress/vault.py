"""Vault (and OpenBao, which speaks the same API) as the production secret source.

Built on hvac, which is synchronous: every Vault call happens at start-up (before the proxy
reports ready) or on the refresher's own thread, never on the proxy's event loop and never
on the request path. Each call has an explicit timeout, and the HTTP session ignores
HTTPS_PROXY and friends from the environment: the proxy's own Vault traffic never goes
through a proxy it did not choose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import requests

from egress.config import SecretSpec, SourceSpec, VaultConfig
from egress.errors import EgressError, SecretLoadError
from egress.secrets import SecretSource, SecretStore, SecretValue, check_value, parts_value
from egress.trust import system_trust_bundle

log = logging.getLogger("egress.vault")


class VaultError(EgressError):
    """A Vault call failed. The message carries Vault's own words, never a token or value."""


@dataclass(frozen=True)
class Connection:
    address: str
    namespace: str | None
    verify: str | bool
    cert: tuple[str, str] | None
    timeout: float


def connection_settings(cfg: VaultConfig, environ: Mapping[str, str] = os.environ) -> Connection:
    """The config's values, with the standard VAULT_* variables where it leaves one out."""
    address = cfg.address or environ.get("VAULT_ADDR", "").rstrip("/")
    if not address:
        raise VaultError("vault.address is not set and $VAULT_ADDR is empty")
    ca = (
        str(cfg.ca_file)
        if cfg.ca_file
        else environ.get("VAULT_CACERT") or str(system_trust_bundle())
    )
    cert = str(cfg.client_cert) if cfg.client_cert else environ.get("VAULT_CLIENT_CERT")
    key = str(cfg.client_key) if cfg.client_key else environ.get("VAULT_CLIENT_KEY")
    return Connection(
        address=address,
        namespace=cfg.namespace or environ.get("VAULT_NAMESPACE") or None,
        verify=ca,
        cert=(cert, key) if cert and key else None,
        timeout=cfg.timeout_seconds,
    )


class _CountingSession(requests.Session):
    """A session that counts Vault calls and never takes proxies, CA bundles or netrc
    credentials from the environment."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.calls += 1
        kwargs["proxies"] = {}
        return super().request(*args, **kwargs)


def describe_error(exc: BaseException, address: str, timeout: float) -> str:
    """Vault's own message, short, without request URLs' noise; never a token."""
    if isinstance(exc, hvac.exceptions.VaultError):
        errors = [e.strip() for e in (exc.errors or []) if isinstance(e, str)] if exc.errors else []
        text = "; ".join(errors) if errors else str(exc)
        text = re.sub(r", on (get|post|put|delete|list) \S+$", "", text)  # the URL adds nothing
        text = re.sub(r"\s+", " ", text.replace("1 error occurred:", "").replace("*", "")).strip()
        if not text or text == "None" or text.startswith("{"):
            text = _HVAC_DEFAULTS.get(type(exc).__name__, "unexpected answer")
        return f"{text[:300]} ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS to {address} failed: {_reason(exc)}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer from {address} within {timeout:g} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"cannot connect to {address}: {_reason(exc)}"
    return f"{type(exc).__name__}: {exc}"


_HVAC_DEFAULTS = {
    "InvalidPath": "nothing at this path (or a KV mount of another version)",
    "Forbidden": "permission denied",
    "Unauthorized": "not authorised",
    "InvalidRequest": "invalid request",
    "VaultDown": "Vault is sealed or down",
}


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for pattern in (
        r"\[SSL: [A-Z_]+\] ([^(]+?)(?: \(|'|$)",
        r"Errno -?\d+\] ([^'\")]+)",
        r"\] ([^'\")]+)",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    return text[:200]


@dataclass
class Lease:
    lease_id: str | None
    duration: int  # seconds; 0 for KV
    renewable: bool
    obtained: float  # monotonic


class VaultClient:
    """One authenticated hvac client, its token's life, and a count of calls."""

    def __init__(
        self,
        cfg: VaultConfig,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg = cfg
        self.conn = connection_settings(cfg, environ)
        # A copy: egress removes the token variable from its own environment once started
        # (egress.hardening), and token auth re-reads it at every login.
        self.environ = dict(environ)
        self.clock = clock
        self._session = _CountingSession()
        # hvac prefers the session's verify/cert (default True/None) over its own arguments.
        self._session.verify = self.conn.verify
        self._session.cert = self.conn.cert
        self._lock = threading.Lock()  # hvac clients are not thread-safe
        # token="" (not None): hvac must not pick a token from $VAULT_TOKEN or ~/.vault-token
        self.client = hvac.Client(
            url=self.conn.address,
            token="",
            namespace=self.conn.namespace,
            verify=self.conn.verify,
            # () not None: hvac would take $VAULT_CLIENT_CERT itself; connection_settings decided
            cert=self.conn.cert or (),
            timeout=self.conn.timeout,
            session=self._session,
        )
        self.token_expires: float | None = None  # monotonic; None: never expires
        self.token_ttl = 0
        self.token_renewable = False

    def __repr__(self) -> str:
        return f"VaultClient(address={self.conn.address!r}, method={self.cfg.auth.method!r}, token=<redacted>)"

    @property
    def calls(self) -> int:
        return self._session.calls

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            try:
                return fn()
            except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as e:
                raise VaultError(
                    f"{what}: {describe_error(e, self.conn.address, self.conn.timeout)}"
                ) from None

    def request(self, what: str, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        """One call to ``path`` (a read, or a write of ``data``), errors as VaultError
        (egress.capki signs the CA with it)."""
        if method == "read":
            return self._call(what, lambda: self.client.read(path))
        return self._call(what, lambda: self.client.write_data(path, data=data or {}))

    # --- authentication -------------------------------------------------------------

    def _read_file(self, path: os.PathLike[str] | str, what: str) -> str:
        try:
            text = open(path, encoding="utf-8").read().strip()  # noqa: SIM115
        except OSError as e:
            raise VaultError(f"cannot read the {what} {path}: {e.strerror}") from None
        if not text:
            raise VaultError(f"the {what} {path} is empty")
        return text

    def login(self) -> None:
        """Log in (or take the configured token). Files are re-read at every login: the
        kubelet rotates projected service-account tokens."""
        a = self.cfg.auth
        if a.method == "token":
            if a.token_file:
                token = self._read_file(a.token_file, "token file")
            else:
                var = a.token_env or "VAULT_TOKEN"
                token = self.environ.get(var, "")
                if not token:
                    raise VaultError(
                        f"token auth: ${var} is not set (or set vault.auth.token_file)"
                    )
            self.client.token = token
            info = self._call(
                "token lookup (auth/token/lookup-self)", self.client.auth.token.lookup_self
            )
            self._set_token_life(info["data"].get("ttl") or 0, bool(info["data"].get("renewable")))
            return
        where = f"{a.method} login (auth/{a.mount}/login)"
        if a.method == "approle":
            assert a.secret_id_file is not None
            secret_id = self._read_file(a.secret_id_file, "AppRole secret_id file")
            resp = self._call(where, lambda: self.client.auth.approle.login(
                role_id=a.role_id, secret_id=secret_id, mount_point=a.mount))  # fmt: skip
        else:
            assert a.jwt_file is not None
            jwt = self._read_file(a.jwt_file, "token file")
            if a.method == "kubernetes":
                resp = self._call(where, lambda: self.client.auth.kubernetes.login(
                    role=a.role, jwt=jwt, mount_point=a.mount))  # fmt: skip
            else:
                resp = self._call(
                    where,
                    lambda: self.client.auth.jwt.jwt_login(role=a.role, jwt=jwt, path=a.mount),
                )
        auth = resp["auth"]
        self.client.token = auth["client_token"]
        self._set_token_life(auth.get("lease_duration") or 0, bool(auth.get("renewable")))

    def _set_token_life(self, ttl: int, renewable: bool) -> None:
        self.token_ttl = int(ttl)
        self.token_renewable = renewable
        self.token_expires = self.clock() + ttl if ttl else None

    def token_due(self) -> bool:
        """Time to renew: two thirds of the token's life have passed."""
        if self.token_expires is None:
            return False
        return self.clock() >= self.token_expires - self.token_ttl / 3

    def renew_or_login(self) -> None:
        if self.token_renewable:
            try:
                resp = self._call(
                    "token renewal (auth/token/renew-self)", self.client.auth.token.renew_self
                )
                auth = resp.get("auth") if isinstance(resp, dict) else None
                if not auth:
                    raise VaultError("token renewal (auth/token/renew-self): no auth in the answer")
                ttl = auth.get("lease_duration") or 0
                # A renewal capped by the token's max TTL gives less and less: log in anew
                # rather than running into the wall.
                if ttl >= self.token_ttl / 2 or self.cfg.auth.method == "token":
                    self._set_token_life(ttl, bool(auth.get("renewable")))
                    return
            except VaultError as e:
                log.debug("vault: %s; logging in again", e)
        self.login()

    def revoke_self(self) -> None:
        self._call("token revocation (auth/token/revoke-self)", self.client.auth.token.revoke_self)

    # --- secrets --------------------------------------------------------------------

    def read(self, src: SourceSpec) -> tuple[str, Lease]:
        """Read one secret; return the selected key's value and its lease."""
        data, lease = self.read_data(src)
        path = src.vault_path
        if src.key not in data:
            keys = ", ".join(sorted(map(str, data))) or "none"
            raise VaultError(f"read {path}: key {src.key!r} is not in the secret (keys: {keys})")
        value = data[src.key]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise VaultError(f"read {path}: key {src.key!r} is not a string")
        return str(value), lease

    def read_data(self, src: SourceSpec) -> tuple[dict[str, object], Lease]:
        """Read one secret: all its keys (one read, one lease) and its lease."""
        path = src.vault_path
        if src.engine == "kv2":
            resp = self._call(f"read {path}", lambda: self.client.secrets.kv.v2.read_secret_version(
                path=src.path, mount_point=src.mount, raise_on_deleted_version=True))  # fmt: skip
            data = resp["data"]["data"] or {}
        elif src.engine == "kv1":
            resp = self._call(f"read {path}", lambda: self.client.secrets.kv.v1.read_secret(
                path=src.path, mount_point=src.mount))  # fmt: skip
            data = resp["data"] or {}
        else:
            resp = self._call(f"read {path}", lambda: self.client.read(path))
            if resp is None:
                raise VaultError(f"read {path}: nothing at this path")
            data = resp.get("data") or {}
        lease = Lease(resp.get("lease_id") or None, int(resp.get("lease_duration") or 0),
                      bool(resp.get("renewable")), self.clock())  # fmt: skip
        return dict(data), lease

    def renew_lease(self, lease: Lease) -> Lease:
        assert lease.lease_id is not None
        resp = self._call("lease renewal (sys/leases/renew)", lambda: self.client.sys.renew_lease(
            lease_id=lease.lease_id, increment=lease.duration))  # fmt: skip
        return Lease(
            lease.lease_id,
            int(resp.get("lease_duration") or 0),
            bool(resp.get("renewable")),
            self.clock(),
        )

    def revoke_lease(self, lease_id: str) -> None:
        self._call(
            "lease revocation (sys/leases/revoke)",
            lambda: self.client.sys.revoke_lease(lease_id=lease_id),
        )

    def abandon(self) -> None:
        """Best effort after a failed start: revoke a token this client logged in for."""
        if self.cfg.auth.method != "token" and self.client.token:
            try:
                self.revoke_self()
            except VaultError:
                pass
        self.close()

    def close(self) -> None:
        self._session.close()


class VaultSource(SecretSource):
    def __init__(self, spec: SecretSpec, client: VaultClient):
        super().__init__(spec)
        self.client = client
        self.lease: Lease | None = None

    def describe(self) -> str:
        return self.spec.source.describe()

    def fetch(self) -> SecretValue:
        try:
            if self.spec.source.keys:
                data, lease = self.client.read_data(self.spec.source)
                if not data:
                    raise VaultError(f"read {self.spec.source.vault_path}: the secret has no keys")
            else:
                text, lease = self.client.read(self.spec.source)
        except VaultError as e:
            raise SecretLoadError(self.spec.name, self.describe(), str(e)) from None
        if self.spec.source.keys:
            value = parts_value(self.spec, self.describe(), data)
        else:
            value = check_value(self.spec.name, self.describe(), text, self.spec.mint is not None)
        self.lease = lease
        return value

    def env_vars_consumed(self) -> tuple[str, ...]:
        a = self.client.cfg.auth
        return (a.token_env or "VAULT_TOKEN",) if a.method == "token" and not a.token_file else ()


_LOGIN = "(the proxy's own Vault login)"  # stands for token renewal in VaultRefresher.failing


class VaultRefresher:
    """Keeps the proxy's token alive and every Vault secret fresh, on its own thread.

    KV secrets are re-read every ``refresh_seconds``; leased secrets are renewed at two
    thirds of their lease while renewable and re-read otherwise. When Vault fails, the last
    good value is served for ``max_stale_seconds`` (never past a lease's end), the outage is
    logged once, and after that the secret is dropped: requests that need it get 503. When
    Vault answers again, everything recovers by itself.
    """

    TICK = 0.25

    def __init__(
        self, client: VaultClient, store: SecretStore, sources: list[VaultSource], cfg: VaultConfig
    ):
        self.client = client
        self.store = store
        self.sources = sources
        self.cfg = cfg
        now = client.clock()
        self.last_good = {s.spec.name: now for s in sources}
        self.due = {s.spec.name: self._next_due(s, now) for s in sources}
        self.failing: set[str] = set()  # secrets whose last refresh failed
        self.login_retry = 0.0  # monotonic time of the next renewal/login attempt while failing
        self.errors = 0  # failed refreshes and logins, for metrics
        self.dropped: set[str] = set()  # secrets past max_stale
        # Secrets whose real value was seen going out (egress.tripwires): read anew at the
        # next tick, never renewed, and the leaked lease revoked; on_leak_handled says how.
        self.leaked: set[str] = set()
        self.on_leak_handled: Callable[[str, str], None] = lambda name, outcome: None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="egress-vault", daemon=True)
        # Held while a refresh writes a value, and by a reload while it replaces the store's
        # secrets (paused(), adopt()): a value fetched by a source the reload replaced is
        # never written over the new one. Never held across a Vault call.
        self._writing = threading.Lock()

    def revoke_leaked(self, name: str) -> bool:
        """Kill a leaked value: at the next tick the secret is read anew (a dynamic one gets
        a new credential) and the old lease revoked. False: not a Vault secret here."""
        if not any(s.spec.name == name for s in self.sources):
            return False
        self.leaked.add(name)
        self.due[name] = 0.0
        return True

    def _next_due(self, src: VaultSource, now: float) -> float:
        lease = src.lease
        if lease and lease.lease_id and lease.duration:
            return lease.obtained + lease.duration * 2 / 3
        return now + self.cfg.refresh_seconds

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.TICK):
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 (this thread must outlive any one failure)
                self.errors += 1
                # The type only: an unexpected error's text could quote a Vault answer.
                log.warning("vault: refresh failed unexpectedly (%s); retrying", type(e).__name__)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._writing:
            yield

    def adopt(self, sources: list[VaultSource]) -> None:
        """A reload's Vault secrets (call within paused()): new ones are refreshed from
        now on; removed ones no more (egress.reload revokes their leases)."""
        now = self.client.clock()
        for src in sources:
            name = src.spec.name
            if name not in self.due or all(s is not src for s in self.sources):
                self.last_good[name] = now
                self.due[name] = self._next_due(src, now)
                self.dropped.discard(name)
                self.failing.discard(name)
        names = {s.spec.name for s in sources}
        self.failing = {n for n in self.failing if n in names or n == _LOGIN}
        self.sources = list(sources)

    def _current(self, src: VaultSource) -> bool:
        return any(s is src for s in self.sources)

    def _store_set(self, src: VaultSource, value: SecretValue) -> None:
        with self._writing:
            if self._current(src):  # not replaced or removed by a reload meanwhile
                self.store.set(src.spec.name, value)

    def tick(self) -> None:
        now = self.client.clock()
        if (self.client.token_due() or _LOGIN in self.failing) and now >= self.login_retry:
            try:
                self.client.renew_or_login()
                self._recovered(_LOGIN)
            except VaultError as e:
                self.login_retry = now + self.cfg.retry_seconds
                self._failed(_LOGIN, str(e))
        for src in self.sources:
            if self._stop.is_set():
                return
            if now >= self.due[src.spec.name]:
                self._refresh(src, now)

    def _refresh(self, src: VaultSource, now: float) -> None:
        name = src.spec.name
        old_lease = src.lease
        leaked = name in self.leaked
        try:
            lease = src.lease
            if lease and lease.lease_id and lease.renewable and not leaked:
                src.lease = self.client.renew_lease(lease)
                # Renewal capped by the lease's max TTL: re-read before it runs out.
                if src.lease.duration < lease.duration / 2:
                    self._store_set(src, src.fetch())
            else:
                self._store_set(src, src.fetch())
        except (VaultError, SecretLoadError) as e:
            if leaked and old_lease and old_lease.lease_id:
                # No new value: the leaked credential must die all the same.
                self.leaked.discard(name)
                self.store.drop(name)
                self._leak_revoke(name, old_lease.lease_id, "no new value could be read")
            with self._writing:
                if self._current(src):  # else a reload replaced it meanwhile: not its state
                    self._refresh_failed(src, now, e)
            return
        with self._writing:
            current = self._current(src)
        if not current:
            # A reload replaced or removed this source while it was being refreshed: a new
            # lease this refresh obtained belongs to no secret any more.
            new = src.lease
            if new and new.lease_id and (not old_lease or new.lease_id != old_lease.lease_id):
                try:
                    self.client.revoke_lease(new.lease_id)
                except VaultError as e:
                    log.warning("vault: could not revoke a lease of removed secret %s: %s", name, e)
            return
        if (
            old_lease
            and old_lease.lease_id
            and (leaked or src.lease)
            and (not src.lease or src.lease.lease_id != old_lease.lease_id)
        ):
            if leaked:
                self._leak_revoke(name, old_lease.lease_id, "a new value is in use")
            else:
                try:  # a re-read made a new credential: the old one must not live on
                    self.client.revoke_lease(old_lease.lease_id)
                except VaultError as e:
                    log.warning(
                        "vault: could not revoke the previous lease of secret %s: %s", name, e
                    )
        elif leaked:
            self.on_leak_handled(name, "not_leased: read again, but a KV value stays valid "
                                 "until it is rotated in Vault")  # fmt: skip
        self.last_good[name] = now
        self.due[name] = self._next_due(src, now)
        if leaked:
            self.leaked.discard(name)
        elif name in self.leaked:
            # A leak was reported while this refresh was under way: handled at the next tick.
            self.due[name] = 0.0
        self.dropped.discard(name)
        self._recovered(name)

    def _leak_revoke(self, name: str, lease_id: str, then: str) -> None:
        try:
            self.client.revoke_lease(lease_id)
        except VaultError as e:
            log.error("vault: secret %s leaked and its lease could not be revoked: %s", name, e)
            self.on_leak_handled(name, f"revoke_failed: {e}")
            return
        log.warning("vault: secret %s leaked: its lease was revoked; %s", name, then)
        self.on_leak_handled(name, "lease_revoked")

    def _refresh_failed(self, src: VaultSource, now: float, e: Exception) -> None:
        name = src.spec.name
        self._failed(name, str(e) if isinstance(e, SecretLoadError) else f"secret {name!r}: {e}")
        self.due[name] = now + self.cfg.retry_seconds
        lease_end = (
            src.lease.obtained + src.lease.duration if src.lease and src.lease.duration else None
        )
        stale = now - self.last_good[name] > self.cfg.max_stale_seconds
        ended = lease_end is not None and now >= lease_end
        if (stale or ended) and name not in self.dropped:
            self.store.drop(name)
            self.dropped.add(name)
            why = (
                "its lease ended"
                if ended
                else f"it is stale past max_stale ({self.cfg.max_stale_seconds} s)"
            )
            log.error("vault: secret %s: %s; requests that need it get 503 until Vault answers again",
                      name, why)  # fmt: skip

    def _failed(self, name: str, message: str) -> None:
        self.errors += 1
        # An outage is logged once, when it starts; not once per retry or per request.
        if not self.failing:
            log.warning(
                "vault: %s; serving last good values for up to %d s",
                message,
                self.cfg.max_stale_seconds,
            )
        self.failing.add(name)

    def _recovered(self, name: str) -> None:
        if name in self.failing:
            self.failing.discard(name)
            if not self.failing:
                log.warning("vault: answering again; secrets are fresh")

    def stop(self, revoke: bool) -> None:
        """Stop refreshing; with ``revoke``, revoke the leases obtained and a login token,
        so that dynamic credentials live no longer than the proxy."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.client.conn.timeout + 2)
        if revoke:
            self._revoke_all()
        log.info("vault: %d calls in this run", self.client.calls)

    def _revoke_all(self) -> None:
        for src in self.sources:
            if src.lease and src.lease.lease_id:
                try:
                    self.client.revoke_lease(src.lease.lease_id)
                    log.info("vault: revoked the lease of secret %s", src.spec.name)
                except VaultError as e:
                    log.warning(
                        "vault: could not revoke the lease of secret %s: %s", src.spec.name, e
                    )
        if self.client.cfg.auth.method != "token":
            try:
                self.client.revoke_self()
            except VaultError as e:
                log.warning("vault: could not revoke the proxy's own token: %s", e)
