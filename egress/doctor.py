"""``egress doctor``: try each client found on this machine through a running egress.

Each client gets exactly the environment ``egress env`` prints (egress.envcmd.build, from
the clients table egress.clients.CLIENTS) and fetches one URL the config allows. Two runs
per client, side by side in a small pool:

- against the real proxy: it works, is refused (the reason code from ``X-Egress-Reason``
  or the status line ``Forbidden (egress: <reason> ...)``), or fails TLS (it does not trust
  the egress CA);
- against a dummy proxy doctor opens on loopback, which only records that it was
  contacted: a client that never contacts it ignores the proxy settings and goes direct.

Nothing here loads a secret: the config is read, the placeholders are what clients get,
and variables that are a secret's source are removed from the clients' environment. The
files of the setup (a wgetrc, a Java truststore) go to a temporary directory, removed at
the end, in place of ``egress env``'s state directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from egress import config as config_mod
from egress import envcmd
from egress.clients import CLIENTS
from egress.config import Config
from egress.errors import EgressError

TIMEOUT = 5.0  # seconds, each run of a client
SLOW_TIMEOUT = 15.0  # clients that compile first (java's source launcher, go run)
POOL = 6
STATUSES = ("works", "refused", "direct", "tls", "fails", "missing")
LABELS = {"works": "works", "refused": "refused by egress", "direct": "goes direct",
          "tls": "TLS failure", "fails": "fails", "missing": "not installed"}  # fmt: skip

# What a refusal of egress looks like in a client's output.
_REASON_HEADER = re.compile(r"x-egress-reason:\s*([a-z_]+)", re.I)
_REASON_PHRASE = re.compile(r"\(egress: ([a-z_]+)")
_TLS = re.compile(
    r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|SSL certificate problem|"
    r"unable to get local issuer|self[- ]signed certificate|UNABLE_TO_VERIFY_LEAF_SIGNATURE|"
    r"SELF_SIGNED_CERT_IN_CHAIN|PKIX path building failed|signed by unknown authority|"
    r"invalid peer certificate|UnknownIssuer|certificate is not trusted|"
    r"server certificate verification failed|unable to verify the first certificate",
    re.I,
)
# A refused tunnel in a client that shows no more than this (egress then says why itself).
_FORBIDDEN = re.compile(r"\b403\b|Forbidden|tunnel error: unsuccessful", re.I)


class DoctorError(EgressError):
    pass


@dataclass(frozen=True)
class Probe:
    """One client: how to find it, the command that fetches URL, and when it worked."""

    name: str
    table: str  # the entry of egress.clients.CLIENTS that sets it up
    find: Callable[[], list[str] | None]  # the command's first words; None: not installed
    args: Callable[[str, Path], list[str]]  # (url, scratch dir) -> the rest of the command
    # An answer came from the server (any status): exit codes and output that say so.
    ok_codes: tuple[int, ...] = (0,)
    answered: str | None = None  # a regex over the output
    env: Mapping[str, str] = field(default_factory=dict)  # the probe's own (quiet, no retries)
    timeout: float = TIMEOUT
    files: Mapping[str, str] = field(default_factory=dict)  # written to the scratch dir
    direct_hint: str = ""  # why it may ignore the proxy, and the change
    missing_code: int | None = None  # an exit code that means "not installed" (imports)


@dataclass
class Result:
    client: str
    status: str  # one of STATUSES
    reason: str | None = None  # refused: the reason code
    detail: str = ""
    fix: str = ""


def _which(name: str) -> Callable[[], list[str] | None]:
    def find() -> list[str] | None:
        path = shutil.which(name)
        return [path] if path else None

    return find


def _python() -> list[str] | None:
    path = shutil.which("python3") or shutil.which("python") or sys.executable
    return [path] if path else None


# Python clients: print the status line and the headers; exit 3 when the module is absent.
_PY = """
import sys
url = sys.argv[1]
try:
    {imp}
except ImportError:
    sys.exit(3)
try:
{body}
except Exception as e:
    print(type(e).__name__, e, repr(getattr(e, "__cause__", None)))
    sys.exit(1)
print("DOCTOR-STATUS", status)
for k, v in headers:
    print(f"{{k}}: {{v}}")
"""


def _py(imp: str, body: str) -> Callable[[str, Path], list[str]]:
    code = _PY.format(imp=imp, body="\n".join("    " + line for line in body.splitlines()))
    return lambda url, d: ["-c", code, url]


_URLLIB = """
try:
    r = urllib.request.urlopen(url, timeout=5)
