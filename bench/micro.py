"""Pure-logic figures for the secret scanning: no proxy, no network, one process.

    python -m bench.micro                    # this checkout
    python -m bench.micro --src /tmp/old     # an older checkout (git worktree add /tmp/old REV)

Prints, for 1, 2, 20 and 100 secrets: the CPU one request costs in egress's secret logic
(injection plan with the leak guard, scrubbing a 2 KiB JSON response and six header
values, redacting a path), the stream scrubber's throughput over 64 MiB in 64 KiB chunks
(text with line breaks, and random bytes), and what loading the secrets costs (encoded
forms, the index's automata, the stream scrubber's plan, and the memory they take). With
``--src`` the older code is measured through the API it had (plan over a forms dict,
encodings.scrub over a list). Figures are the best of five repetitions of process time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from egress.config import parse
from egress.encodings import make_forms, scrub
from egress.injection import RequestParts, plan
from egress.secrets import SecretValue
from egress.streamscrub import StreamScrubber
import egress
# An editable install's finder can serve modules the checkout measured does not have: decide
# by the files of the egress package actually imported.
NEW = os.path.exists(os.path.join(os.path.dirname(egress.__file__), "secretindex.py"))
if NEW:
    from egress.secretindex import SecretIndex

def rss():
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * 4096 / 2**20

def config(n):
    return parse({"allow": ["api.test", *(f"h{i}.test" for i in range(1, n))],
                  "secrets": [{"name": f"s{i}", "source": {"env": f"X{i}"},
                               "hosts": ["api.test" if i == 0 else f"h{i}.test"],
                               "placeholder": f"egress-ph-{i:04d}-x", "inject": ["headers", "query", "body"]}
                              for i in range(n)]}, "t.yaml", Path("/"))

REQ = RequestParts("https", "api.test", "POST", "/v1/things?page=2&q=%22hello%22",
    (("host", "api.test"), ("authorization", "Bearer egress-ph-0000-x"), ("user-agent", "agent/1.0"),
     ("accept", "application/json"), ("content-type", "application/json")),
    json.dumps({"message": "hello " * 40, "n": 3}).encode(), "application/json")
RESPONSE = json.dumps({"items": [{"id": i, "text": "x" * 80} for i in range(20)]}).encode()
HEADS = [b"OK", b"application/json", b"Thu, 03 Dec 2026 17:00:00 GMT", b"nginx", b"1234", b"keep-alive"]
TEXT = (b'The quick brown fox jumps over the lazy dog; {"id": 12345, "name": "value"}\n' * 200)
BODIES = {"text": (TEXT * (64 * 2**20 // len(TEXT) + 1))[: 64 * 2**20],
          "random": os.urandom(2**20) * 64}

def best(fn, reps, rounds=5):
    out = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        out = min(out, (time.process_time() - t0) / reps)
    return out

result = {}
for n in (1, 2, 20, 100):
    c = config(n)
    values = [(s, SecretValue(f"real-{i:04d}-" + "v" * 30)) for i, s in enumerate(c.secrets)]
    r0, t0 = rss(), time.perf_counter()
    forms = [make_forms(s.name, v, s.placeholder) for s, v in values]
    t1 = time.perf_counter()
    by_name = {f.name: [f] for f in forms}
    if NEW:
        index = SecretIndex(forms, c.secrets, {s.name: v for s, v in values})
        t2 = time.perf_counter()
        index.stream_plan()
        def one():
            plan(REQ, None, index); index.scrub(RESPONSE)
            for h in HEADS:
                index.scrub(h)
            index.redact("/v1/things?page=2")
        make_scrubber = lambda: StreamScrubber(index)
    else:
        t2 = time.perf_counter()
        StreamScrubber(forms)
        def one():
            plan(REQ, values, by_name); scrub(RESPONSE, forms)
            for h in HEADS:
                scrub(h, forms)
            data = b"/v1/things?page=2"
            for f in forms:
                for s, _, _ in f.pairs:
                    data = data.replace(s, b"x")
            scrub(data, forms)
        make_scrubber = lambda: StreamScrubber(forms)
    t3 = time.perf_counter()
    row = {"forms_ms": (t1 - t0) * 1e3, "index_ms": (t2 - t1) * 1e3, "stream_plan_ms": (t3 - t2) * 1e3,
           "load_mib": rss() - r0, "request_us": best(one, 200) * 1e6}
    for kind, body in BODIES.items():
        s = make_scrubber()
        t = time.process_time()
        for i in range(0, len(body), 65536):
            s(body[i : i + 65536])
        s(b"")
        row[f"stream_{kind}_mbs"] = len(body) / (time.process_time() - t) / 1e6
    result[n] = row
print(json.dumps(result))
"""


def measure(src: str) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=src, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the checkout to measure (default: this one)")  # fmt: skip
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    figures = measure(args.src)
    cols = ["request_us", "stream_text_mbs", "stream_random_mbs", "forms_ms", "index_ms",
            "stream_plan_ms", "load_mib"]  # fmt: skip
    print("| secrets | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for n, row in figures.items():
        print(f"| {n} | " + " | ".join(f"{row[c]:,.1f}" for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
