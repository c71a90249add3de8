"""What egress sets up so that common clients go through it with no step of the user's.

One table, CLIENTS: each entry names a client, the variables (and files) egress sets for
it and why. ``egress exec`` applies it to CMD's environment (egress.cli.agent_env) and
``egress env`` prints it for a shell to eval (egress.envcmd). docs/clients.md lists the
same with the test that proves each entry.

Everything here is computed from plain data (the proxy URL, the CA, the config's secrets
and rules, the environment it starts from); only ``write_files`` writes to the disk, and
only ``_netrc`` reads it (the first line of the file NETRC names, to tell egress's own).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from egress.config import Rule, SecretSpec

NO_PROXY_VALUE = "localhost,127.0.0.1,::1"
PROXY_ENV_VARS = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
)
# Variables through which common tools find a CA bundle. The agent gets the egress CA alone:
# every TLS connection it makes goes through the proxy, which verifies upstreams itself.
CA_ENV_VARS = (
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE", "NPM_CONFIG_CAFILE", "CARGO_HTTP_CAINFO",
    "DENO_CERT",
)  # fmt: skip
WGETRC = "wgetrc"
NETRC = "netrc"
# Files written 0600 (the rest are public: a CA certificate, a proxy address).
PRIVATE_FILES = frozenset({NETRC})
NETRC_HEADER = "# Written by egress"
TRUSTSTORE = "egress-truststore.p12"
# Java cannot open a PKCS12 truststore without a password. It guards nothing here (the
# file holds one public certificate), so it is Java's well-known default.
TRUSTSTORE_PASSWORD = "changeit"  # noqa: S105 (not a secret)
# Java's own default for http.nonProxyHosts, which the property replaces.
JAVA_NON_PROXY_HOSTS = "localhost|127.*|[::1]"


@dataclass(frozen=True)
class Target:
    """What clients are set up for."""

    proxy_url: str  # http://host:port
    ca_path: str  # the egress CA certificate (PEM)
    ca_pem: bytes | None  # its content; None when not known (no Java truststore then)
    files_dir: Path  # where the files below go (wgetrc, the truststore)
    secrets: tuple[SecretSpec, ...]  # with the placeholders clients must send
    rules: tuple[Rule, ...]

    @property
    def proxy_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.proxy_url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class Setup:
    env: dict[str, str] = field(default_factory=dict)  # variables to set
    unset: list[str] = field(default_factory=list)  # variables to remove
    files: dict[str, bytes] = field(default_factory=dict)  # file name in files_dir -> content
    notes: list[str] = field(default_factory=list)  # what could not be set up, and why


Builder = Callable[[Target, Mapping[str, str], Setup], None]


@dataclass(frozen=True)
class Client:
    name: str
    env: Mapping[str, str] = field(default_factory=dict)  # {ca}, {proxy}, {no_proxy}, {dir}
    unset: tuple[str, ...] = ()
    build: Builder | None = None  # for what a template cannot say


def _git(t: Target, base: Mapping[str, str], out: Setup) -> None:
    """git reads no token variable, so hand it the placeholder of each secret through a
    credential helper for each exact host the secret is bound to, on every HTTPS port the
    rules allow there. The helpers go in as command-line config (GIT_CONFIG_COUNT, git >=
    2.31), after any the user set. An empty helper first resets the list, so that a helper
    of the user's (a keychain, ``store``) cannot answer with a real token for that URL."""
    entries: list[tuple[str, str]] = []
    for spec in t.secrets:
        if spec.scheme != "static":
            continue  # a signing key id is no git password
        for url in git_urls(spec, t.rules):
            helper = (
                '!f() { test "$1" = get && printf "username=x-access-token\\npassword=%s\\n" '
                f"{shlex.quote(spec.placeholder)}; }}; f"
            )
            entries += [(f"credential.{url}.helper", ""), (f"credential.{url}.helper", helper)]
    if not entries and "GIT_CONFIG_COUNT" not in base:
        return
    ours = {k for k, _ in entries}
    # The user's own entries, in order; a pair whose value egress removed (it held a secret)
    # goes too, since git refuses a count with a value missing. Ours from an earlier
    # `egress env` are replaced, so that evaluating it twice changes nothing.
    try:
        count = int(base.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        count = 0
    kept = [
        (base[f"GIT_CONFIG_KEY_{i}"], base[f"GIT_CONFIG_VALUE_{i}"])
        for i in range(max(count, 0))
        if f"GIT_CONFIG_KEY_{i}" in base and f"GIT_CONFIG_VALUE_{i}" in base
    ]
    kept = [(k, v) for k, v in kept if k not in ours]
    for i, (k, v) in enumerate([*kept, *entries]):
        out.env[f"GIT_CONFIG_KEY_{i}"], out.env[f"GIT_CONFIG_VALUE_{i}"] = k, v
    out.env["GIT_CONFIG_COUNT"] = str(len(kept) + len(entries))
    wild = [s.name for s in t.secrets if any(h.kind != "name" for h in s.hosts)]
    if wild:
        out.notes.append(
            f"git: no credential helper for the wildcard or address hosts of {', '.join(wild)}"
        )


def git_urls(spec: SecretSpec, rules: tuple[Rule, ...]) -> list[str]:
    """``https://host[:port]`` for each exact host name ``spec`` is bound to and each HTTPS
    port the rules allow for it. git matches credential URLs on the port too."""
    urls: list[str] = []
    for host in spec.hosts:
        if host.kind != "name":
            continue  # *.example.com, addresses: no helper (docs/clients.md)
        ports = sorted({p for r in rules if "https" in r.schemes and r.host.matches(host.text)
                        for p in r.ports})  # fmt: skip
        urls += [f"https://{host.text}" + ("" if p == 443 else f":{p}") for p in ports]
    return list(dict.fromkeys(urls))


_JAVA_PROPS = ("https.proxyHost", "https.proxyPort", "http.proxyHost", "http.proxyPort",
               "http.nonProxyHosts", "javax.net.ssl.trustStore", "javax.net.ssl.trustStoreType",
               "javax.net.ssl.trustStorePassword")  # fmt: skip


def _java(t: Target, base: Mapping[str, str], out: Setup) -> None:
    """Java reads no proxy or CA variable: system properties in JAVA_TOOL_OPTIONS (every
    JVM reads it) name the proxy and a PKCS12 truststore holding the egress CA. Appended to
    the user's options, without earlier values of the same properties."""
    host, port = t.proxy_host_port
    props = {"https.proxyHost": host, "https.proxyPort": str(port), "http.proxyHost": host,
             "http.proxyPort": str(port), "http.nonProxyHosts": JAVA_NON_PROXY_HOSTS}  # fmt: skip
    if t.ca_pem is not None:
        out.files[TRUSTSTORE] = java_truststore(t.ca_pem)
        props |= {"javax.net.ssl.trustStore": str(t.files_dir / TRUSTSTORE),
                  "javax.net.ssl.trustStoreType": "PKCS12",
                  "javax.net.ssl.trustStorePassword": TRUSTSTORE_PASSWORD}  # fmt: skip
    mine = "|".join(re.escape(p) for p in _JAVA_PROPS)
    kept = re.sub(rf"(^|\s)-D(?:{mine})=\S*", " ", base.get("JAVA_TOOL_OPTIONS", ""))
    ours = " ".join(f"-D{k}={v}" for k, v in props.items())
    out.env["JAVA_TOOL_OPTIONS"] = " ".join([*kept.split(), ours])


def _wget(t: Target, base: Mapping[str, str], out: Setup) -> None:
    """wget (GnuTLS on Debian) reads no CA variable: a wgetrc names the CA. WGETRC replaces
    ~/.wgetrc (the system wgetrc is still read first)."""
    out.files[WGETRC] = (
        "# Written by egress: wget reads no CA variable, so the CA and the proxy are set here.\n"
        f"ca_certificate = {t.ca_path}\n"
        f"https_proxy = {t.proxy_url}\nhttp_proxy = {t.proxy_url}\n"
        f"no_proxy = {NO_PROXY_VALUE}\nuse_proxy = on\n"
    ).encode()
    out.env["WGETRC"] = str(t.files_dir / WGETRC)


def _netrc(t: Target, base: Mapping[str, str], out: Setup) -> None:
    """requests (and pip, which vendors it), uv and ``curl -n`` read a netrc: NETRC names
    one holding, for each exact host a secret is bound to, ``__token__`` and the secret's
    placeholder. They send it as Basic auth, and egress puts the real token in its place.
    A NETRC of the user's is left as it is (docs/clients.md): it is their choice, and
    copying its entries would put credentials egress cannot vet into a file it hands the
    agent. One written by egress (an earlier ``egress env``) is replaced."""
    mine = str(t.files_dir / NETRC)
    theirs = base.get("NETRC")
    if theirs and theirs != mine and not _written_by_egress(theirs):
        out.notes.append(f"netrc: NETRC is set ({theirs}): left as is, without placeholders")
        return
    text = netrc_text(t.secrets)
    if text is None:
        if theirs:
            out.unset.append("NETRC")  # ours from an earlier egress env, now with nothing
        return
    out.files[NETRC] = text.encode()
    out.env["NETRC"] = mine


def _written_by_egress(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(NETRC_HEADER)
    except OSError:
        return False


def netrc_text(secrets: tuple[SecretSpec, ...]) -> str | None:
    """A netrc with one line per exact host name a secret with ``netrc: true`` is bound to
    (wildcards and addresses have no netrc form); None when there is none. Placeholders
    only."""
    lines: dict[str, str] = {}
    for spec in secrets:
        if not spec.netrc:
            continue  # opt-in: requests would replace a caller's own Authorization there
        if any(c.isspace() or c in "\"'" for c in spec.placeholder):
            continue  # no netrc token can hold it
        for host in spec.hosts:
            # A host bound to two secrets: the first one in the config wins (a netrc has
            # one entry per machine; readers disagree on which of two they take).
            if host.kind == "name" and host.text not in lines:
                lines[host.text] = (
                    f"machine {host.text} login __token__ password {spec.placeholder}"
                )
    if not lines:
        return None
    head = (f"{NETRC_HEADER}: placeholders only, which egress swaps for the real tokens on "
            "the way out.\n")  # fmt: skip
    return head + "".join(line + "\n" for line in lines.values())


CLIENTS: tuple[Client, ...] = (
    # Every client that takes its proxy from the environment (curl, Python, Go, Ruby, git's
    # libcurl, pip, uv, npm, cargo, wget; Node with NODE_USE_ENV_PROXY). Both spellings: curl
    # reads only the lower-case http_proxy, some tools only upper case.
    Client(
        "proxy variables",
        {v: "{proxy}" for v in PROXY_ENV_VARS}
        | {"NO_PROXY": "{no_proxy}", "no_proxy": "{no_proxy}"},
    ),  # fmt: skip
    # OpenSSL's default paths (Python's ssl, urllib, httpx; Ruby), Go's crypto/x509 on Linux
    # and uv (rustls) all take SSL_CERT_FILE in place of the system roots. SSL_CERT_DIR would
    # add the system roots back: the agent trusts the egress CA alone.
    Client(
        "OpenSSL, Python ssl/urllib/httpx, Ruby, Go, uv",
        {"SSL_CERT_FILE": "{ca}"},
        unset=("SSL_CERT_DIR",),
    ),  # fmt: skip
    # requests uses certifi's bundle unless told otherwise; it ignores SSL_CERT_FILE.
    Client("requests", {"REQUESTS_CA_BUNDLE": "{ca}"}),
    # curl built on OpenSSL reads SSL_CERT_FILE too, but not every build does.
    Client("curl", {"CURL_CA_BUNDLE": "{ca}"}),
    # git uses libcurl with its own CA option; it takes the proxy from https_proxy.
    Client("git", {"GIT_SSL_CAINFO": "{ca}"}, build=_git),
    # pip vendors requests and certifi: PIP_CERT is its --cert.
    Client("pip", {"PIP_CERT": "{ca}"}),
    # Node adds NODE_EXTRA_CA_CERTS to its bundled roots. NODE_USE_ENV_PROXY=1 makes fetch
    # (Node >= 24.0 / 22.21) and the http/https modules (later releases) use HTTPS_PROXY;
    # older Node ignores it, and every proxy variable (docs/clients.md).
    Client("Node", {"NODE_EXTRA_CA_CERTS": "{ca}", "NODE_USE_ENV_PROXY": "1"}),
    # npm reads HTTPS_PROXY too, but its own settings win over it: set them as well.
    Client(
        "npm",
        {
            "NPM_CONFIG_CAFILE": "{ca}",
            "NPM_CONFIG_PROXY": "{proxy}",
            "NPM_CONFIG_HTTPS_PROXY": "{proxy}",
        },
    ),  # fmt: skip
    # cargo's http.cainfo and http.proxy, as variables.
    Client("cargo", {"CARGO_HTTP_CAINFO": "{ca}", "CARGO_HTTP_PROXY": "{proxy}"}),
    # The AWS CLI and SDKs (botocore) use their own bundle.
    Client("AWS CLI / SDKs", {"AWS_CA_BUNDLE": "{ca}"}),
    # Deno's --cert.
    Client("Deno", {"DENO_CERT": "{ca}"}),
    Client("wget", build=_wget),
    # requests, pip, uv, curl -n: a netrc with each bound host's placeholder. git ignores
    # NETRC: it has its helpers above.
    Client("netrc: requests, pip, uv, curl -n", build=_netrc),
    Client("Java", build=_java),
)


def client_setup(t: Target, base: Mapping[str, str]) -> Setup:
    """The setup of every client in CLIENTS for ``t``, starting from environment ``base``."""
    out = Setup()
    values = {"ca": t.ca_path, "proxy": t.proxy_url, "no_proxy": NO_PROXY_VALUE,
              "dir": str(t.files_dir)}  # fmt: skip
    for client in CLIENTS:
        for var, template in client.env.items():
            out.env[var] = template.format(**values)
        out.unset += client.unset
        if client.build is not None:
            client.build(t, base, out)
    return out


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write the setup's files, each atomically: 0600 those of PRIVATE_FILES (the netrc;
    it holds placeholders only, but is a credentials file), 0644 the others (public: a CA
    certificate, a proxy address)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        mode = 0o600 if name in PRIVATE_FILES else 0o644
        tmp = directory / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, directory / name)