except urllib.error.HTTPError as e:
    r = e
status, headers = r.status, r.headers.items()
"""
_REQUESTS = "r = requests.get(url, timeout=5)\nstatus, headers = r.status_code, r.headers.items()"
_HTTPX = "r = httpx.get(url, timeout=5)\nstatus, headers = r.status_code, r.headers.items()"

_NODE = """
fetch(process.argv[1]).then(r => {
  console.log("DOCTOR-STATUS", r.status);
  for (const [k, v] of r.headers) console.log(k + ": " + v);
}).catch(e => { console.log(String(e), String(e.cause)); process.exit(1); });
"""
_JAVA = """
import java.net.*;
import java.io.*;
public class Probe {
  public static void main(String[] a) throws Exception {
    HttpURLConnection c = (HttpURLConnection) new URL(a[0]).openConnection();
    c.setConnectTimeout(5000); c.setReadTimeout(5000);
    try {
      System.out.println("DOCTOR-STATUS " + c.getResponseCode());
      System.out.println("x-egress-reason: " + c.getHeaderField("x-egress-reason"));
    } catch (IOException e) { System.out.println(e); System.exit(1); }
  }
}
"""
_GO = """
package main
import ("fmt"; "net/http"; "os"; "time")
func main() {
  c := &http.Client{Timeout: 5 * time.Second}
  r, err := c.Get(os.Args[1])
  if err != nil { fmt.Println(err); os.Exit(1) }
  fmt.Println("DOCTOR-STATUS", r.StatusCode)
  for k, v := range r.Header { fmt.Println(k + ": " + v[0]) }
}
"""
_RUBY = """
require "net/http"
begin
  r = Net::HTTP.get_response(URI(ARGV[0]))
  puts "DOCTOR-STATUS #{r.code}"
  r.each_header { |k, v| puts "#{k}: #{v}" }
rescue => e
  puts "#{e.class} #{e.message}"
  exit 1
