"""Live reload of the config (docs/reload.md).

A reload is asked for by SIGHUP, by a change of the config's files (``reload.watch``: a
poll of their contents, which also sees a Kubernetes ConfigMap update, a swap of the
``..data`` symlink) or by a caller. It goes in two steps:

1. **prepare**, off the event loop: load and validate the new config completely, with the
   same loader and the same errors as at start-up; refuse what only a restart can change
   (listeners, workers, the audit target, the CA's settings, Vault's connection, limits);
   read the agents' proxy tokens; fetch every new or changed secret (Vault included);
   make a new CA when the new names fall outside every CA's name constraints. Any error
   rejects the reload and leaves the policy in force untouched: egress fails closed to its
   last good policy, never to no policy.
2. **commit**, on the event loop, between two hooks: the new secrets and the new
   ``Policy`` (egress.policyset) are installed in one step (Runtime.install). A request
   keeps the policy it started with; the next one gets the new one. Removed secrets are
   never injected again (their values stay among those scrubbed from responses until
   the proxy stops), removed agents' connections lose their identity, and the leases of
   removed Vault secrets are revoked.

Every attempt is audited (``event: "reload"``: trigger, outcome, old and new config
SHA-256, generation, what changed) and counted (``egress_reloads_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egress import config as config_mod
from egress.agents import load_credentials
from egress.audit import now_iso
from egress.ca import EphemeralCA, ca_constraints, covers
from egress.config import Config, SecretSpec
from egress.errors import EgressError
from egress.identity import Credentials
from egress.secrets import SecretLoadError, SecretSource, SecretValue, make_source

if TYPE_CHECKING:
    from egress.runtime import Runtime

log = logging.getLogger("egress")


class Outcome(StrEnum):
    """Stable codes of a reload's outcome: audit ``outcome``, metrics label, tests."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"  # the files hold the config in force
    REJECTED = "rejected"


class Why(StrEnum):
    """Stable codes of why a reload was rejected (audit ``reason``)."""

    CONFIG_INVALID = "config_invalid"
    RESTART_REQUIRED = "restart_required"
    SECRET_LOAD_FAILED = "secret_load_failed"  # noqa: S105 (a reason code)
    CREDENTIAL_LOAD_FAILED = "credential_load_failed"
    CA_SIGNING_FAILED = "ca_signing_failed"  # ca.vault_pki did not sign a CA the reload needs
    WORKER_FAILED = "worker_failed"
    INTERNAL_ERROR = "internal_error"