# A PKCS12 truststore, written out in DER. cryptography before 45 cannot mark a
# certificate as trusted the way Java needs (the Oracle trustedKeyUsage bag attribute;
# without it Java loads an empty store), and egress supports cryptography 42 and later.
# Certificates stay unencrypted (nothing in it is secret); the MAC (HMAC-SHA1, which every
# JDK reads) is only there because Java expects one when a password is given.
_DATA, _CERT_BAG, _X509 = "1.2.840.113549.1.7.1", "1.2.840.113549.1.12.10.1.3", "1.2.840.113549.1.9.22.1"  # fmt: skip
_FRIENDLY_NAME, _SHA1 = "1.2.840.113549.1.9.20", "1.3.14.3.2.26"
_JAVA_TRUSTED, _ANY_USAGE = "2.16.840.1.113894.746875.1.1", "2.5.29.37.0"


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def _set(*parts: bytes) -> bytes:
    return _der(0x31, b"".join(sorted(parts)))  # DER: SET OF in sorted order


def _int(n: int) -> bytes:
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(x) for x in dotted.split("."))
    body = bytearray([40 * first + second])
    for n in rest:
        chunk = [n & 0x7F]
        while n := n >> 7:
            chunk.append(0x80 | (n & 0x7F))
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _mac_key(password: str, salt: bytes, iterations: int) -> bytes:
    """The MAC key of RFC 7292 appendix B.2 (ID 3) with SHA-1: one block of 20 bytes."""
    v = 64

    def fill(data: bytes) -> bytes:
        n = v * -(-len(data) // v)
        return (data * (n // len(data) + 1))[:n]

    a = bytes([3]) * v + fill(salt) + fill((password + "\0").encode("utf-16-be"))
    for _ in range(iterations):
        a = hashlib.sha1(a).digest()  # noqa: S324 (PKCS12's MAC key derivation)
    return a


def java_truststore(ca_pem: bytes, password: str = TRUSTSTORE_PASSWORD) -> bytes:
    """A PKCS12 truststore with the certificate of ``ca_pem`` as a trusted entry."""
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(Encoding.DER)
    attributes = _set(
        _seq(_oid(_FRIENDLY_NAME), _set(_der(0x1E, "egress-ca".encode("utf-16-be")))),
        _seq(_oid(_JAVA_TRUSTED), _set(_oid(_ANY_USAGE))),
    )
    bag = _seq(_oid(_CERT_BAG), _der(0xA0, _seq(_oid(_X509), _der(0xA0, _der(0x04, der)))),
               attributes)  # fmt: skip
    auth_safe = _seq(_seq(_oid(_DATA), _der(0xA0, _der(0x04, _seq(bag)))))
    salt, iterations = os.urandom(20), 2048
    mac = hmac.new(_mac_key(password, salt, iterations), auth_safe, hashlib.sha1).digest()
    mac_data = _seq(_seq(_seq(_oid(_SHA1), b"\x05\x00"), _der(0x04, mac)), _der(0x04, salt),
                    _int(iterations))  # fmt: skip
    return _seq(_int(3), _seq(_oid(_DATA), _der(0xA0, _der(0x04, auth_safe))), mac_data)