end
"""
_OLD_NODE = (
    "Node reads proxy variables only from 24.0 and 22.21 on (NODE_USE_ENV_PROXY=1): "
    "upgrade Node, or run the agent under egress exec --isolate, where direct traffic "
    "cannot leave (docs/clients.md, Caveats)"
)
_DIRECT = "a setting of its own overrides the proxy variables: look for one"

PROBES: tuple[Probe, ...] = (
    Probe("curl", "curl", _which("curl"),
          lambda url, d: ["-sS", "-D", "-", "-o", "/dev/null", "--max-time", "5", url],
          direct_hint=f"{_DIRECT} (~/.curlrc: proxy, noproxy)"),
    Probe("wget", "wget", _which("wget"),
          lambda url, d: ["-S", "-O", "/dev/null", "--tries=1", "--timeout=5", url],
          ok_codes=(0, 8), direct_hint=f"{_DIRECT} (/etc/wgetrc: use_proxy = off)"),
    Probe("git", "git", _which("git"), lambda url, d: ["ls-remote", url],
          answered=r"returned error: \d{3}|not found|not valid|could not read Username|"
                   r"Authentication failed|invalid server response|protocol error",
          env={"GIT_TERMINAL_PROMPT": "0", "GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
          direct_hint=f"{_DIRECT} (git config http.proxy, or an insteadOf to another URL)"),
    Probe("python urllib", "OpenSSL, Python ssl/urllib/httpx, Ruby, Go, uv", _python,
          _py("import urllib.request, urllib.error", _URLLIB), missing_code=3),
    Probe("python requests", "requests", _python, _py("import requests", _REQUESTS),
          missing_code=3, direct_hint=f"{_DIRECT} (requests' trust_env=False, proxies={{}})"),
    Probe("python httpx", "OpenSSL, Python ssl/urllib/httpx, Ruby, Go, uv", _python,
          _py("import httpx", _HTTPX), missing_code=3),
    Probe("pip", "pip", _which("pip"),
          lambda url, d: ["download", "--no-deps", "--no-cache-dir", "--retries", "0",
                          "--timeout", "5", "-vv", "-d", str(d / "pip"), "--index-url", url,
                          "egress-doctor-probe"],
          ok_codes=(), answered=r'"GET [^"]*" \d{3}',
          env={"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_EXTRA_INDEX_URL": "",
               "PIP_FIND_LINKS": ""},
          direct_hint=f"{_DIRECT} (pip.conf: proxy)"),
    Probe("uv", "OpenSSL, Python ssl/urllib/httpx, Ruby, Go, uv", _which("uv"),
          lambda url, d: ["pip", "compile", str(d / "req.in"), "--no-cache", "--no-config",
                          "--index-url", url],
          ok_codes=(), answered=r"Content-Type|No solution found|not found in the package",
          env={"UV_HTTP_RETRIES": "0", "UV_HTTP_TIMEOUT": "5"},
          files={"req.in": "egress-doctor-probe\n"}),
    Probe("node", "Node", _which("node"), lambda url, d: ["-e", _NODE, url],
          direct_hint=_OLD_NODE),
    Probe("npm", "npm", _which("npm"),
          lambda url, d: ["view", "egress-doctor-probe", "--registry", url,
                          "--fetch-retries=0", "--fetch-timeout=5000", "--loglevel", "http"],
          ok_codes=(), answered=r"http fetch GET (?!403)\d{3}",
          direct_hint=f"{_DIRECT} (.npmrc: proxy, https-proxy, noproxy)"),
    Probe("java", "Java", _which("java"), lambda url, d: [str(d / "Probe.java"), url],
          timeout=SLOW_TIMEOUT, files={"Probe.java": _JAVA},
          direct_hint=f"{_DIRECT} (-Djava.net.useSystemProxies, a Proxy.NO_PROXY in code)"),
    Probe("go", "OpenSSL, Python ssl/urllib/httpx, Ruby, Go, uv", _which("go"),
          lambda url, d: ["run", str(d / "probe.go"), url], timeout=SLOW_TIMEOUT,
          files={"probe.go": _GO}),
    Probe("ruby", "OpenSSL, Python ssl/urllib/httpx, Ruby, Go, uv", _which("ruby"),
          lambda url, d: ["-e", _RUBY, url]),
    Probe("cargo", "cargo", _which("cargo"),
          lambda url, d: ["search", "egress-doctor-probe", "--limit", "1", "--index",
                          f"sparse+{url}"],
          ok_codes=(), answered=r"missing field|failed to parse|expected value|"
                                r"failed to get successful HTTP response|status code `\d+",
          env={"CARGO_NET_RETRY": "0", "CARGO_HTTP_TIMEOUT": "5", "CARGO_HOME": "{dir}/cargo"},
          direct_hint=f"{_DIRECT} (~/.cargo/config.toml: http.proxy)"),
)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction, cfg_help: str) -> None:
    p = sub.add_parser(
        "doctor", help="try each client found here through a running egress and say what to fix",
        description="Run each client found on this machine (curl, wget, git, Python urllib/"
        "requests/httpx, pip, uv, node, npm, java, go, ruby, cargo) with the setup of egress "
        "env, through the running egress, against a URL the config allows, and report for "
        "each: works, refused by egress (with the reason code), goes direct (ignores the "
        "proxy), TLS failure (does not trust the egress CA), or not installed, with the change "
        "to make. Loads no secret. Exit codes: 0 every installed client works, 1 some do not "
        "(or no egress answers at the proxy URL), 2 a config or usage error.",
        epilog="example: egress run -c egress.yaml &  egress doctor -c egress.yaml",
    )  # fmt: skip
    p.add_argument("--config", "-c", help=cfg_help)
    p.add_argument(
        "--proxy-url", metavar="URL",
        help="the running proxy (default: http://<listen.host>:<listen.port> of the config)",
    )  # fmt: skip
    p.add_argument(
        "--url", help="the URL each client fetches (default: / of the first exact https host "
        "the config allows)",
    )  # fmt: skip
    p.add_argument("--format", choices=("text", "json"), default="text")


def default_url(cfg: Config) -> str:
    for rule in cfg.rules:
        if rule.host.kind == "name" and "https" in rule.schemes and rule.ports:
            port = 443 if 443 in rule.ports else rule.ports[0]
            return f"https://{rule.host.text}" + ("" if port == 443 else f":{port}") + "/"
    raise DoctorError(
        f"{cfg.path}: no rule under 'allow' names an exact host with https: pass --url"
    )


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DoctorError(f"--url {url!r}: write it as https://HOST[:PORT]/PATH")
    return url


def client_env(cfg: Config, again: Config, proxy_url: str, files_root: Path,
               base: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """The environment ``egress env`` sets up for ``proxy_url``, over ``base`` less the
    variables a secret is read from. Files go under ``files_root``."""
    secret_sources = {s.source.env for s in cfg.secrets if s.source.kind == "env"}
    secret_sources |= {"VAULT_TOKEN", cfg.vault.auth.token_env if cfg.vault else None}
    env = {k: v for k, v in base.items() if k not in secret_sources}
    setup = envcmd.build(cfg, again, proxy_url, {**env, "XDG_STATE_HOME": str(files_root)})
    for name in setup.unset:
        env.pop(name, None)
    env.update(setup.env)
    return env, setup.notes


class DummyProxy:
    """A loopback listener that records whether anything connected, and answers 502."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.contacted = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.contacted.set()
            try:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")  # fmt: skip
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _argv(probe: Probe, url: str, scratch: Path) -> list[str] | None:
    first = probe.find()
    return None if first is None else [*first, *probe.args(url, scratch)]


