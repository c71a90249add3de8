"""A real nginx on loopback as a recording upstream: what it logs is what it parsed.

The differential tests compare the request egress decided with the request a widely
deployed HTTP parser read from the wire. nginx serves HTTPS on two ports, one HTTP/1.1 only
and one HTTP/2 (ALPN h2 only), and one plain-HTTP port; every request it parses becomes one
JSON line in its access log, with the method, the request target as received, the target
nginx routed on (decoded and normalised) and the Authorization header.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme

from tests.vault_server import free_port

LOG_FORMAT = (
    '{"method":"$request_method","target":"$request_uri","uri":"$uri",'
    '"protocol":"$server_protocol","host":"$host","authorization":"$http_authorization",'
    '"marker":"$http_x_marker","port":"$server_port","status":"$status"}'
)


def _reachable_on_loopback(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


class NginxUpstream:
    """``h1_port``: HTTPS, HTTP/1.1 only; ``h2_port``: HTTPS, HTTP/2 only (ALPN h2);
    ``plain_port``: plain HTTP. With ``both_port``, one HTTPS port serves both versions by
    ALPN (as real sites do), on ``host``, inside a network namespace through ``prefix``."""

    def __init__(self, workdir: Path, ca: trustme.CA, names: list[str], *, host: str = "127.0.0.1",
                 both_port: int | None = None, prefix: tuple[str, ...] = (),
                 reachable: Callable[[int], bool] | None = None):  # fmt: skip
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        cert = ca.issue_cert(*names)
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.dir / "server.pem"))
        self.prefix = prefix
        self.reachable = reachable or _reachable_on_loopback
        self.log = self.dir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        user = "user root;" if os.geteuid() == 0 else ""
        tls = f"""
    ssl_certificate {self.dir / "server.pem"};
    ssl_certificate_key {self.dir / "server.pem"};"""
        common = """
    location / { return 200 "parsed\\n"; }
    location /v1/ { return 200 "v1\\n"; }
    location /admin { return 200 "admin\\n"; }"""
        if both_port is not None:
            self.ports = [both_port]
            self.h1_port = self.h2_port = both_port
            self.plain_port = 0
            servers = [f"listen {host}:{both_port} ssl http2;{tls}"]
        else:
            self.h1_port, self.h2_port, self.plain_port = free_port(), free_port(), free_port()
            self.ports = [self.h1_port, self.h2_port, self.plain_port]
            servers = [f"listen {host}:{self.h1_port} ssl;{tls}",
                       f"listen {host}:{self.h2_port} ssl http2;{tls}",
                       f"listen {host}:{self.plain_port};"]  # fmt: skip
        blocks = "".join(
            f"""
  server {{
    {server}
    access_log {self.log} rec;{common}
  }}"""
            for server in servers
        )
        (self.dir / "nginx.conf").write_text(
            f"""{user}
worker_processes 1;
daemon off;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "error.log"} info;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_max_body_size 0;
  log_format rec escape=json '{LOG_FORMAT}';
  client_body_temp_path {self.dir / "body"};
  proxy_temp_path {self.dir / "proxy"};
  fastcgi_temp_path {self.dir / "fastcgi"};
  uwsgi_temp_path {self.dir / "uwsgi"};
  scgi_temp_path {self.dir / "scgi"};{blocks}
}}
"""
        )

    def start(self) -> None:
        binary = nginx_binary()
        assert binary, "nginx not found (.ci/run installs it)"
        out = (self.dir / "nginx.out").open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            for port in self.ports:
                while not self.reachable(port):
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            "nginx did not start:\n" + self._tail("nginx.out", "error.log")
                        )
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _tail(self, *names: str) -> str:
        return "\n".join(
            (self.dir / n).read_text(errors="replace")[-2000:]
            for n in names
            if (self.dir / n).exists()
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with_group = os.getpgid(self.proc.pid)
        os.killpg(with_group, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            self.proc.wait()

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        # nginx writes bytes over 0x7F as they came: read them without failing on them.
        text = self.log.read_bytes().decode("latin-1")
        return [json.loads(line) for line in text.split("\n") if line.strip()]

    def records_after(self, n: int, settle: float = 0.15) -> list[dict[str, Any]]:
        """Records after the first ``n``, once the log has stopped growing for ``settle`` s."""
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            count = len(self.records())
            if count != last:
                last, stable_since = count, time.monotonic()
            elif time.monotonic() - stable_since >= settle:
                break
            time.sleep(0.03)
        return self.records()[n:]
