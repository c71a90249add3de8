"""Real clients through ``egress exec`` and ``egress env`` with no setup of their own: each
must reach a loopback stand-in of a real service, which receives the real credential, while
the client only ever holds the placeholder (docs/clients.md lists what each one needs)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from egress import config as config_mod
from egress.clients import (
    CA_ENV_VARS,
    NETRC,
    TRUSTSTORE_PASSWORD,
    Setup,
    Target,
    client_setup,
    java_truststore,
    netrc_text,
    write_files,
)
from tests.canary import OUTPUTS
from tests.conftest import (
    API,
    SECRET,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"
PKG = "egress-demo"
WHEEL = "egress_demo-1.0-py3-none-any.whl"


# --- A service behind auth: git smart HTTP and a PEP 503 index ------------------------------


def _wheel() -> bytes:
    files = {
        "egress_demo/__init__.py": b"",
        "egress_demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: egress-demo\nVersion: 1.0\n",
        "egress_demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: egress-test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }  # fmt: skip
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()] + ["egress_demo-1.0.dist-info/RECORD,,"]  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in [*files.items(), ("egress_demo-1.0.dist-info/RECORD", "\n".join(record).encode())]:  # fmt: skip
            z.writestr(name, data)
    return buf.getvalue()


class _Service(BaseHTTPRequestHandler):
    """/git/<repo>: git http-backend as CGI; /public/ and /private/: a PEP 503 index. /git/ and
    /private/ require Basic auth whose password is the real token."""

    protocol_version = "HTTP/1.1"
    server: ServiceServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        body = self._body()
        auth = self.headers.get("authorization", "")
        with self.server.lock:
            self.server.seen.append((self.command, self.path, auth))
        area, _, rest = self.path[1:].partition("/")
        if area in ("git", "private") and _basic_password(auth) != SECRET:
            return self._send(401, b"log in\n", {"www-authenticate": 'Basic realm="egress-test"'})
        if area == "git":
            return self._git("/" + rest, body)
        if area in ("public", "private") and rest == f"simple/{PKG}/":
            link = f"/{area}/files/{WHEEL}#sha256={hashlib.sha256(self.server.wheel).hexdigest()}"
            page = f'<!DOCTYPE html><html><body><a href="{link}">{WHEEL}</a></body></html>'
            return self._send(200, page.encode(), {"content-type": "text/html"})
        if area in ("public", "private") and rest == f"files/{WHEEL}":
            return self._send(200, self.server.wheel, {"content-type": "application/octet-stream"})
        self._send(404, b"not found\n")

    def _git(self, path: str, body: bytes) -> None:
        path_info, _, query = path.partition("?")
        env = {"PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": str(self.server.git_root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path_info,
               "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("content-type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "agent",
               "HTTP_CONTENT_ENCODING": self.headers.get("content-encoding", ""),
               "GIT_PROTOCOL": self.headers.get("git-protocol", "")}  # fmt: skip
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                             timeout=30).stdout  # fmt: skip
        head, _, payload = (
            out.partition(b"\r\n\r\n") if b"\r\n\r\n" in out else out.partition(b"\n\n")
        )
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers[k.strip()] = v.strip()
        self._send(status, payload, headers)


def _basic_credentials(auth: str) -> str:
    """user:password of a Basic Authorization header; "" for any other."""
    scheme, _, token = auth.partition(" ")
    return base64.b64decode(token).decode() if scheme.lower() == "basic" else ""


def _basic_password(auth: str) -> str | None:
    return _basic_credentials(auth).partition(":")[2] or None


class ServiceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext, git_root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Service)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.git_root = git_root
        self.wheel = _wheel()
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str]] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def requests_to(self, prefix: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [r for r in self.seen if r[1].startswith(prefix)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA) -> Iterator[ServiceServer]:  # fmt: skip
    if shutil.which("git") is None:
        pytest.skip("needs git")
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README").write_text("hello from the git server\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert(API).configure_cert(ctx)
    server = ServiceServer(ctx, root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _config(tmp: Path, ca_file: Path, upstream: Upstream, service: ServiceServer,
            **changes: Any) -> dict[str, Any]:  # fmt: skip
    cfg = base_config(tmp, ca_file, upstream.port)
    cfg["allow"].append({"host": API, "ports": [service.port]})
    cfg.update(changes)
    return cfg


@pytest.fixture
def cfg(tmp_path: Path, test_ca_file: Path, upstream: Upstream, service: ServiceServer) -> Path:
    return write_config(tmp_path, _config(tmp_path, test_ca_file, upstream, service))


@pytest.fixture
def index_cfg(
    tmp_path: Path, test_ca_file: Path, upstream: Upstream, service: ServiceServer
) -> Path:
    """api_token is a package index's token: netrc: true puts its placeholder in the netrc."""
    data = _config(tmp_path, test_ca_file, upstream, service)
    data["secrets"][0]["netrc"] = True
    return write_config(tmp_path, data)


