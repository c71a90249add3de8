"""Benchmark: ``egress review --audit`` (and ``egress learn``) over a large audit log.

Generates a synthetic audit log of SIZE_MB (default 1024) with realistic records (many
hosts, allowed traffic with injected secrets, refused CONNECTs, report-mode would_deny,
path and method denials, secret refusals, upstream errors; a time span of three days, in
finish order), then runs ``summarize`` over it in a child process, streaming, and reports
records/s, MB/s, wall time and the child's peak RSS (``ru_maxrss``) next to its RSS before
the pass. The point is that the peak does not grow with the log.

    python bench/audit_join.py [--size-mb 1024] [--path FILE] [--keep] [--learn] [--no-orjson]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ALLOWED = [  # (host, rule index, secrets injected, methods, path shapes)
    ("api.github.com", 0, ["github_token"], ["GET", "GET", "GET", "POST", "PATCH"],
     ["/repos/{o}/{r}/issues", "/repos/{o}/{r}/pulls/{n}", "/user", "/search/code?q=REDACTED"]),
    ("github.com", 1, ["github_token"], ["GET", "POST"], ["/{o}/{r}.git/info/refs?service=REDACTED",
                                                        "/{o}/{r}.git/git-upload-pack"]),
    ("pypi.org", 2, [], ["GET"], ["/simple/{p}/", "/pypi/{p}/json"]),
    ("files.pythonhosted.org", 3, [], ["GET"], ["/packages/{h}/{h}/{p}-1.{n}.tar.gz"]),
    ("registry.npmjs.org", 4, ["npm_token"], ["GET"], ["/{p}", "/@{o}/{p}"]),
    ("api.anthropic.com", 5, ["anthropic_key"], ["POST"], ["/v1/messages"]),
    ("api.openai.com", 6, ["openai_key"], ["POST", "GET"], ["/v1/chat/completions", "/v1/models"]),
]  # fmt: skip
CONFIG = {
    "mode": "report",
    "allow": [
        {"host": "api.github.com", "methods": ["GET", "HEAD", "POST", "PATCH"], "paths": ["/repos/", "/user", "/search/"]},
        {"host": "github.com"},
        {"host": "pypi.org", "methods": ["GET", "HEAD"]},
        {"host": "files.pythonhosted.org", "methods": ["GET", "HEAD"]},
        {"host": "registry.npmjs.org"},
        {"host": "api.anthropic.com"},
        {"host": "api.openai.com"},
        {"host": "never-used.example.com"},
    ],
    "secrets": [
        {"name": "github_token", "source": {"env": "GH"}, "hosts": ["api.github.com", "github.com"]},
        {"name": "npm_token", "source": {"env": "NPM"}, "hosts": ["registry.npmjs.org"]},
        {"name": "anthropic_key", "source": {"env": "ANT"}, "hosts": ["api.anthropic.com"]},
        {"name": "openai_key", "source": {"env": "OAI"}, "hosts": ["api.openai.com"]},
        {"name": "unused_key", "source": {"env": "UNUSED"}, "hosts": ["never-used.example.com"]},
    ],
}  # fmt: skip
START = 1_795_000_000  # 2026-11-18, UTC
SPAN = 3 * 86400


def _line(rng: random.Random, ts: float, n: int) -> str:
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
    client = f"10.0.{rng.randrange(4)}.{rng.randrange(2, 250)}:{rng.randrange(30000, 60000)}"
    x = rng.random()
    rule = would = detail = None
    secrets: list[str] = []
    scheme, port, event, status = "https", 443, "request", 200
    words = ("acme", "tools", "core", "web", "infra", "ml", "docs", "cli", "sdk")
    fill = {"o": rng.choice(words), "r": rng.choice(words) + str(rng.randrange(50)),
            "n": rng.randrange(5000), "p": rng.choice(words) + "-" + rng.choice(words),
            "h": f"{rng.randrange(256):02x}"}  # fmt: skip
    if x < 0.80:  # allowed, mostly with a secret
        host, idx, secs, methods, shapes = rng.choice(ALLOWED)
        method, path = rng.choice(methods), rng.choice(shapes).format(**fill)
        decision, reason, rule, secrets = "allow", "allowed", f"allow[{idx}]", secs
    elif x < 0.88:  # report mode: a host outside the allowlist, many of them
        host = f"{rng.choice(words)}{rng.randrange(3000)}.{rng.choice(('cdn-a.net', 'telemetry.io', 'example.org'))}"
        method, path = "GET", f"/{rng.choice(words)}/{rng.randrange(100)}"
        decision, reason, would = "allow", "allowed", "host_not_allowed"
        detail = f"no rule allows host {host!r}"
    elif x < 0.92:  # report mode: a path or method outside the rule
        host, method = "api.github.com", rng.choice(("GET", "DELETE"))
        path = (
            f"/orgs/{fill['o']}/members" if method == "GET" else f"/repos/{fill['o']}/{fill['r']}"
        )
        decision, reason, rule = "allow", "allowed", "allow[0]"
        would = "path_not_allowed" if method == "GET" else "method_not_allowed"
        detail = f"{'path ' + path if method == 'GET' else 'method DELETE'} is not allowed for host 'api.github.com'"
    elif x < 0.96:  # a refused CONNECT (address literal or a host of an older, enforce run)
        host = rng.choice(("169.254.169.254", f"10.9.{rng.randrange(256)}.{rng.randrange(256)}",
                           f"tracker{rng.randrange(40)}.ads.example"))  # fmt: skip
        method, path, event, status = "CONNECT", "", "connect", 403
        decision = "deny"
        reason = "ip_literal" if host[0].isdigit() else "host_not_allowed"
        detail = "refused"
    elif x < 0.975:  # a secret refusal
        host, method, path = (
            rng.choice(("gist.github.com", "pastebin.com", "webhook.site")),
            "POST",
            "/",
        )
        decision, reason, status = (
            "deny",
            rng.choice(("placeholder_to_unbound_host", "foreign_credential")),
            403,
        )
        detail = "the placeholder of secret 'github_token' is in the headers of a request to it"
    else:  # an upstream error
        host, idx, _, methods, shapes = rng.choice(ALLOWED)
        method, path = rng.choice(methods), rng.choice(shapes).format(**fill)
        decision, reason, rule, status = "error", "upstream_error", f"allow[{idx}]", 502
        detail = "Connection reset by peer"
    rec = {
        "time": t, "event": event, "flow_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "client": client, "method": method, "scheme": scheme, "host": host, "port": port,
        "path": path, "decision": decision, "reason": reason, "rule": rule, "would_deny": would,
        "secrets": secrets, "scrubbed": len(secrets) and rng.randrange(2), "status": status,
        "bytes_in": rng.randrange(2000) if method in ("POST", "PATCH") else 0,
        "bytes_out": rng.randrange(100, 50000), "duration_ms": round(rng.random() * 300, 2),
        "detail": detail,
    }  # fmt: skip
    if n % 100_000 == 99_999:
        return "this line is not JSON\n"  # a few bad lines
    return json.dumps(rec, separators=(",", ":")) + "\n"


def generate(path: Path, size_mb: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    target = size_mb * 1024 * 1024
    est = target // 420  # records, for spreading the time span
    written = n = 0
    with path.open("w", encoding="ascii") as f:
        buf: list[str] = []
        while written < target:
            ts = START + SPAN * n / est + rng.random() * 5 - 2.5  # finish order, not start order
            line = _line(rng, ts, n)
            buf.append(line)
            written += len(line)
            n += 1
            if len(buf) >= 4096:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return n


def rss_kb() -> int:
    m = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def child(path: str, learn_too: bool, no_orjson: bool) -> None:
    """Run in a fresh process: the pass, and what it cost."""
    from egress.config import parse
    from egress.review import auditrecords as auditjoin  # where the orjson switch is
    from egress.review.auditjoin import summarize
    from egress.review.auditrecords import read_lines

    if no_orjson:
        auditjoin._fast_loads = None
    cfg = parse(CONFIG, "bench.yaml", Path("."))
    before = rss_kb()
    t0 = time.perf_counter()
    s = summarize(read_lines(path), cfg, path)
    wall = time.perf_counter() - t0
    out = {
        "records": s.records, "skipped": s.skipped, "wall_s": wall,
        "rss_before_kb": before, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "bucket_seconds": s.bucket_seconds, "buckets": len(s.timeline),
        "unused_rules": s.unused_rules, "uninjected_secrets": s.uninjected_secrets,
        "top_denied": [(d.scheme, d.host, d.port, d.count) for d in s.denied[:5]],
        "by_reason": s.by_reason, "orjson": auditjoin._fast_loads is not None,
    }  # fmt: skip
    if learn_too:
        from egress.review.learn import learn, render_draft

        t0 = time.perf_counter()
        d = learn(read_lines(path), cfg, path)
        out["learn_wall_s"] = time.perf_counter() - t0
        out["learn_rules"] = len(d.rules)
        out["learn_peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["learn_draft_head"] = render_draft(d).splitlines()[:40]
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--path", help="the log to use (generated there if it does not exist)")
    ap.add_argument("--keep", action="store_true", help="keep the generated log")
    ap.add_argument("--learn", action="store_true", help="also time egress learn on it")
    ap.add_argument("--no-orjson", action="store_true", help="parse with the stdlib json only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.learn, args.no_orjson)
    tmp = None
    if args.path:
        path = Path(args.path)
    else:
        tmp = tempfile.mkdtemp(prefix="egress-bench-")
        path = Path(tmp) / "audit.jsonl"
    if not path.exists():
        t0 = time.perf_counter()
        n = generate(path, args.size_mb)
        print(f"generated {path}: {n} lines, {path.stat().st_size / 2**20:.0f} MiB "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    size = path.stat().st_size
    cmd = [sys.executable, __file__, "--child", str(path)]
    cmd += ["--learn"] * args.learn + ["--no-orjson"] * args.no_orjson
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ)
    if r.returncode:
        sys.exit(f"the pass failed:\n{r.stderr}")
    res = json.loads(r.stdout)
    mib = size / 2**20
    print(f"parser: {'orjson' if res['orjson'] else 'json (stdlib)'}")
    print(f"log: {mib:.0f} MiB, {res['records']} records, {res['skipped']} skipped")
    print(f"summarize: {res['wall_s']:.1f} s wall, {res['records'] / res['wall_s']:,.0f} records/s, "
          f"{mib / res['wall_s']:.1f} MiB/s")  # fmt: skip
    print(f"RSS before the pass: {res['rss_before_kb'] / 1024:.0f} MiB; "
          f"peak: {res['peak_rss_kb'] / 1024:.0f} MiB")  # fmt: skip
    print(f"timeline: {res['buckets']} buckets of {res['bucket_seconds']} s")
    print(f"unused rules: {res['unused_rules']}; never injected: {res['uninjected_secrets']}")
    print(f"most denied: {res['top_denied']}")
    if args.learn:
        print(f"learn: {res['learn_wall_s']:.1f} s wall, {res['records'] / res['learn_wall_s']:,.0f} "
              f"records/s, {res['learn_rules']} rules; peak RSS after both "
              f"{res['learn_peak_rss_kb'] / 1024:.0f} MiB")  # fmt: skip
        print("\n".join(res["learn_draft_head"]))
    if tmp is not None:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
