"""``workers: N``: N proxy processes on one listening port, forked from one parent.

What the parent does, in this order (egress.cli._serve):

1. loads every secret and makes the ephemeral CA (egress.runtime.Runtime.start, Vault
   refresher not yet started): the CA's private key exists only in this process's memory;
2. binds the listening sockets itself (``bind_listeners``): a busy port is one clear error
   before any worker exists, ``port: 0`` picks one port for all, and a worker that dies
   leaves its socket open in the parent, so that connections queued on it wait for the
   replacement instead of being reset;
3. forks N workers (``Supervisor``). Each inherits the CA key, the loaded secrets, the
   audit file descriptor (O_APPEND) and its listening socket(s) by fork, starts its own
   asyncio loop and mitmproxy master, and reports ready over a private socketpair;
4. starts the Vault refresher (a thread: started after the fork, so that no worker is
   forked while it holds a lock) and serves /healthz, /readyz and /metrics.

Vault: only the parent talks to Vault. A worker never logs in, renews or revokes anything
(its copy of the refresher is dropped after fork); when a value changes the parent sends
the new values to every worker over its socketpair (``_push_secrets``). Leases are renewed
once, not N times, and a worker that exits revokes nothing.

Metrics: each worker counts what it serves in its own registry; a scrape of the parent's
admin listener asks every worker for its samples (socketpair) and sums them with the
parent's own gauges (ready, Vault calls). ``egress_worker_requests{worker="i"}`` shows how
the load spreads.

A worker that dies unexpectedly is logged and replaced (the CA and the secrets live in the
parent, so the replacement is identical; a dead worker serves nothing, so nothing fails
open meanwhile). Workers that keep dying (``MAX_RESTARTS`` within ``RESTART_WINDOW``
seconds) stop the whole proxy with exit status 1: a crash loop is a fault to surface, not
to hide.

Stopping (SIGTERM/SIGINT to the parent): each worker stops accepting, finishes the
requests in flight (up to ``egress.proxy.IN_FLIGHT_GRACE`` seconds) and exits 0; a second
signal stops at once. Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole
process group; the parent decides) and exit by themselves when the parent disappears.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import gc
import json
import logging
import math
import os
import pickle
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egress.errors import EgressError
from egress.secrets import SecretValue

log = logging.getLogger("egress")

MAX_RESTARTS = 5  # this many unexpected worker deaths ...
RESTART_WINDOW = 60.0  # ... within this many seconds stop the proxy (exit 1)
# Listener layout: "shared" (one socket every worker accepts on) or "reuseport" (one
# SO_REUSEPORT socket per worker, the kernel spreads connections by a hash of the
# addresses). Measured on this kernel (docs/config.md#workers): reuseport spreads a burst
# of new connections evenly, a shared socket gives most of it to one worker (the first to
# wake accepts everything queued). EGRESS_LISTENER is a knob for that measurement only.
LISTENER = os.environ.get("EGRESS_LISTENER", "reuseport")
BACKLOG = 1024
# The longest message on a worker's socketpair: a metrics answer or a secrets snapshot
# grows with the number of secrets (asyncio's default line limit is 64 KiB).
CONTROL_LIMIT = 64 * 1024 * 1024
# Parent to worker: SIGTERM stops accepting and lets the requests in flight finish; this
# one stops at once (a distinct signal: two SIGTERMs sent together may arrive as one).
STOP_NOW = signal.SIGUSR1


class WorkerError(EgressError):
    pass


# --- how many ----------------------------------------------------------------------------


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU limit
    (a container's or a pod's ``resources.limits.cpu``) rounded up; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``) of this process and its ancestors; None when unlimited."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            for d in _ancestors(root, path):
                limits += _v2_limit(d / "cpu.max")
        elif "cpu" in controllers.split(","):
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                for d in _ancestors(root / mount, path):
                    limits += _v1_limit(d)
    if not lines:  # no /proc/self/cgroup: look at the root only
        limits += _v2_limit(root / "cpu.max") + _v1_limit(root / "cpu")
    return min(limits) if limits else None


def _ancestors(base: Path, path: str) -> list[Path]:
    """base/path and every folder above it up to base (in a container, the cgroup
    namespace makes its own cgroup the root: then only base itself exists)."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_limit(cpu_max: Path) -> list[float]:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return [int(quota) / int(period)]
    except (OSError, ValueError):
        pass
    return []


