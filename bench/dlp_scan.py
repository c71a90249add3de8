"""Benchmark: data-loss inspection throughput (MB/s of request body) by kind of body.

Runs the detectors (egress.dlp) over request bodies as the proxy reads them: a chat
request of prose, source code, a JSON request carrying a base64 image, and prose with a
finding every few KB. One process, one core, no proxy around it: what a request costs in
CPU on top of the proxy's own. Run:  python bench/dlp_scan.py [SIZE_KB]   (default 512)
"""

from __future__ import annotations

import base64
import glob
import json
import random
import sys
import sysconfig
import time

from egress.dlp.fields import body_fields
from egress.dlp.scan import Scanner

WORDS = ("the agent reads a file and summarises what it found in the repository so that "
         "a reviewer can decide whether the change is safe to merge before the release").split()  # fmt: skip


def prose(size: int, rng: random.Random) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def bodies(size: int) -> dict[str, tuple[bytes, str]]:
    rng = random.Random(1)
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": prose(size, rng)}]})
    lib = sysconfig.get_paths()["stdlib"]
    code = ""
    for path in sorted(glob.glob(f"{lib}/json/*.py") + glob.glob(f"{lib}/http/*.py")):
        code += open(path, encoding="utf-8").read()
    code = (code * (size // len(code) + 1))[:size]
    image = json.dumps({"messages": [{"content": [{"type": "image", "data": base64.b64encode(
        rng.randbytes(size * 3 // 4)).decode()}]}]})  # fmt: skip
    pieces = []
    for i in range(size // 4096):
        pieces.append(prose(4000, rng) + f" reach me at user{i}.name@gmail.com ")
    findings = json.dumps({"messages": [{"content": "".join(pieces)}]})
    return {
        "chat prose (JSON)": (chat.encode(), "application/json"),
        "source code (text)": (code.encode(), "text/plain"),
        "base64 image (JSON)": (image.encode(), "application/json"),
        "prose, a finding every 4 KB": (findings.encode(), "application/json"),
    }


def main() -> None:
    size = int(sys.argv[1]) * 1024 if len(sys.argv) > 1 else 512 * 1024
    scanner = Scanner()
    scanner.scan(body_fields(b'{"warm": "up \\u200b x@gmail.com"}', "application/json"))
    print(f"{'body':32} {'MB/s':>7} {'findings':>9}")
    for name, (body, ctype) in bodies(size).items():
        runs, found = 0, 0
        start = time.perf_counter()
        while True:
            found = len(scanner.scan(body_fields(body, ctype)).findings)
            runs += 1
            if time.perf_counter() - start > 1.0:
                break
        rate = runs * len(body) / (time.perf_counter() - start) / 1e6
        print(f"{name:32} {rate:7.1f} {found:9d}")


if __name__ == "__main__":
    main()
