"""Benchmark: a large streamed download through a secret-bound host, scrubbed on the way.

Measures the proxy's throughput and peak RSS (VmHWM) while it scrubs a body of SIZE_MB that
carries the real secret every few megabytes, and checks that no byte of the secret reached
the client. Loopback only. Run:  python bench/stream_scrub.py [SIZE_MB]   (default 1024)
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme
import yaml

SECRET = "bench-s3cr3t-VALUE-0123456789abcdef"
PLACEHOLDER = "egress-bench-placeholder"
CHUNK = 1024 * 1024


def serve(size_mb: int, tls: ssl.SSLContext) -> ThreadingHTTPServer:
    block = bytearray(b"x" * CHUNK)
    block[CHUNK - 10 :] = SECRET.encode()[:10]  # split across chunks (the length stays CHUNK)
    tail = SECRET.encode()[10:]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", str(size_mb * CHUNK))
            self.end_headers()
            first = bytes(tail) + bytes(block[len(tail) :])
            for i in range(size_mb):
                self.wfile.write(bytes(block) if i == 0 else first)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    tmp = Path(tempfile.mkdtemp())
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("bench.test").configure_cert(ctx)
    srv = serve(size_mb, ctx)
    port = srv.server_address[1]
    cfg = {
        "listen": {"port": 0},
        "ca": {"cert_path": str(tmp / "egress-ca.pem")},
        "upstream": {"ca_files": [str(tmp / "ca.pem")], "resolve": {"bench.test": "127.0.0.1"},
                     "allow_private": ["127.0.0.1/32"], "dns": "static"},
        "allow": [{"host": "bench.test", "ports": [port]}],
        "secrets": [{"name": "bench", "source": {"env": "BENCH_SECRET"}, "hosts": ["bench.test"],
                     "placeholder": PLACEHOLDER}],
        "audit": {"path": str(tmp / "audit.jsonl")},
    }  # fmt: skip
    (tmp / "egress.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "BENCH_SECRET": SECRET}
    err = (tmp / "stderr").open("w+")
    proxy = subprocess.Popen([sys.executable, "-m", "egress", "run", "--config", str(tmp / "egress.yaml")],
                             stdout=subprocess.DEVNULL, stderr=err, env=env)  # fmt: skip
    while "ready;" not in (tmp / "stderr").read_text():
        time.sleep(0.1)
    proxy_port = re.search(r"listening on 127\.0\.0\.1:(\d+)", (tmp / "stderr").read_text()).group(
        1
    )  # type: ignore[union-attr]
    idle = peak_rss_mb(proxy.pid)
    start = time.monotonic()
    curl = subprocess.Popen(["curl", "-sS", "--proxy", f"http://127.0.0.1:{proxy_port}", "--cacert",
                             str(tmp / "egress-ca.pem"), f"https://bench.test:{port}/"], stdout=subprocess.PIPE)  # fmt: skip
    assert curl.stdout is not None
    received, carry, leaks = 0, b"", 0
    while chunk := curl.stdout.read(CHUNK):
        window = carry + chunk
        leaks += window.count(SECRET.encode())
        carry = window[-len(SECRET) :]
        received += len(chunk)
    curl.wait()
    elapsed = time.monotonic() - start
    peak = peak_rss_mb(proxy.pid)
    proxy.send_signal(signal.SIGINT)
    proxy.wait(timeout=30)
    srv.shutdown()
    print(f"size: {size_mb} MB, received {received / CHUNK:.0f} MB in {elapsed:.1f} s "
          f"({received / CHUNK / elapsed:.0f} MB/s)")  # fmt: skip
    print(f"proxy peak RSS: {peak:.0f} MB (idle {idle:.0f} MB)")
    print(f"secret occurrences reaching the client: {leaks}")
    assert received == size_mb * CHUNK and leaks == 0


if __name__ == "__main__":
    main()