def _v1_limit(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return [quota / period]
    except (OSError, ValueError):
        pass
    return []


def worker_count(configured: int | None) -> int:
    return configured if configured is not None else available_cpus()


# --- listeners ---------------------------------------------------------------------------


def listen_hosts(listen_host: str, transparent: bool) -> list[str]:
    """The addresses the proxy listens on: transparent mode on 127.0.0.1 adds ::1, where
    ip6tables' REDIRECT sends IPv6 connections."""
    from egress.proxy import has_ipv6_loopback

    if transparent and listen_host == "127.0.0.1" and has_ipv6_loopback():
        return [listen_host, "::1"]
    return [listen_host]


def bind_listeners(
    hosts: list[str], port: int, slots: int, layout: str = LISTENER
) -> list[list[socket.socket]]:
    """Listening sockets for each worker slot (one per host). "shared": every slot gets the
    same sockets; "reuseport": each slot its own SO_REUSEPORT sockets on the same port.
    Raises ProxyStartError naming listen.port when the port is busy."""
    per_slot = 1 if layout == "shared" else slots
    made: list[list[socket.socket]] = []
    if layout != "shared":
        # Any socket of this user with SO_REUSEPORT may join a port's group, and would then
        # get a share of the connections: another egress started on the same port must
        # fail as before. A plain bind first fails where anything listens (another egress's
        # group included), and a later egress's plain bind fails on ours.
        port = _probe(hosts, port)
    try:
        for _ in range(per_slot):
            socks: list[socket.socket] = []
            made.append(socks)
            for host in hosts:
                s = _bound_socket(host, port, socks, reuseport=layout != "shared")
                s.listen(BACKLOG)
                s.set_inheritable(False)
                port = s.getsockname()[1]  # port 0: every later socket takes the same port
    except BaseException:
        for socks in made:
            for s in socks:
                s.close()
        raise
    return made * slots if layout == "shared" else made


def _bound_socket(
    host: str, port: int, made: list[socket.socket], reuseport: bool
) -> socket.socket:
    """A TCP socket bound to host:port (appended to ``made`` before binding, so that the
    caller closes it on failure), or ProxyStartError saying what to change."""
    from egress.proxy import ProxyStartError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # says TCP, and accepted sockets inherit it; with 0 every small response waited for the
    # client's delayed ACK (~45 ms per request).
    s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    made.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        why = "is the port in use?" if e.errno == errno.EADDRINUSE else e.strerror
        raise ProxyStartError(
            f"could not listen on {host}:{port} ({why} set listen.port, or 0 for a free port)"
        ) from None
    return s


def _probe(hosts: list[str], port: int) -> int:
    """Bind each host:port without SO_REUSEPORT (raising ProxyStartError where busy) and
    release it; return the port (the one picked for port 0)."""

    probes: list[socket.socket] = []
    try:
        for host in hosts:
            port = _bound_socket(host, port, probes, reuseport=False).getsockname()[1]
    finally:
        for s in probes:
            s.close()
    return port


# --- the parent --------------------------------------------------------------------------


@dataclass
class Worker:
    slot: int
    pid: int
    ctrl: socket.socket  # the parent's end of the socketpair
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    status: int | None = None  # waitpid status once exited
    answers: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requests: float = 0.0  # from its last metrics answer
    last: list[list[Any]] = field(default_factory=list)  # its last metrics answer
    replaced: bool = False  # stopped by a reload (push_policy): replaced, not a death


class Supervisor:
    """Forks, watches, replaces and stops the workers; answers for them on /metrics."""

    def __init__(
        self,
        rt: Any,
        n: int,
        listeners: list[list[socket.socket]],
        listen_host: str,
        port: int,
        transparent: bool,
    ):
        self.rt, self.n, self.listeners = rt, n, listeners
        self.listen_host, self.port, self.transparent = listen_host, port, transparent
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.failed = asyncio.Event()  # set when workers keep dying: the proxy must stop
        self.changed = asyncio.Event()  # a worker became ready or died
        self.restarts: list[float] = []
        # Counts of workers that died, as last scraped: sums stay monotonic across a
        # replacement (gauges such as open connections die with their worker).
        self.retired: list[list[Any]] = []
        self.retired_requests: dict[int, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pushed_version = rt.secrets.version

    # readiness

    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.ready.is_set() and not w.exited.is_set())

    def why_not_ready(self) -> str:
        n = self.ready_count()
        return "" if n == self.n else f"{n} of {self.n} workers ready"

    # start

    async def start(self, timeout: float = 60) -> None:
        """Fork every worker and wait until all are ready. Raises WorkerError if one exits
        first (it has logged why) or is not ready within ``timeout`` seconds."""
        for slot in range(self.n):
            self._fork(slot)
        for w in list(self.workers.values()):
            waits = {asyncio.ensure_future(w.ready.wait()), asyncio.ensure_future(w.exited.wait())}
            _, pending = await asyncio.wait(waits, timeout=timeout,
                                            return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            for f in pending:
                f.cancel()
            if not w.ready.is_set():
                how = _how(w.status) if w.exited.is_set() else f"not ready after {timeout:.0f} s"
                await self.stop(now=True)
                raise WorkerError(f"worker {w.slot} did not start ({how})")
        self._spawn(self._watch_secrets())

    def _fork(self, slot: int) -> Worker:
        parent_end, child_end = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12 warns on fork() in a process with threads. The threads here are
            # the idle executor thread of asyncio.to_thread and, for a replacement, the
            # Vault refresher; the worker uses neither, nor hvac, and gets a fresh
            # sys.stderr (_worker_main) in case the refresher was logging at this moment.
            warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                parent_end.detach()
                code = _worker_main(self, slot, child_end)
            except BaseException:  # noqa: BLE001 (a worker must not unwind into the parent's loop)
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        child_end.close()
        w = Worker(slot, pid, parent_end)
        self.workers[slot] = w
        self._spawn(self._follow(w))
        return w

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _follow(self, w: Worker) -> None:
        """Read a worker's messages until its socketpair closes, then reap it."""
        w.reader, w.writer = await asyncio.open_connection(sock=w.ctrl, limit=CONTROL_LIMIT)
        try:
            while line := await w.reader.readline():
                msg = json.loads(line)
                if msg.get("op") == "ready":
                    w.ready.set()
                    self.changed.set()
                    await self._send(w, self._secret_snapshot())  # values may have moved
                    await self._send(w, self._quarantine_message(None))
                elif msg.get("op") == "stale":  # an upstream said 401 to a minted token
                    if self.rt.minter is not None and isinstance(msg.get("name"), str):
                        self.rt.minter.force(msg["name"])
                elif msg.get("op") == "trip":  # a worker's tripwire fired (egress.tripwires)
                    await self._tripped(msg)
                else:
                    w.answers.put_nowait(msg)
        except (ConnectionError, ValueError):
            pass
        # The channel closes when the worker exits; a worker that lives on without it can
        # no longer be asked or told anything: it is stopped (and replaced).
        give_up = time.monotonic() + 10
        while (status := _reap(w.pid)) is None:
            if time.monotonic() > give_up:
                _kill(w.pid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        w.status = status
        w.exited.set()
        w.answers.put_nowait({"op": "exited"})
        w.writer.close()
        self.changed.set()
        if not self.stopping:
            from egress.metrics import merge

            self.retired = merge([self.retired, [f for f in w.last if f[2] != "gauge"]])
            self.retired_requests[w.slot] = self.retired_requests.get(w.slot, 0) + w.requests
            if w.replaced:
                self._fork(w.slot)
            else:
                self._died(w)

    def _died(self, w: Worker) -> None:
        log.error("worker %d (pid %d) died unexpectedly (%s); starting a replacement",
                  w.slot, w.pid, _how(w.status))  # fmt: skip
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        if len(self.restarts) > MAX_RESTARTS:
            log.error("workers died %d times within %d s; stopping (fail closed)",
                      len(self.restarts), RESTART_WINDOW)  # fmt: skip
            self.failed.set()
            return
        self.rt.metrics.worker_restarts.inc()
        self._fork(w.slot)

    # while serving

    async def _send(self, w: Worker, msg: dict[str, Any]) -> None:
        if w.writer is None or w.exited.is_set():
            return
        with contextlib.suppress(ConnectionError):
            w.writer.write(json.dumps(msg).encode() + b"\n")
            await w.writer.drain()

    def _quarantine_message(self, end: str | None) -> dict[str, Any]:
        return {"op": "quarantine", "entries": self.rt.quarantine.to_wire(), "end": end}

    async def _tripped(self, msg: dict[str, Any]) -> None:
        """The parent holds the quarantine book every worker follows, and Vault: record the
        trip, kill a leaked value, tell every worker (and which agent's connections end)."""
        from egress.tripwires import Quarantine, revoke_leaked

        entry = msg.get("entry")
        if isinstance(entry, dict):
            self.rt.quarantine.add(Quarantine.from_wire(entry))
            self.rt.metrics.quarantined.set(len(self.rt.quarantine.entries()))
        if isinstance(msg.get("revoke"), str):
            revoke_leaked(self.rt, msg["revoke"], "secret_to_unbound_host")
        end = msg.get("end") if isinstance(msg.get("end"), str) else None
        for w in list(self.workers.values()):
            await self._send(w, self._quarantine_message(end))

    async def clear_quarantine(self, agent: str | None) -> list[str]:
        cleared = self.rt.quarantine.clear(agent)
        self.rt.metrics.quarantined.set(len(self.rt.quarantine.entries()))
        for w in list(self.workers.values()):
            await self._send(w, self._quarantine_message(None))
        return cleared

    def _secret_snapshot(self) -> dict[str, Any]:
        store = self.rt.secrets
        values = {s.name: (v.to_wire() if (v := store.get(s.name)) else None) for s in store.specs}
        # The policy the values belong to: a worker drops values of another generation (a
        # reload's new values must never meet the old secrets' hosts, nor the reverse).
        return {"op": "secrets", "values": values, "generation": self.rt.policy.generation}

    async def _watch_secrets(self) -> None:
        """Push new values to every worker when the parent's refresher changes one."""
        while True:
            await asyncio.sleep(0.25)
            version = self.rt.secrets.version
            if version != self._pushed_version:
                self._pushed_version = version
                snapshot = self._secret_snapshot()
                for w in list(self.workers.values()):
                    await self._send(w, snapshot)

    async def render_metrics(self) -> bytes:
        """A scrape: the parent's gauges and every worker's samples, summed."""
        from egress.metrics import merge

        workers = list(self.workers.values())
        answers = await asyncio.gather(*(self._ask_metrics(w) for w in workers))
        self.rt.metrics.workers_ready.set(self.ready_count())
        per_worker = {w.slot: w.requests + self.retired_requests.get(w.slot, 0) for w in workers}
        return self.rt.metrics.render_merged(
            merge([self.retired, *(a for a in answers if a is not None)]), per_worker
        )

    async def _ask(self, w: Worker, msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send ``msg`` to a ready worker and wait for its answer."""
        if not w.ready.is_set() or w.exited.is_set():
            return None
        async with w.lock:
            while not w.answers.empty():
                w.answers.get_nowait()
            await self._send(w, msg)
            try:
                return await asyncio.wait_for(w.answers.get(), timeout)
            except TimeoutError:
                return None

    async def push_policy(self, prepared: Any) -> str | None:
        """A reload (egress.reload): every worker takes the parent's new policy, secrets
        and CA between two of its hooks. A worker that does not confirm is stopped at once
        and replaced by a fork of the parent, which holds the new policy: no worker serves
        the old one on. Returns what failed, or None."""
        rt = self.rt
        msg = policy_message(rt, prepared.new_ca)
        live = [w for w in self.workers.values() if not w.exited.is_set()]
        for w in live:
            if not w.ready.is_set():
                # Forked before the install and not serving yet: it may hold the old
                # policy. Its replacement is forked from the parent, which holds the new.
                w.replaced = True
                _kill(w.pid, STOP_NOW)
        ready = [w for w in live if w.ready.is_set()]
        answers = await asyncio.gather(*(self._ask(w, msg, 10) for w in ready),
                                       return_exceptions=True)  # fmt: skip
        failed = []
        for w, answer in zip(ready, answers, strict=True):
            if (
                not isinstance(answer, dict)
                or answer.get("op") != "policy"
                or (answer.get("generation") != msg["generation"])
            ):
                failed.append(w.slot)
                why = answer.get("error") if isinstance(answer, dict) else None
                log.error("worker %d (pid %d) did not take the new policy (%s); replacing it",
                          w.slot, w.pid, why or "no answer")  # fmt: skip
                _kill(w.pid, STOP_NOW)
        if failed:
            return f"worker(s) {', '.join(map(str, failed))} did not take the new policy and were replaced"
        return None

    async def _ask_metrics(self, w: Worker) -> list[list[Any]] | None:
        msg = await self._ask(w, {"op": "metrics"}, 5)
        if msg is None or msg.get("op") != "metrics":
            return None
        w.requests = float(msg.get("requests", 0))
        w.last = list(msg["families"])
        return w.last

    # stop

    async def stop(self, now: bool = False, signal_now: asyncio.Event | None = None) -> None:
        """SIGTERM every worker (each finishes its requests in flight), STOP_NOW at once
        with ``now`` or once ``signal_now`` is set (a second signal to the parent), SIGKILL
        for any that outlives the grace; returns once every worker is reaped."""
        from egress.proxy import IN_FLIGHT_GRACE

        self.stopping = True
        live = [w for w in self.workers.values() if not w.exited.is_set()]
        for w in live:
            _kill(w.pid, STOP_NOW if now else signal.SIGTERM)
        all_exited = asyncio.ensure_future(asyncio.gather(*(w.exited.wait() for w in live)))
        waits: set[asyncio.Future[Any]] = {all_exited}
        if signal_now is not None and not now:
            waits.add(asyncio.ensure_future(signal_now.wait()))
        done, _ = await asyncio.wait(waits, timeout=IN_FLIGHT_GRACE + 5,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if all_exited not in done:
            for w in live:
                if not w.exited.is_set():
                    _kill(w.pid, STOP_NOW)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_exited), 5)
        for w in live:
            if not w.exited.is_set():
                log.warning("worker %d (pid %d) did not stop; killing it", w.slot, w.pid)
                _kill(w.pid, signal.SIGKILL)
        await all_exited
        for t in list(self._tasks):
            t.cancel()
        for socks in self.listeners:
            for s in socks:
                s.close()


def _reap(pid: int) -> int | None:
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return status if got == pid else None


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _how(status: int | None) -> str:
    if status is None:
        return "unknown status"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# --- a worker ----------------------------------------------------------------------------

_FORKED_FROM: list[Any] = []  # the parent's event loop, kept so that it is never collected


def _worker_main(sup: Supervisor, slot: int, ctrl: socket.socket) -> int:
    """The forked worker: leave the parent's event loop behind, serve until told to stop."""
    signal.set_wakeup_fd(-1)  # the parent loop's self-pipe is the parent's
    # Ctrl-C and a hang-up reach the whole group; the parent decides (SIGHUP: a reload).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # A new sys.stderr: the inherited one's lock may be held by a parent thread that was
    # writing at the moment of the fork (logging's own locks are reset by logging itself).
    old_stderr = sys.stderr
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old_stderr:
            handler.stream = sys.stderr
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the parent died
    # The parent's loop stays referenced and untouched: closing it here would unregister
    # the parent's file descriptors from the epoll instance both processes share.
    _FORKED_FROM.append(asyncio.events._get_running_loop())
    asyncio.events._set_running_loop(None)
    gc.collect()  # garbage of the parent goes now, while its descriptors are still its own
    gc.freeze()  # the rest stays shared with the parent (copy-on-write) and is never freed
    # Only sockets are closed: the audit file, the CA file lock and stdio stay.
    keep = {0, 1, 2, ctrl.fileno(), *(s.fileno() for s in sup.listeners[slot])}
    for other in sup.workers.values():
        other.ctrl.detach()  # other workers' channels: they must see EOF when the parent dies
    _close_sockets_except(keep)
    rt = sup.rt
    rt.vault = None  # only the parent talks to Vault (module docstring)
    rt.minter = None  # ... and to token endpoints: a worker reports a 401 (stale_sink)
    rt.metrics = _worker_metrics()
    return asyncio.run(_worker_serve(sup, slot, ctrl))


def _close_sockets_except(keep: set[int]) -> None:
    """Close inherited sockets a worker does not use (the admin listener and its
    connections, Vault's HTTP connections, the parent loop's self-pipe)."""
    import stat

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)


def _worker_metrics() -> Any:
    """A fresh registry: the worker counts only its own traffic (the parent's counts, all
    zero at fork, stay the parent's)."""
    from egress.metrics import Metrics

    return Metrics()


async def _worker_serve(sup: Supervisor, slot: int, ctrl: socket.socket) -> int:
    from egress.proxy import EmbeddedProxy, serve_until_stopped

    rt = sup.rt
    proxy = EmbeddedProxy(rt, sup.listen_host, sup.port, sup.transparent,
                          sockets=sup.listeners[slot])  # fmt: skip
    await proxy.start()
    reader, writer = await asyncio.open_connection(sock=ctrl, limit=CONTROL_LIMIT)
    rt.stale_sink = lambda name: writer.write(
        json.dumps({"op": "stale", "name": name}).encode() + b"\n"
    )
    rt.trip_sink = lambda msg: writer.write(json.dumps(msg).encode() + b"\n")
    writer.write(json.dumps({"op": "ready", "pid": os.getpid()}).encode() + b"\n")
    await writer.drain()
    stop = asyncio.Event()
    now = asyncio.Event()

    def on_term() -> None:
        (now if stop.is_set() else stop).set()

    def on_stop_now() -> None:
        stop.set()
        now.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    asyncio.get_running_loop().add_signal_handler(STOP_NOW, on_stop_now)

    async def control() -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg["op"] == "metrics":
                families = rt.metrics.samples()
                reply = {"op": "metrics", "families": families,
                         "requests": rt.metrics.total_requests()}  # fmt: skip
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
            elif msg["op"] == "secrets":
                if msg.get("generation", 0) == rt.policy.generation:
                    _apply_secrets(rt.secrets, msg["values"])
            elif msg["op"] == "quarantine":  # the parent's book (egress.tripwires)
                rt.quarantine.replace(msg["entries"])
                if msg.get("end") and rt.end_connections is not None:
                    rt.end_connections(msg["end"])
            elif msg["op"] == "policy":
                try:
                    apply_policy_message(rt, msg)
                    reply = {"op": "policy", "generation": rt.policy.generation}
                except Exception as e:  # noqa: BLE001 (the parent replaces this worker)
                    reply = {"op": "policy", "error": type(e).__name__}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        stop.set()  # the parent is gone: stop serving
        now.set()

    task = asyncio.create_task(control())
    await serve_until_stopped(proxy, stop, now)
    task.cancel()
    rt.audit.close_sinks()  # this worker's copies to syslog/OTLP: sent before it exits
    return 0 if stop.is_set() else 1  # 1: the proxy stopped by itself


def _apply_secrets(store: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is None:
            store.drop(name)
        else:
            store.set(name, SecretValue.from_wire(value))


def policy_message(rt: Any, new_ca: Any) -> dict[str, Any]:
    """The parent's policy for its workers, over their socketpairs (never a file): the
    config and the agents' token digests pickled (parent to its own child), the secret
    values as for a refresh, and a CA a reload added, with its key (in memory only)."""
    from cryptography.hazmat.primitives import serialization

    ca = None
    if new_ca is not None:
        key = new_ca.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())  # fmt: skip
        ca = {"key": key.decode(), "cert": new_ca.cert_pem().decode(),
              "anchor": new_ca.trust_pem().decode() if new_ca.anchor is not None else None}  # fmt: skip
    policy = rt.policy
    store = rt.secrets
    values = {s.name: (v.to_wire() if (v := store.get(s.name)) else None) for s in store.specs}
    blob = pickle.dumps((policy.config, policy.credentials))
    return {"op": "policy", "generation": policy.generation, "config": base64.b64encode(blob).decode(),
            "ca": ca, "values": values}  # fmt: skip


def apply_policy_message(rt: Any, msg: dict[str, Any]) -> None:
    """A worker takes the parent's policy (policy_message); a message it has applied
    already (a worker forked after the reload) changes nothing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from egress.ca import EphemeralCA

    if msg["generation"] <= rt.policy.generation:
        return
    cfg, credentials = pickle.loads(base64.b64decode(msg["config"]))  # noqa: S301 (our parent)
    new_ca = None
    if msg.get("ca"):
        cert = x509.load_pem_x509_certificate(msg["ca"]["cert"].encode())
        if all(c.cert.serial_number != cert.serial_number for c in rt.cas):
            key = serialization.load_pem_private_key(msg["ca"]["key"].encode(), None)
            anchor = msg["ca"].get("anchor")
            new_ca = EphemeralCA(key=key, cert=cert,  # type: ignore[arg-type]
                                 anchor=x509.load_pem_x509_certificate(anchor.encode()) if anchor else None)  # fmt: skip
    values = {k: (SecretValue.from_wire(v) if v is not None else None)
              for k, v in msg["values"].items()}  # fmt: skip
    rt.apply_secrets(cfg.secrets, values)
    rt.apply_policy(cfg, credentials, new_ca, generation=msg["generation"])