def _probe_env(probe: Probe, env: Mapping[str, str], scratch: Path) -> dict[str, str]:
    return {**env, **{k: v.format(dir=scratch) for k, v in probe.env.items()}}


def run_client(argv: list[str], env: Mapping[str, str], cwd: Path,
               timeout: float) -> tuple[int | None, str]:  # fmt: skip
    """Run to the end (None: killed at the timeout); stdout and stderr together."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            code = None
        out.seek(0)
        return code, out.read().decode("utf-8", "replace")


def contacts_proxy(argv: list[str], env: Mapping[str, str], cwd: Path, dummy: DummyProxy,
                   timeout: float) -> bool:  # fmt: skip
    """Whether the client, pointed at ``dummy``, connects to it (it is stopped as soon as
    it does)."""
    proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while not dummy.contacted.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
        return dummy.contacted.is_set()
    finally:
        if proc.poll() is None:
            _kill(proc)


def tunnel_reason(proxy_url: str, url: str) -> str | None:
    """egress's own answer to the tunnel for ``url``: the reason code of a refusal, else
    None. For the clients that show only "403" of a refused CONNECT."""
    parts, proxy = urlsplit(url), urlsplit(proxy_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme != "https":
        return None
    try:
        with socket.create_connection((proxy.hostname, proxy.port or 80), timeout=TIMEOUT) as s:
            s.sendall(f"CONNECT {parts.hostname}:{port} HTTP/1.1\r\n"
                      f"Host: {parts.hostname}:{port}\r\n\r\n".encode())  # fmt: skip
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    text = data.decode("latin-1")
    m = _REASON_HEADER.search(text) or _REASON_PHRASE.search(text)
    return m.group(1) if m else None


def proxy_answers(proxy_url: str) -> bool:
    p = urlsplit(proxy_url)
    try:
        socket.create_connection((p.hostname, p.port or 80), timeout=TIMEOUT).close()
    except OSError:
        return False
    return True


def _line(text: str, pattern: re.Pattern[str] | None = None) -> str:
    """The first line matching ``pattern``, else the last line: what the client said."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if pattern is not None and pattern.search(ln)]
    return (hits or lines or [""])[0 if hits else -1][:200]


def _refused_fix(url: str, cfg: Config) -> str:
    config = "" if cfg.path is None or str(cfg.path).startswith("<") else f" -c {cfg.path}"
    return f"if this URL should pass, egress check{config} {url} names the rule to add"


def _table_vars(table: str) -> str:
    for client in CLIENTS:
        if client.name == table:
            names = list(client.env) or {"wget": ["WGETRC"], "Java": ["JAVA_TOOL_OPTIONS"]}.get(
                client.name, []
            )
            return ", ".join(names)
    return ""


def classify(probe: Probe, code: int | None, output: str, direct: bool, tunnel: str | None,
             refused_fix: str = "") -> Result:  # fmt: skip
    name = probe.name
    ca_vars = _table_vars(probe.table)
    m = _REASON_HEADER.search(output) or _REASON_PHRASE.search(output)
    if m and m.group(1) != "null":
        return Result(name, "refused", m.group(1), _line(output, _REASON_PHRASE), refused_fix)
    if direct:
        sets = "the proxy variables" + (f", {ca_vars}" if ca_vars else "")
        return Result(name, "direct", None, f"it never contacted the proxy, though egress env "
                      f"sets {sets} for it", probe.direct_hint or _DIRECT)  # fmt: skip
    if code is not None and code == probe.missing_code:
        return Result(name, "missing", None, "the module is not importable")
    if _TLS.search(output):
        fix = (f"it must trust the egress CA: egress env sets {ca_vars} for it"
               if ca_vars else "it must trust the egress CA")  # fmt: skip
        fix += "; check that nothing of yours overrides it, and that egress run has not "
        fix += "restarted since (a new CA at each start: eval egress env again)"
        return Result(name, "tls", None, _line(output, _TLS), fix)
    answered = code in probe.ok_codes or bool(probe.answered and re.search(probe.answered, output))
    if answered:
        return Result(name, "works")
    if tunnel is not None and _FORBIDDEN.search(output):
        return Result(name, "refused", tunnel, _line(output, _FORBIDDEN), refused_fix)
    why = f"no answer within {probe.timeout:g} s" if code is None else _line(output)
    return Result(name, "fails", None, why, 'run it by hand after eval "$(egress env)"')