def run_exec(cfg: Path, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
    home = cfg.parent / "home"
    home.mkdir(exist_ok=True)
    env = proxy_env(HOME=str(home), PY=sys.executable, GIT_TERMINAL_PROMPT="0", **extra)
    out = subprocess.run(egress_cmd("exec", "--config", str(cfg), "--", "sh", "-c", script),
                         capture_output=True, text=True, env=env, cwd=cfg.parent, timeout=120)  # fmt: skip
    audit = cfg.parent / "audit.jsonl"
    OUTPUTS.append(audit)
    assert_no_secret(out.stdout, out.stderr, audit.read_text() if audit.exists() else "")
    return out


# --- Clients that send a token in a header ---------------------------------------------------

FETCH_JAVA = """
import java.net.*; import java.net.http.*; import java.io.*;
public class Fetch { public static void main(String[] a) throws Exception {
  String auth = "Bearer " + System.getenv("API_TOKEN");
  // HttpClient with no proxy of its own: the default ProxySelector, from https.proxyHost.
  HttpResponse<String> r = HttpClient.newHttpClient().send(
      HttpRequest.newBuilder(URI.create(a[0] + "/java-httpclient")).header("Authorization", auth).build(),
      HttpResponse.BodyHandlers.ofString());
  System.out.println(r.body());
  HttpURLConnection c = (HttpURLConnection) new URL(a[0] + "/java-urlconnection").openConnection();
  c.setRequestProperty("Authorization", auth);
  System.out.println(new String(c.getInputStream().readAllBytes()));
}}
"""

PY_GET = {
    "requests": "import os, requests; print(requests.get(os.environ['URL'] + '/requests', "
    "headers={'Authorization': 'Bearer ' + os.environ['API_TOKEN']}).text)",
    "httpx": "import os, httpx; print(httpx.get(os.environ['URL'] + '/httpx', "
    "headers={'Authorization': 'Bearer ' + os.environ['API_TOKEN']}).text)",
    "urllib": "import os, urllib.request as u; print(u.urlopen(u.Request(os.environ['URL'] + "
    "'/urllib', headers={'Authorization': 'Bearer ' + os.environ['API_TOKEN']})).read().decode())",
}
# (client, program it needs, script, paths the upstream must receive)
HEADER_CLIENTS = [
    ("curl", "curl", 'curl -sS --fail-with-body -H "Authorization: Bearer $API_TOKEN" "$URL/curl"', ["/curl"]),
    ("requests", None, f'"$PY" -c {shlex.quote(PY_GET["requests"])}', ["/requests"]),
    ("httpx", None, f'"$PY" -c {shlex.quote(PY_GET["httpx"])}', ["/httpx"]),
    ("urllib", None, f'"$PY" -c {shlex.quote(PY_GET["urllib"])}', ["/urllib"]),
    ("wget", "wget", 'wget -q -O - --header "Authorization: Bearer $API_TOKEN" "$URL/wget"', ["/wget"]),
    ("java", "java", 'java Fetch.java "$URL"', ["/java-httpclient", "/java-urlconnection"]),
]  # fmt: skip


@pytest.mark.parametrize(("client", "needs", "script", "paths"), HEADER_CLIENTS,
                         ids=[c[0] for c in HEADER_CLIENTS])  # fmt: skip
def test_client_through_exec(
    cfg: Path, upstream: Upstream, client: str, needs: str | None, script: str, paths: list[str]
) -> None:
    if needs and shutil.which(needs) is None:
        pytest.skip(f"{needs} is not installed (.ci/run installs it)")
    (cfg.parent / "Fetch.java").write_text(FETCH_JAVA)
    r = run_exec(cfg, script, URL=f"https://{API}:{upstream.port}")
    assert r.returncode == 0, r.stderr
    assert sorted(q.path for q in upstream.requests) == sorted(paths)
    for q in upstream.requests:
        assert q.headers["authorization"] == f"Bearer {SECRET}"
    # What the client got back (the echo of its request) holds the placeholder alone.
    echoes = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [e["headers"]["authorization"] for e in echoes] == [f"Bearer {PH}"] * len(paths)


def test_node_fetch(cfg: Path, upstream: Upstream) -> None:
    """exec sets NODE_USE_ENV_PROXY=1: Node >= 24 (and 22.21+) sends fetch through egress.
    Older Node ignores it and every proxy variable: its fetch goes direct, which for a name
    only egress can resolve fails. This asserts whichever is true of the node installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    js = ("fetch(process.env.URL + '/node', {headers: {authorization: 'Bearer ' + process.env.API_TOKEN}})"
          ".then(r => r.text()).then(t => console.log(t), e => { console.log('ERR ' + (e.cause?.code ?? e.message)); process.exit(3) })")  # fmt: skip
    r = run_exec(cfg, f"node -e {shlex.quote(js)}", URL=f"https://{API}:{upstream.port}")
    if major >= 24 or (major == 22 and minor >= 21):
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["headers"]["authorization"] == f"Bearer {PH}"
        assert [q.headers["authorization"] for q in upstream.requests] == [f"Bearer {SECRET}"]
    elif major <= 22:
        # Honest outcome: Node's fetch ignored the proxy and looked the name up itself:
        # unisolated the name is not found; isolated (the default where the kernel allows
        # it) no resolver is reachable from the sandbox's network namespace.
        from egress.isolate import unsupported_reason

        code = "ENOTFOUND" if unsupported_reason() is not None else "EAI_AGAIN"
        assert r.returncode == 3 and f"ERR {code}" in r.stdout, r.stdout + r.stderr
        assert upstream.requests == []
    else:
        pytest.skip(f"node {version}: whether it reads NODE_USE_ENV_PROXY is not known here")


# --- git: no token variable, a credential helper per bound host -------------------------------


def _git_auth_sent(stderr: str) -> list[str]:
    """The Basic credentials git sent, from its curl trace."""
    return [base64.b64decode(m).decode() for m in re.findall(r"Authorization: Basic (\S+)", stderr)]


def test_git_clone_with_no_setup(cfg: Path, service: ServiceServer) -> None:
    """git reads no token variable. Under exec it clones from a server that wants the real
    token, with nothing set up by the test; it sent the placeholder, the server got the token.
    A credential helper of the user's (that would answer first) and a GIT_CONFIG_COUNT entry
    of the user's are both there: the first is overridden for the bound host, the second kept."""
    home = cfg.parent / "home"
    home.mkdir(exist_ok=True)
    (home / ".gitconfig").write_text(
        '[credential]\n\thelper = "!f() { echo username=u; echo password=users-own; }; f"\n'
    )
    url = f"https://{API}:{service.port}/git/repo.git"
    script = f"git clone -q {url} clone && cat clone/README && git config user.name"
    r = run_exec(cfg, script, GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="user.name",
                 GIT_CONFIG_VALUE_0="kept", GIT_TRACE_CURL="1", GIT_TRACE_CURL_NO_DATA="1",
                 GIT_TRACE_REDACT="0")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "hello from the git server\nkept\n"
    # What git sent (from its curl trace): the placeholder only.
    assert set(_git_auth_sent(r.stderr)) == {f"x-access-token:{PH}"}
    # What the server got: the real token.
    got = {_basic_credentials(a) for _, _, a in service.requests_to("/git/")}
    assert got == {"", f"x-access-token:{SECRET}"}  # "": the first request, before the 401
    config = (cfg.parent / "clone" / ".git" / "config").read_text()
    assert SECRET not in config and PH not in config


# --- pip, uv, curl -n: the placeholder comes from egress's netrc ------------------------------


def test_pip_download_from_an_index(index_cfg: Path, service: ServiceServer) -> None:
    """pip needs no setup for a public index, nor for one behind auth: the index URL holds no
    credentials, pip takes __token__ and the placeholder from the netrc NETRC names, and the
    index gets the real token. curl reads the same file with --netrc-file."""
    base = f"{API}:{service.port}"
    pip = '"$PY" -m pip download -q --no-deps --no-cache-dir --disable-pip-version-check'
    script = (f"{pip} -d public --index-url https://{base}/public/simple/ {PKG} && "
              f"PIP_INDEX_URL=https://{base}/private/simple/ {pip} -d private {PKG} && "
              f'curl -sS --fail-with-body --netrc-file "$NETRC" https://{base}/private/simple/{PKG}/')  # fmt: skip
    r = run_exec(index_cfg, script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert WHEEL in r.stdout  # curl's page
    assert (index_cfg.parent / "public" / WHEEL).read_bytes() == service.wheel
    assert (index_cfg.parent / "private" / WHEEL).read_bytes() == service.wheel
    # The netrc is per host: /public/ may get the token too; the placeholder never arrives.
    assert all(_basic_password(a) in (None, SECRET) for _, _, a in service.requests_to("/public/"))
    private = service.requests_to("/private/")
    assert {p for _, p, _ in private} >= {f"/private/simple/{PKG}/", f"/private/files/{WHEEL}"}
    assert any(_basic_credentials(a) == f"__token__:{SECRET}" for _, _, a in private)
    assert all(_basic_password(a) in (None, SECRET) for _, _, a in private)


def test_uv_install_from_an_index(index_cfg: Path, service: ServiceServer) -> None:
    """uv (rustls) trusts the egress CA through SSL_CERT_FILE, takes HTTPS_PROXY, and reads
    the placeholder from NETRC, as pip does: the index URL holds no credentials."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed (pip install uv)")
    base = f"{API}:{service.port}"
    uv = '"uv" pip install -q --no-cache --python "$PY" --no-deps'
    script = (f"{uv} --target public --index-url https://{base}/public/simple/ {PKG} && "
              f"UV_INDEX_URL=https://{base}/private/simple/ {uv} --target private {PKG}")  # fmt: skip
    r = run_exec(index_cfg, script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (index_cfg.parent / "public" / "egress_demo" / "__init__.py").exists()
    assert (index_cfg.parent / "private" / "egress_demo" / "__init__.py").exists()
    assert all(_basic_password(a) in (None, SECRET) for _, _, a in service.requests_to("/public/"))
    private = service.requests_to("/private/")
    assert any(_basic_credentials(a) == f"__token__:{SECRET}" for _, _, a in private)


# --- What exec sets, as data ------------------------------------------------------------------


def _setup(
    tmp: Path, cfg: dict[str, Any], base: dict[str, str], ca_pem: bytes | None = None
) -> Setup:
    loaded = config_mod.load(str(write_config(tmp, cfg)))
    target = Target("http://127.0.0.1:8080", str(tmp / "ca.pem"), ca_pem, tmp / "files",
                    loaded.secrets, loaded.rules)  # fmt: skip
    return client_setup(target, base)


def test_git_config_entries(tmp_path: Path, test_ca_file: Path) -> None:
    """The user's GIT_CONFIG_* entries are kept, in order, before egress's; a pair whose value
    egress removed (it held a secret) goes as a whole; egress's own are not repeated when
    the environment already has them (egress env evaluated twice); a secret bound by
    wildcard gets no helper."""
    cfg = base_config(tmp_path, test_ca_file, 8443)
    cfg["allow"].append({"host": "*.wild.test"})
    cfg["secrets"][1]["hosts"] = ["*.wild.test"]
    base = {"GIT_CONFIG_COUNT": "3", "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "1",
            "GIT_CONFIG_KEY_1": "http.extraHeader", "GIT_CONFIG_KEY_2": "c.d", "GIT_CONFIG_VALUE_2": "2"}  # fmt: skip
    out = _setup(tmp_path, cfg, base)
    pairs = [(out.env[f"GIT_CONFIG_KEY_{i}"], out.env[f"GIT_CONFIG_VALUE_{i}"])
             for i in range(int(out.env["GIT_CONFIG_COUNT"]))]  # fmt: skip
    key = f"credential.https://{API}:8443.helper"
    assert pairs[:3] == [("a.b", "1"), ("c.d", "2"), (key, "")]
    assert len(pairs) == 4 and pairs[3][0] == key and PH in pairs[3][1]
    assert "other_token" in " ".join(out.notes)  # the wildcard-bound secret: no helper
    again = _setup(tmp_path, cfg, {**base, **out.env})
    assert {k: v for k, v in again.env.items() if k.startswith("GIT_")} == {
        k: v for k, v in out.env.items() if k.startswith("GIT_")
    }


def test_netrc_entries(tmp_path: Path, test_ca_file: Path) -> None:
    """One line per exact host a secret is bound to, with its placeholder (the first secret
    for a host bound to two); no wildcard or address; mode 0600. A NETRC of the user's is
    left as it is; one egress wrote (egress env evaluated before) is replaced."""
    import netrc

    cfg = base_config(tmp_path, test_ca_file, 8443)
    cfg["allow"] += [{"host": "*.wild.test"}, {"host": "pypi.example"}, {"host": "10.0.0.0/8"}]
    cfg["secrets"][0]["hosts"] = [API, "pypi.example"]
    cfg["secrets"][1]["hosts"] = ["*.wild.test", "pypi.example", "10.0.0.0/8"]
    # Opt-in per secret: without netrc: true, no line (requests would replace a caller's
    # own Authorization header on that host).
    loaded = config_mod.load(str(write_config(tmp_path, cfg)))
    assert netrc_text(loaded.secrets) is None
    cfg["secrets"][0]["netrc"] = cfg["secrets"][1]["netrc"] = True
    loaded = config_mod.load(str(write_config(tmp_path, cfg)))
    text = netrc_text(loaded.secrets)
    assert text is not None and text.startswith("# Written by egress")
    assert text.splitlines()[1:] == [
        f"machine {API} login __token__ password {PH}",
        f"machine pypi.example login __token__ password {PH}",
    ]
    assert SECRET not in text and "wild" not in text and "10.0.0" not in text
    out = _setup(tmp_path, cfg, {})
    path = tmp_path / "files" / NETRC
    assert out.env["NETRC"] == str(path) and out.files[NETRC] == text.encode()
    write_files(path.parent, out.files)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (path.parent / "wgetrc").stat().st_mode & 0o777 == 0o644
    parsed = netrc.netrc(str(path))
    assert parsed.authenticators("pypi.example") == ("__token__", None, PH) or \
        parsed.authenticators("pypi.example") == ("__token__", "", PH)  # fmt: skip
    # egress env evaluated twice: NETRC names our file, which is replaced.
    assert _setup(tmp_path, cfg, {"NETRC": str(path)}).env["NETRC"] == str(path)
    theirs = tmp_path / "their-netrc"
    theirs.write_text("machine other.example login me password x\n")
    kept = _setup(tmp_path, cfg, {"NETRC": str(theirs)})
    assert "NETRC" not in kept.env and NETRC not in kept.files
    assert any("NETRC is set" in n for n in kept.notes)
    # No exact host: no file, and no NETRC.
    cfg["secrets"][0]["hosts"] = ["*.wild.test"]
    cfg["secrets"][1]["hosts"] = ["*.wild.test"]
    assert "NETRC" not in _setup(tmp_path, cfg, {}).env


def test_java_options_and_truststore(
    tmp_path: Path, test_ca: trustme.CA, test_ca_file: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12

    cfg = base_config(tmp_path, test_ca_file, 8443)
    base = {"JAVA_TOOL_OPTIONS": "-Xmx64m -Dhttps.proxyHost=old.example -Dfoo=bar"}
    out = _setup(tmp_path, cfg, base, test_ca.cert_pem.bytes())
    opts = out.env["JAVA_TOOL_OPTIONS"].split()
    assert opts[:2] == ["-Xmx64m", "-Dfoo=bar"] and "-Dhttps.proxyHost=127.0.0.1" in opts
    assert "-Dhttps.proxyHost=old.example" not in opts and "-Dhttps.proxyPort=8080" in opts
    assert f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}" in opts
    store = pkcs12.load_pkcs12(out.files["egress-truststore.p12"], TRUSTSTORE_PASSWORD.encode())
    assert [c.certificate for c in store.additional_certs] == [
        x509.load_pem_x509_certificate(test_ca.cert_pem.bytes())
    ]
    with pytest.raises(ValueError):  # the MAC is checked
        pkcs12.load_pkcs12(java_truststore(test_ca.cert_pem.bytes()), b"wrong")
    assert all(out.env[v] == str(tmp_path / "ca.pem") for v in CA_ENV_VARS)
    assert out.unset == ["SSL_CERT_DIR"]


# --- egress env -----------------------------------------------------------------------------


def egress_env(cfg: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(egress_cmd("env", "--config", str(cfg), *args), capture_output=True,
                          text=True, env=env, timeout=60)  # fmt: skip


def parse_exports(text: str) -> tuple[dict[str, str], list[str]]:
    env, unset = {}, []
    for line in text.splitlines():
        words = shlex.split(line)
        if words[0] == "unset":
            unset += words[1:]
        else:
            assert words[0] == "export" and len(words) == 2, line
            k, _, v = words[1].partition("=")
            env[k] = v
    return env, unset


def test_env_prints_the_exec_setup(tmp_path: Path, test_ca: trustme.CA, test_ca_file: Path) -> None:
    raw = base_config(tmp_path, test_ca_file, 8443)
    raw["listen"]["port"] = 18080
    cfg = write_config(tmp_path, raw)
    env = proxy_env(XDG_STATE_HOME=str(tmp_path / "state"), JAVA_TOOL_OPTIONS="-Xmx64m",
                    GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="user.name", GIT_CONFIG_VALUE_0="me")  # fmt: skip
    r = egress_env(cfg, env=env)
    assert r.returncode == 0, r.stderr
    assert_no_secret(r.stdout, r.stderr)
    out, unset = parse_exports(r.stdout)
    ca = str(tmp_path / "agent" / "egress-ca.pem")
    assert (
        out["HTTPS_PROXY"]
        == out["http_proxy"]
        == out["EGRESS_PROXY_URL"]
        == "http://127.0.0.1:18080"
    )
    assert all(out[v] == ca for v in CA_ENV_VARS) and unset == ["SSL_CERT_DIR"]
    assert out["API_TOKEN"] == PH and out["OTHER_TOKEN"] == "sk-EGRESSPLACEHOLDEROTHER0000"
    assert (out["GIT_CONFIG_COUNT"], out["GIT_CONFIG_KEY_0"], out["GIT_CONFIG_VALUE_0"]) == (
        "5",
        "user.name",
        "me",
    )
    assert (
        out["GIT_CONFIG_KEY_2"] == f"credential.https://{API}:8443.helper"
        and PH in out["GIT_CONFIG_VALUE_2"]
    )
    wgetrc = Path(out["WGETRC"])
    assert (
        wgetrc.is_relative_to(tmp_path / "state" / "egress")
        and f"ca_certificate = {ca}\n" in wgetrc.read_text()
    )
    # No CA yet (egress run has not started): no truststore, and egress says so.
    assert (
        "trustStore" not in out["JAVA_TOOL_OPTIONS"] and "does not hold a certificate" in r.stderr
    )
    assert out["JAVA_TOOL_OPTIONS"].startswith(
        "-Xmx64m -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=18080"
    )
    # With the CA there, a truststore holds it; evaluating the output twice changes nothing.
    Path(ca).parent.mkdir(parents=True, exist_ok=True)
    Path(ca).write_bytes(test_ca.cert_pem.bytes())
    r2 = egress_env(cfg, env={**env, **out})
    again, _ = parse_exports(r2.stdout)
    java = "JAVA_TOOL_OPTIONS"
    assert {k: v for k, v in again.items() if k != java} == {
        k: v for k, v in out.items() if k != java
    }
    store = re.search(r"-Djavax\.net\.ssl\.trustStore=(\S+)", again["JAVA_TOOL_OPTIONS"])
    assert store and Path(store.group(1)).parent == wgetrc.parent
    assert again["JAVA_TOOL_OPTIONS"].count("-Dhttps.proxyHost=") == 1
    fish = egress_env(cfg, "--shell", "fish", env=env)
    assert "set -e SSL_CERT_DIR\n" in fish.stdout and f"set -gx API_TOKEN '{PH}'\n" in fish.stdout
    assert 'printf "username=x-access-token\\\\npassword=%s\\\\n"' in fish.stdout  # \ doubled


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        ({}, [], "listen.port is 0 (a free port, chosen at start): pass --proxy-url"),
        ({}, ["--proxy-url", "https://127.0.0.1:1"], "write it as http://HOST:PORT"),
        ({"listen": {"host": "127.0.0.1", "port": 8080, "mode": "transparent"}}, [], "transparent"),
    ],
)
def test_env_refuses(tmp_path: Path, test_ca_file: Path, change: dict[str, Any], args: list[str],
                     message: str) -> None:  # fmt: skip
    cfg = write_config(tmp_path, {**base_config(tmp_path, test_ca_file, 8443), **change})
    r = egress_env(cfg, *args, env=proxy_env(XDG_STATE_HOME=str(tmp_path / "state")))
    assert r.returncode == 2 and r.stdout == "" and message in r.stderr, r.stderr


def test_env_next_to_a_running_proxy(
    tmp_path: Path, test_ca_file: Path, upstream: Upstream, service: ServiceServer
) -> None:
    """eval "$(egress env)" in a shell that holds no secret, next to egress run: curl and git
    go through the proxy with placeholders only. The secret's placeholder is drawn at the
    proxy's start (placeholder: auto): egress env takes it from the agent.dir env file."""
    raw = _config(tmp_path, test_ca_file, upstream, service, agent={"dir": str(tmp_path / "agent")})
    raw["secrets"][0]["placeholder"] = "auto"
    cfg = write_config(tmp_path, raw)
    proxy = start_proxy(cfg, tmp_path)
    try:
        banner = proxy.stderr_path.read_text()
        placeholder = re.search(r"API_TOKEN=(\S+)", banner)
        assert placeholder, banner
        shell_env = {k: v for k, v in proxy_env(HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"),
                                                GIT_TERMINAL_PROMPT="0").items() if k != "EGRESS_TEST_API_TOKEN"}  # fmt: skip
        env_cmd = shlex.join(egress_cmd("env", "--config", str(cfg), "--proxy-url", proxy.url))
        script = (f'eval "$({env_cmd})" && echo "token=$API_TOKEN" && '
                  f'curl -sS --fail-with-body -H "Authorization: Bearer $API_TOKEN" https://{API}:{upstream.port}/env-curl && echo && '
                  f"git clone -q https://{API}:{service.port}/git/repo.git clone && cat clone/README")  # fmt: skip
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=shell_env,
                           cwd=tmp_path, timeout=120)  # fmt: skip
    finally:
        assert proxy.stop() == 0
    assert r.returncode == 0, r.stdout + r.stderr + proxy.stderr_path.read_text()
    assert_no_secret(r.stdout, r.stderr, proxy.outputs())
    lines = r.stdout.splitlines()
    assert lines[0] == f"token={placeholder.group(1)}"
    assert json.loads(lines[1])["headers"]["authorization"] == f"Bearer {placeholder.group(1)}"
    assert [q.headers["authorization"] for q in upstream.requests] == [f"Bearer {SECRET}"]
    assert lines[2] == "hello from the git server"
    assert any(_basic_password(a) == SECRET for _, p, a in service.requests_to("/git/"))


def test_env_leaves_out_a_placeholder_it_cannot_know(tmp_path: Path, test_ca_file: Path) -> None:
    raw = base_config(tmp_path, test_ca_file, 8443)
    raw["secrets"][0]["placeholder"] = "auto"
    cfg = write_config(tmp_path, raw)
    r = egress_env(cfg, "--proxy-url", "http://127.0.0.1:1",
                   env=proxy_env(XDG_STATE_HOME=str(tmp_path / "state")))  # fmt: skip
    assert r.returncode == 0, r.stderr
    out, _ = parse_exports(r.stdout)
    assert "API_TOKEN" not in out and out["OTHER_TOKEN"] == "sk-EGRESSPLACEHOLDEROTHER0000"
    assert "secret api_token: left out (placeholder: auto" in r.stderr
    assert not any(k.startswith("GIT_CONFIG_KEY") and API in v for k, v in out.items())