# What only a restart changes, with the reason: (label in the message, value read).
RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("listen", lambda c: (c.listen_host, c.listen_port, c.listen_mode)),
    ("workers", lambda c: c.workers),
    ("admin", lambda c: c.admin),
    ("audit", lambda c: (c.audit_path, c.audit_format, c.audit_syslog, c.audit_otlp)),
    ("ca", lambda c: (c.ca_cert_path, c.ca_validity_hours, c.ca_vault_pki)),
    ("agent", lambda c: (c.agent_dir, c.agent_proxy_url)),
    ("upstream.ca_files", lambda c: c.upstream_ca_files),
    ("limits", lambda c: c.limits),
    ("vault", lambda c: c.vault),
    ("reload", lambda c: c.reload),
    # read from egress's environment at start (the Downward API's values do not change)
    ("identity.workload_env", lambda c: c.identity.workload_env if c.identity else ()),
)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys whose change needs a restart, each with why."""
    out = [f"{key} changed" for key, read in RESTART_ONLY if read(old) != read(new)]
    minted_old = {s.name: s for s in old.secrets if s.mint is not None}
    minted_new = {s.name: s for s in new.secrets if s.mint is not None}
    for name in sorted(set(minted_old) | set(minted_new)):
        a, b = minted_old.get(name), minted_new.get(name)
        if a is None or b is None or not same_secret(a, b):
            out.append(f"minted secret {name!r} added, removed or changed (its token minter "
                       "starts with the proxy)")  # fmt: skip
    had_vault = any(s.source.kind == "vault" for s in old.secrets)
    if not had_vault and any(s.source.kind == "vault" for s in new.secrets):
        out.append("the first secret from Vault (egress logs in to Vault at start)")
    return out


def same_secret(a: SecretSpec, b: SecretSpec) -> bool:
    """The same secret, wherever it is listed: everything but its position."""
    return replace(a, index=0) == replace(b, index=0)


def carry_placeholders(old: Config, new: Config) -> Config:
    """``placeholder: auto`` makes a random placeholder at each load: a secret that keeps
    its name and its auto settings keeps the placeholder its agent already holds."""
    by_name = {s.name: s for s in old.secrets}
    specs = []
    for s in new.secrets:
        was = by_name.get(s.name)
        if (
            s.placeholder_auto is not None
            and was is not None
            and was.placeholder_auto == s.placeholder_auto
        ):
            s = replace(s, placeholder=was.placeholder)
        specs.append(s)
    return replace(new, secrets=tuple(specs))


def files_sha256(paths: Sequence[Path]) -> str | None:
    """SHA-256 of the bytes of ``paths`` one after the other (the config file, then each
    included file in include order: ``cat config.yaml frag.yaml | sha256sum``); None when
    one cannot be read."""
    h = hashlib.sha256()
    try:
        for p in paths:
            h.update(p.read_bytes())
    except OSError:
        return None
    return h.hexdigest()


def summarize(old: Config, new: Config) -> dict[str, list[str]]:
    """What a reload changes, by name (never a value): for the audit record and the log."""

    def diff(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
        added = sorted(set(b) - set(a))
        removed = sorted(set(a) - set(b))
        changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
        return added, removed, changed

    out: dict[str, list[str]] = {}
    s = diff({x.name: replace(x, index=0) for x in old.secrets},
             {x.name: replace(x, index=0) for x in new.secrets})  # fmt: skip
    a = diff({x.name: replace(x, index=0) for x in old.agents},
             {x.name: replace(x, index=0) for x in new.agents})  # fmt: skip
    for kind, (added, removed, changed) in (("secrets", s), ("agents", a)):
        for what, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                out[f"{kind}_{what}"] = names
    rules_old = {r.label: r for r in old.all_rules}
    rules_new = {r.label: r for r in new.all_rules}
    if rules_old != rules_new:
        changed = sorted(k for k in set(rules_old) | set(rules_new)
                         if rules_old.get(k) != rules_new.get(k))  # fmt: skip
        out["rules_changed"] = changed
    return out


@dataclass
class Prepared:
    """A validated config with everything loaded, ready to install."""

    config: Config
    credentials: Credentials | None
    sources: dict[str, SecretSource]  # new or changed secrets' sources ...
    values: dict[str, SecretValue]  # ... and their values
    problems: dict[str, str]  # optional secrets that could not be loaded
    new_ca: EphemeralCA | None
    changes: dict[str, list[str]]
    # Sources (with Vault leases) of secrets it removes or reads anew: revoked once it is
    # in force.
    replaced: list[SecretSource] = field(default_factory=list)


@dataclass
class Result:
    outcome: Outcome
    trigger: str
    old_sha256: str
    new_sha256: str | None
    generation: int
    reason: Why | None = None
    detail: str | None = None
    changes: dict[str, list[str]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "time": now_iso(), "event": "reload", "trigger": self.trigger,
            "outcome": self.outcome.value, "reason": self.reason.value if self.reason else None,
            "old_sha256": self.old_sha256, "new_sha256": self.new_sha256,
            "generation": self.generation, "changes": self.changes, "detail": self.detail,
        }  # fmt: skip


class Rejected(EgressError):
    def __init__(self, why: Why, detail: str, sha256: str | None = None):
        super().__init__(detail)
        self.why, self.detail, self.sha256 = why, detail, sha256


def prepare(rt: Runtime, path: str) -> Prepared | None:
    """Load and check ``path`` against the policy in force; None when the files hold that
    config already and no agent's token changed. Raises Rejected. Blocking (files, Vault):
    call it off the event loop."""
    old = rt.config
    try:
        new = config_mod.load(path)
    except EgressError as e:  # ConfigError names the file, the key and the fix
        # The files are not known before they parse: the hash is the config file's alone.
        raise Rejected(Why.CONFIG_INVALID, str(e), files_sha256([Path(path)])) from None
    new = carry_placeholders(old, new)
    changes = restart_only_changes(old, new)
    if changes:
        raise Rejected(
            Why.RESTART_REQUIRED,
            f"{path}: {'; '.join(changes)}: a reload cannot change that; restart egress to "
            "apply this config (the config in force stays)",
            new.sha256,
        )
    try:
        credentials = load_credentials(new, old, rt.credentials)
    except EgressError as e:
        raise Rejected(Why.CREDENTIAL_LOAD_FAILED, str(e), new.sha256) from None
    before = rt.credentials.digests if rt.credentials else {}
    after = credentials.digests if credentials else {}
    rotated = sorted(a for a in set(before) & set(after) if before[a] != after[a])
    if new.sha256 == old.sha256 and not rotated and new.listen_tls == old.listen_tls:
        return None  # (listen.tls's files rotate in place: ListenTls carries their SHA-256)
    fetched: list[SecretSource] = []
    try:
        return _prepare_secrets(rt, old, new, credentials, rotated, fetched)
    except BaseException:
        _abandon(rt, fetched)  # a rejected reload leaves no credential alive in Vault
        raise


def _prepare_secrets(
    rt: Runtime, old: Config, new: Config, credentials: Credentials | None,
    rotated: list[str], fetched: list[SecretSource],
) -> Prepared:  # fmt: skip
    old_by_name = {s.name: s for s in old.secrets}
    sources: dict[str, SecretSource] = {}
    values: dict[str, SecretValue] = {}
    problems: dict[str, str] = {}
    for spec in new.secrets:
        was = old_by_name.get(spec.name)
        if spec.mint is not None:
            continue  # unchanged (restart_only_changes): its minter keeps it current
        if was is not None and same_value(was, spec) and spec.name not in rt.secrets.problems:
            continue  # same value: its source and value carry over (Runtime.install)
        source = _source(rt, spec)
        fetched.append(source)
        try:
            values[spec.name] = source.fetch()
        except (SecretLoadError, EgressError) as e:
            if spec.required:
                raise Rejected(Why.SECRET_LOAD_FAILED, str(e), new.sha256) from None
            problems[spec.name] = str(e)
        sources[spec.name] = source
    new_names = {s.name for s in new.secrets}
    replaced = [
        src for name, src in rt.secrets.sources.items()
        if name in old_by_name and (name not in new_names or name in sources) and _leased(src)
    ]  # fmt: skip
    new_ca = None
    constraints = ca_constraints(new)
    if not covers(rt.cas, constraints):
        if new.ca_vault_pki is not None:
            from egress.capki import issue_ca

            assert rt.vault is not None  # restart_only_changes: ca.vault_pki is as at start
            try:
                new_ca = issue_ca(rt.vault.client, new.ca_vault_pki, constraints,
                                  new.ca_validity_hours)  # fmt: skip
            except EgressError as e:
                raise Rejected(Why.CA_SIGNING_FAILED, str(e), new.sha256) from None
        else:
            new_ca = EphemeralCA.create_with(constraints, new.ca_validity_hours)
    changes = summarize(old, new)
    if rotated:
        changes["tokens_changed"] = rotated
    return Prepared(new, credentials, sources, values, problems, new_ca, changes, replaced)


def same_value(a: SecretSpec, b: SecretSpec) -> bool:
    """Would ``b`` read the value ``a`` holds? Its source and what shapes the value (the
    scheme and its parts) are the same; hosts, surfaces and placeholders do not matter.
    Such a secret is not read again: its variable may be gone from egress's environment
    (removed at start), and a Vault lease stays as it is."""
    return (a.source, a.scheme, a.aws, a.hmac, a.azure_account, a.mint) == (
        b.source, b.scheme, b.aws, b.hmac, b.azure_account, b.mint
    )  # fmt: skip


def _source(rt: Runtime, spec: SecretSpec) -> SecretSource:
    if spec.source.kind == "vault":
        from egress.vault import VaultSource

        assert rt.vault is not None  # restart_only_changes: Vault is connected
        return VaultSource(spec, rt.vault.client)
    return make_source(spec)


def _leased(src: SecretSource) -> bool:
    lease = getattr(src, "lease", None)
    return bool(lease and lease.lease_id)


def _abandon(rt: Runtime, sources: list[SecretSource]) -> None:
    """A rejected reload must not leave credentials it obtained alive in Vault."""
    for src in sources:
        if _leased(src) and rt.vault is not None:
            try:
                rt.vault.client.revoke_lease(src.lease.lease_id)  # type: ignore[attr-defined]
            except EgressError as e:
                log.warning("reload: could not revoke the lease of secret %s: %s",
                            src.spec.name, e)  # fmt: skip


class Reloader:
    """Runs one reload at a time; audits and counts each."""

    def __init__(
        self, rt: Runtime, path: str,
        after_install: Callable[[Prepared], Awaitable[str | None]] | None = None,
        on_applied: Callable[[Config], None] | None = None,
    ) -> None:  # fmt: skip
        self.rt, self.path = rt, path
        # The workers' part (egress.workers): returns why it failed, or None.
        self.after_install = after_install
        self.on_applied = on_applied  # egress run: clear the new secrets' variables
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def idle(self) -> None:
        """Return once no reload is under way."""
        async with self._lock:
            pass

    async def reload(self, trigger: str) -> Result:
        async with self._lock:
            result = await self._reload(trigger)
            rt = self.rt
            rt.metrics.reloads.labels(trigger, result.outcome.value).inc()
            rt.metrics.config_generation.set(rt.policy.generation)
            rt.audit.write(result.record())
        if result.outcome is Outcome.REJECTED:
            log.error("reload (%s) rejected: %s", trigger, result.detail)
        elif result.outcome is Outcome.APPLIED:
            log.warning("reload (%s): config %s applied (generation %d)%s", trigger,
                        (result.new_sha256 or "")[:12], result.generation,
                        "".join(f"; {k}: {', '.join(v)}" for k, v in result.changes.items()))  # fmt: skip
        return result

    async def _reload(self, trigger: str) -> Result:
        rt = self.rt
        old_sha, generation = rt.policy.sha256, rt.policy.generation

        def rejected(why: Why, detail: str, sha: str | None) -> Result:
            return Result(Outcome.REJECTED, trigger, old_sha, sha, generation, why,
                          rt.redact(detail))  # fmt: skip

        try:
            prepared = await asyncio.to_thread(prepare, rt, self.path)
        except Rejected as e:
            return rejected(e.why, e.detail, e.sha256)
        except Exception as e:  # noqa: BLE001 (an unexpected failure keeps the policy in force)
            log.exception("reload: unexpected failure")
            return rejected(Why.INTERNAL_ERROR, f"unexpected error ({type(e).__name__})", None)
        if prepared is None:
            return Result(Outcome.UNCHANGED, trigger, old_sha, old_sha, generation)
        try:
            rt.install(prepared)  # what can fail comes first: a failure changes nothing
        except Exception as e:  # noqa: BLE001 (a failure here changed nothing: say why)
            await asyncio.to_thread(_abandon, rt, list(prepared.sources.values()))
            return rejected(Why.INTERNAL_ERROR, f"installing it failed ({type(e).__name__}: {e})",
                            prepared.config.sha256)  # fmt: skip
        # In force in this process. The workers next, at once, before anything else.
        detail = None
        if self.after_install is not None:
            try:
                detail = await self.after_install(prepared)
            except Exception as e:  # noqa: BLE001 (push_policy stops workers it could not tell)
                log.exception("reload: telling the workers failed")
                detail = f"telling the workers failed ({type(e).__name__})"
        vault = rt.config.vault
        if prepared.replaced and vault is not None and vault.revoke_on_shutdown:
            # As at shutdown: a removed secret's dynamic credential must not outlive its use.
            await asyncio.to_thread(_abandon, rt, prepared.replaced)
        if self.on_applied is not None:
            self.on_applied(prepared.config)
        result = Result(Outcome.APPLIED, trigger, old_sha, rt.policy.sha256,
                        rt.policy.generation, detail=detail, changes=prepared.changes)  # fmt: skip
        if detail:
            result.reason = Why.WORKER_FAILED
        return result


def _real(files: Sequence[Path]) -> str | None:
    try:
        return str(files[0].resolve()) if files else None
    except OSError:
        return None


def token_files(cfg: Config) -> list[Path]:
    """The files besides the config's whose change is a reason to reload: the agents'
    token files and listen.tls's certificate, key and client CA bundle (cert-manager and
    SPIRE rotate them in place)."""
    tokens = [a.token.file for a in cfg.agents if a.token is not None and a.token.file is not None]
    return tokens + list(cfg.listen_tls.files if cfg.listen_tls is not None else ())


class ConfigWatcher:
    """Polls the contents of the config's files (and the agents' token files); a change
    starts a reload. A content that failed to load is not tried again until the files
    change once more."""

    def __init__(self, reloader: Reloader, interval: float):
        self.reloader, self.interval = reloader, interval
        self._tried: str | None = None
        self.stopping = asyncio.Event()
        cfg = reloader.rt.config
        # Where the config file's path leads: a ConfigMap update swaps the ..data symlink,
        # which changes this even while the old files are still there to be read.
        self._target = _real(cfg.files)
        self._tokens = files_sha256(token_files(cfg))

    async def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval)
            if self.stopping.is_set():
                return
            try:
                await self._poll()
            except Exception:  # noqa: BLE001 (the watcher must outlive any one failure)
                log.exception("reload: watching the config failed")

    async def _poll(self) -> None:
        rt = self.reloader.rt
        if self.reloader.busy:
            return  # a SIGHUP's reload is reading the same files: look again next time
        cfg = rt.config
        digest = await asyncio.to_thread(files_sha256, cfg.files)
        tokens = await asyncio.to_thread(files_sha256, token_files(cfg))
        target = _real(cfg.files)
        moved, self._target = target != self._target, target
        rotated, self._tokens = tokens != self._tokens, tokens
        if digest == rt.policy.sha256 and not moved and not rotated:
            self._tried = None
            return
        key = (digest or "unreadable") + (tokens or "")
        if key == self._tried and not moved and not rotated:
            return
        self._tried = key
        result = await self.reloader.reload("file")
        if result.outcome is not Outcome.REJECTED:
            self._tried = None


class Triggers:
    """SIGHUP and the config watcher of ``egress run``."""

    def __init__(
        self, reloader: Reloader | None, watcher: ConfigWatcher | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:  # fmt: skip
        self.reloader, self.watcher, self.loop = reloader, watcher, loop
        self.tasks = set[asyncio.Task[Any]]()
        self.stopped = False
        if watcher is not None:
            self._spawn(watcher.run())
        loop.add_signal_handler(signal.SIGHUP, self.sighup)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def sighup(self) -> None:
        if self.stopped:
            return
        if self.reloader is None:
            print("egress: SIGHUP: egress runs on the embedded default config; there is no "
                  "file to reload (start it with --config FILE)", file=sys.stderr, flush=True)  # fmt: skip
            return
        self._spawn(self.reloader.reload("sighup"))

    async def stop(self) -> None:
        """No more reloads; one under way finishes first (it may hold Vault leases, and a
        cancelled wait would not stop its thread)."""
        if self.stopped:
            return
        self.stopped = True
        self.loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hang-up while stopping is no reload
        if self.watcher is not None:
            self.watcher.stopping.set()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=60)
        for task in list(self.tasks):
            task.cancel()


def start_triggers(
    rt: Runtime, after_install: Callable[[Prepared], Awaitable[str | None]] | None,
    loop: asyncio.AbstractEventLoop, on_applied: Callable[[Config], None] | None = None,
) -> Triggers:  # fmt: skip
    """Reload on SIGHUP and, with ``reload.watch``, when the config's files change.
    ``after_install``: the workers' part (egress.workers.Supervisor.push_policy)."""
    cfg = rt.config
    reloader = watcher = None
    if cfg.files:
        reloader = Reloader(rt, cfg.path, after_install=after_install, on_applied=on_applied)
        if cfg.reload.watch:
            watcher = ConfigWatcher(reloader, cfg.reload.interval_seconds)
    return Triggers(reloader, watcher, loop)