def probe_one(probe: Probe, url: str, env: Mapping[str, str], dummy_env: Mapping[str, str],
              dummy: DummyProxy, scratch: Path, tunnel: str | None,
              refused_fix: str = "") -> Result:  # fmt: skip
    here = scratch / re.sub(r"\W", "-", probe.name)
    here.mkdir()
    for fname, text in probe.files.items():
        (here / fname).write_text(text)
    argv = _argv(probe, url, here)
    if argv is None:
        return Result(probe.name, "missing")
    direct = not contacts_proxy(argv, _probe_env(probe, dummy_env, here), here, dummy,
                                probe.timeout)  # fmt: skip
    code, output = run_client(argv, _probe_env(probe, env, here), here, probe.timeout)
    if code == probe.missing_code:
        return Result(probe.name, "missing", None, "the module is not importable")
    return classify(probe, code, output, direct, tunnel, refused_fix)


def diagnose(cfg: Config, again: Config, proxy_url: str, url: str,
             probes: tuple[Probe, ...] | None = None,
             base: Mapping[str, str] | None = None) -> tuple[list[Result], list[str]]:  # fmt: skip
    base = os.environ if base is None else base
    probes = PROBES if probes is None else probes
    with tempfile.TemporaryDirectory(prefix="egress-doctor-") as tmp:
        scratch = Path(tmp)
        env, notes = client_env(cfg, again, proxy_url, scratch / "real", base)
        dummies = [DummyProxy() for _ in probes]
        try:
            dummy_envs = [client_env(cfg, again, d.url, scratch / f"dummy{i}", base)[0]
                          for i, d in enumerate(dummies)]  # fmt: skip
            tunnel, fix = tunnel_reason(proxy_url, url), _refused_fix(url, cfg)
            with ThreadPoolExecutor(POOL) as pool:
                futures = [pool.submit(probe_one, p, url, env, de, d, scratch, tunnel, fix)
                           for p, de, d in zip(probes, dummy_envs, dummies, strict=True)]  # fmt: skip
                results = [f.result() for f in futures]
        finally:
            for d in dummies:
                d.close()
    return results, notes


def render_text(results: list[Result], proxy_url: str, url: str, cfg: Config) -> str:
    lines = [f"egress doctor: proxy {proxy_url}, test URL {url} (config: {cfg.path})"]
    width = max(len(r.client) for r in results) + 2
    for r in results:
        label = LABELS[r.status] + (f": {r.reason}" if r.reason else "")
        lines.append(f"  {r.client:<{width}}{label}")
        pad = " " * (width + 2)
        if r.detail and r.status != "works":
            lines.append(f"{pad}{r.detail}")
        if r.fix:
            lines.append(f"{pad}fix: {r.fix}")
    installed = [r for r in results if r.status != "missing"]
    working = sum(r.status == "works" for r in installed)
    lines.append(f"{working} of {len(installed)} installed clients work")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load_or_default(args.config)
        again = config_mod.load_or_default(args.config)
        proxy_url = (envcmd.check_proxy_url(args.proxy_url) if args.proxy_url
                     else envcmd.proxy_url_of(cfg))  # fmt: skip
        url = check_url(args.url) if args.url else default_url(cfg)
    except EgressError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return 2
    if not proxy_answers(proxy_url):
        print(f"egress: error: nothing listens at {proxy_url}: start egress run first "
              "(or pass --proxy-url)", file=sys.stderr)  # fmt: skip
        return 1
    results, notes = diagnose(cfg, again, proxy_url, url)
    for note in notes:
        print(f"egress: {note}", file=sys.stderr)
    if args.format == "json":
        doc = {"proxy_url": proxy_url, "url": url, "config": str(cfg.path),
               "ok": all(r.status in ("works", "missing") for r in results),
               "clients": [asdict(r) for r in results]}  # fmt: skip
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(render_text(results, proxy_url, url, cfg))
    return 0 if all(r.status in ("works", "missing") for r in results) else 1
