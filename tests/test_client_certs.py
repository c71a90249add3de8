"""Agents known by their TLS client certificates (identity.client_certificates, listen.tls).

Agents reach egress over TLS (an HTTPS proxy) and present an X.509-SVID: its SPIFFE ID (else
its one common name) is matched against each agent's client_id. The proofs: a running egress,
real clients (httpx and curl, TLS inside TLS), an echo upstream that reports what it got, and
the audit records; then tables of certificates and SPIFFE IDs for the pure functions, and of
configs that must be refused.
"""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from egress.config import parse
from egress.errors import ConfigError
from egress.identity import (
    Identified,
    Unidentified,
    certificate_agent,
    certificate_identity,
    spiffe_problem,
)
from tests.conftest import (
    API,
    OTHER,
    OTHER_SECRET,
    SECRET,
    RunningProxy,
    base_config,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

TD = "spiffe://agents.example"
RESEARCHER = f"{TD}/ns/agents/sa/researcher"
REVIEWER = f"{TD}/ns/agents/sa/reviewer"
API_PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def root(cls, cn: str) -> Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(True, None), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cls(key, cert)

    def issue(
        self, cn: str = "svid", uris: tuple[str, ...] = (), ca: bool = False
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        b = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca, None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )  # fmt: skip
        if uris:
            b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                                critical=False)  # fmt: skip
        cert = b.sign(self.key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))  # fmt: skip


@dataclass
class Gateway:
    proxy: RunningProxy
    url: str  # https://127.0.0.1:<port>
    dir: Path
    server_ca: Path  # what clients verify egress's own certificate with
    issuer: Issuer
    stranger: Issuer  # a CA egress does not trust

    def cert_files(self, name: str, pem: tuple[bytes, bytes]) -> tuple[Path, Path]:
        c, k = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        c.write_bytes(pem[0])
        k.write_bytes(pem[1])
        return c, k

    def client(self, cert: tuple[Path, Path] | None) -> httpx.Client:
        to_proxy = ssl.create_default_context(cafile=str(self.server_ca))
        if cert is not None:
            to_proxy.load_cert_chain(str(cert[0]), str(cert[1]))
        return httpx.Client(proxy=httpx.Proxy(self.url, ssl_context=to_proxy),
                            verify=ssl.create_default_context(cafile=str(self.proxy.ca)), timeout=20)  # fmt: skip

    def get(
        self, cert: tuple[Path, Path] | None, host: str, port: int, placeholder: str
    ) -> int | str:
        try:
            with self.client(cert) as c:
                return c.get(
                    f"https://{host}:{port}/svid",
                    headers={"authorization": f"Bearer {placeholder}"},
                ).status_code
        except httpx.ProxyError as e:
            return str(e).split(" (")[0]


def gateway_config(tmp: Path, test_ca_file: Path, port: int, server: trustme.LeafCert,
                   client_ca: Path) -> dict[str, Any]:  # fmt: skip
    cfg = base_config(tmp, test_ca_file, port)
    server.cert_chain_pems[0].write_to_path(str(tmp / "proxy.crt"))
    server.private_key_pem.write_to_path(str(tmp / "proxy.key"))
    cfg["listen"]["tls"] = {"cert_file": str(tmp / "proxy.crt"), "key_file": str(tmp / "proxy.key"),
                            "client_ca_file": str(client_ca)}  # fmt: skip
    cfg["identity"] = {"client_certificates": True}
    cfg["allow"] = []  # nothing shared: each agent its own
    cfg["agents"] = [
        {"name": "researcher", "client_id": RESEARCHER, "allow": [{"host": API, "ports": [port]}],
         "secrets": ["api_token"]},
        {"name": "reviewer", "client_id": REVIEWER, "allow": [{"host": OTHER, "ports": [port]}],
         "secrets": ["other_token"]},
        {"name": "legacy", "client_id": "legacy-agent", "allow": [{"host": API, "ports": [port]}]},
    ]  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA, test_ca_file: Path,
            upstream: Upstream, plain_upstream: Upstream) -> Iterator[Gateway]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("svid")
    issuer, stranger = Issuer.root("agents.example SPIFFE CA"), Issuer.root("somebody else's CA")
    client_ca = tmp / "spiffe-bundle.pem"
    client_ca.write_bytes(issuer.cert.public_bytes(serialization.Encoding.PEM))
    cfg = gateway_config(
        tmp, test_ca_file, upstream.port, test_ca.issue_cert("127.0.0.1", "localhost"), client_ca
    )
    cfg["agents"][0]["allow"].append(
        {"host": API, "ports": [plain_upstream.port], "schemes": ["http"]}
    )
    p = start_proxy(write_config(tmp, cfg), tmp)
    try:
        yield Gateway(p, f"https://127.0.0.1:{p.port}", tmp, test_ca_file, issuer, stranger)
    finally:
        code = p.stop()
    assert code == 0, p.stderr_path.read_text()
    out = p.outputs()
    assert "Traceback" not in out and SECRET not in out and OTHER_SECRET not in out


def _last(p: RunningProxy) -> dict[str, Any]:
    return p.audit()[-1]


def test_each_agent_is_its_certificate_and_gets_only_its_own(
    gateway: Gateway, upstream: Upstream
) -> None:
    g = gateway
    researcher = g.cert_files("researcher", g.issuer.issue(uris=(RESEARCHER,)))
    reviewer = g.cert_files("reviewer", g.issuer.issue(uris=(REVIEWER,)))
    legacy = g.cert_files("legacy", g.issuer.issue(cn="legacy-agent"))  # no SPIFFE ID: its CN
    for cert, host, ph, value, agent in ((researcher, API, API_PH, SECRET, "researcher"),
                                         (reviewer, OTHER, OTHER_PH, OTHER_SECRET, "reviewer")):  # fmt: skip
        upstream.recorder.clear()
        assert g.get(cert, host, upstream.port, ph) == 200
        assert [r.headers.get("authorization") for r in upstream.requests] == [f"Bearer {value}"]
        assert _last(g.proxy)["agent"] == agent
    # legacy (its CN, no SPIFFE ID) reaches API but was granted no secret: its placeholder is
    # refused before the upstream.
    upstream.recorder.clear()
    assert g.get(legacy, API, upstream.port, API_PH) == 403
    assert (_last(g.proxy)["agent"], _last(g.proxy)["reason"]) == ("legacy", "secret_not_granted")
    assert upstream.requests == []
    # ... and each one's host is not the other's.
    assert g.get(researcher, OTHER, upstream.port, OTHER_PH).startswith("403")
    assert g.get(reviewer, API, upstream.port, API_PH).startswith("403")
    assert _last(g.proxy)["agent"] == "reviewer" and _last(g.proxy)["reason"] == "host_not_allowed"


def test_a_proxy_credential_does_not_override_the_certificate(
    gateway: Gateway, upstream: Upstream
) -> None:
    g = gateway
    reviewer = g.cert_files("reviewer2", g.issuer.issue(uris=(REVIEWER,)))
    to_proxy = ssl.create_default_context(cafile=str(g.server_ca))
    to_proxy.load_cert_chain(str(reviewer[0]), str(reviewer[1]))
    proxy = httpx.Proxy(
        g.url.replace("https://", "https://researcher:token@"), ssl_context=to_proxy
    )
    with httpx.Client(
        proxy=proxy, verify=ssl.create_default_context(cafile=str(g.proxy.ca)), timeout=20
    ) as c:
        with pytest.raises(httpx.ProxyError, match="403"):
            c.get(f"https://{API}:{upstream.port}/")
    assert _last(g.proxy)["agent"] == "reviewer"


# (what the client presents, the status, the reason in the audit record, text in the body)
REFUSED: list[tuple[str, Any, str, str, str]] = [
    ("no certificate", None, "407", "proxy_auth_required", "no client certificate"),
    ("an unknown SPIFFE ID", lambda g: g.issuer.issue(uris=(f"{TD}/ns/agents/sa/intruder",)),
     "407", "proxy_auth_failed", "sa/intruder' is no agent's client_id"),
    ("two URIs", lambda g: g.issuer.issue(uris=(RESEARCHER, "https://x.example/")),
     "407", "proxy_auth_failed", "exactly one"),
    ("a SPIFFE ID in another case", lambda g: g.issuer.issue(uris=(RESEARCHER.upper(),)),
     "407", "proxy_auth_failed", "SPIFFE ID is not valid"),
    ("a CA certificate", lambda g: g.issuer.issue(uris=(RESEARCHER,), ca=True),
     "407", "proxy_auth_failed", "CA certificate"),
    ("a CN that is a prefix of a client_id", lambda g: g.issuer.issue(cn="legacy"),
     "407", "proxy_auth_failed", "no agent's client_id"),
    ("a CN that spells a SPIFFE ID", lambda g: g.issuer.issue(cn=RESEARCHER),
     "407", "proxy_auth_failed", "common name"),
    ("a URI that is not a SPIFFE ID, and a CN", lambda g: g.issuer.issue(cn="legacy-agent", uris=(" " + RESEARCHER,)),
     "407", "proxy_auth_failed", "no SPIFFE ID"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "make", "status", "reason", "said"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_a_certificate_that_proves_no_agent_gets_407_and_an_audit_record(
    gateway: Gateway, upstream: Upstream, what: str, make: Any, status: str, reason: str, said: str
) -> None:
    g = gateway
    cert = g.cert_files("refused", make(g)) if make else None
    upstream.recorder.clear()
    to_proxy = ssl.create_default_context(cafile=str(g.server_ca))
    if cert:
        to_proxy.load_cert_chain(str(cert[0]), str(cert[1]))
    with httpx.Client(proxy=httpx.Proxy(g.url, ssl_context=to_proxy), timeout=20,
                      verify=ssl.create_default_context(cafile=str(g.proxy.ca))) as c:  # fmt: skip
        with pytest.raises(httpx.ProxyError, match=status):
            c.get(f"https://{API}:{upstream.port}/")
    record = _last(g.proxy)
    assert (record["reason"], record["agent"]) == (reason, None)
    assert said in record["detail"], record
    assert upstream.recorder.connections == 0


def test_a_certificate_from_another_ca_ends_the_handshake(
    gateway: Gateway, upstream: Upstream
) -> None:
    g = gateway
    cert = g.cert_files("stranger", g.stranger.issue(uris=(RESEARCHER,)))
    with pytest.raises(httpx.TransportError):  # a TLS alert, or the connection closed
        g.client(cert).get(f"https://{API}:{upstream.port}/")
    assert upstream.recorder.connections == 0


def test_curl_as_an_agent_with_its_svid(gateway: Gateway, upstream: Upstream) -> None:
    g = gateway
    cert, key = g.cert_files("curl", g.issuer.issue(uris=(RESEARCHER,)))
    upstream.recorder.clear()
    run = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", g.url.replace("127.0.0.1", "localhost"),
         "--proxy-cacert", str(g.server_ca), "--proxy-cert", str(cert), "--proxy-key", str(key),
         "--cacert", str(g.proxy.ca), "-H", f"Authorization: Bearer {API_PH}", f"https://{API}:{upstream.port}/curl"],
        capture_output=True, text=True, timeout=30, env=proxy_env(),
    )  # fmt: skip
    assert run.stdout == "200", run.stderr
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_plain_http_over_the_tls_listener_is_served_as_plain_http(
    gateway: Gateway, plain_upstream: Upstream
) -> None:
    """An http:// URL through an HTTPS proxy: the TLS is to egress, the request to the
    upstream is plain HTTP (absolute form, and inside a CONNECT tunnel to port 80)."""
    g = gateway
    cert = g.cert_files("plain", g.issuer.issue(uris=(RESEARCHER,)))
    plain_upstream.recorder.clear()
    with g.client(cert) as c:
        assert c.get(f"http://{API}:{plain_upstream.port}/absolute").status_code == 200
    assert [r.path for r in plain_upstream.requests] == ["/absolute"]
    assert _last(g.proxy)["agent"] == "researcher"


def test_a_client_offering_to_resume_its_session_gets_a_full_handshake(
    gateway: Gateway, upstream: Upstream
) -> None:
    """A client that offers its previous TLS session back (curl, Python and browsers do) is
    served with a full handshake, its certificate verified again: egress resumes none."""
    import socket

    g = gateway
    cert = g.cert_files("resume", g.issuer.issue(uris=(RESEARCHER,)))
    ctx = ssl.create_default_context(cafile=str(g.server_ca))
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    connect = (
        f"CONNECT {API}:{upstream.port} HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode()
    )
    session = None
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", g.proxy.port), 10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(connect)
                assert tls.recv(100).startswith(b"HTTP/1.1 200"), "the CONNECT was not answered"
                assert not tls.session_reused
                session = tls.session or session


def test_plain_http_to_a_tls_listener_is_refused(gateway: Gateway, upstream: Upstream) -> None:
    """A proxy request in the clear (an agent's HTTPS_PROXY=http://...) is answered 407,
    never served: with listen.tls, egress takes agents over TLS only."""
    import socket

    with socket.create_connection(("127.0.0.1", gateway.proxy.port), 10) as s:
        s.sendall(
            f"CONNECT {API}:{upstream.port} HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := s.recv(4096):  # egress closes after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 407"), answer[:200]
    assert b"over TLS only" in answer
    assert _last(gateway.proxy)["reason"] == "proxy_auth_required"


# ------------------------------------------------------------------ the pure functions

SPIFFE_IDS = [
    ("spiffe://example.org/ns/agents/sa/researcher", None),
    ("spiffe://example.org", None),
    ("spiffe://a-b_c.d/x.y-z_0", None),
    ("SPIFFE://example.org/x", "must start with spiffe://"),
    ("spiffe://Example.org/x", "trust domain"),
    ("spiffe://example.org:443/x", "trust domain"),
    ("spiffe://user@example.org/x", "trust domain"),
    ("spiffe:///x", "trust domain is empty"),
    ("spiffe://example.org/", "empty"),
    ("spiffe://example.org/a//b", "empty"),
    ("spiffe://example.org/a/../b", "'..'"),
    ("spiffe://example.org/a/./b", "'.'"),
    ("spiffe://example.org/a?b=c", "no query"),
    ("spiffe://example.org/a#b", "no query"),
    ("spiffe://example.org/a%2Fb", "percent"),
    (
        "spiffe://example.org/a\n",
        "path segment",
    ),  # a trailing newline ($ in a regex lets it through)
    ("spiffe://example.org\n/a", "trust domain"),
    ("spiffe://example.org/" + "a" * 2040, "2048"),
]


@pytest.mark.parametrize(("text", "problem"), SPIFFE_IDS, ids=[t[:40] for t, _ in SPIFFE_IDS])
def test_spiffe_ids(text: str, problem: str | None) -> None:
    found = spiffe_problem(text)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_certificate_identity_table() -> None:
    issuer = Issuer.root("ca")

    def cert(**kw: Any) -> x509.Certificate:
        return x509.load_pem_x509_certificate(issuer.issue(**kw)[0])

    assert certificate_identity(cert(uris=(RESEARCHER,))) == ("spiffe", RESEARCHER)
    assert certificate_identity(cert(cn="legacy-agent")) == ("cn", "legacy-agent")
    # A common name is the identity only of a certificate without URIs; and a common name
    # that spells a SPIFFE ID is a common name, which no SPIFFE client_id matches.
    assert certificate_identity(cert(cn=RESEARCHER)) == ("cn", RESEARCHER)
    ids = {RESEARCHER: "researcher", "legacy-agent": "legacy"}
    assert isinstance(certificate_agent(("cn", RESEARCHER), ids), Unidentified)
    assert isinstance(certificate_agent(("spiffe", "legacy-agent"), ids), Unidentified)
    assert certificate_agent(("spiffe", RESEARCHER), ids) == Identified("researcher")
    for bad in (cert(uris=(RESEARCHER, REVIEWER)), cert(uris=(RESEARCHER,), ca=True),
                cert(uris=("spiffe://EXAMPLE/x",)), cert(cn="legacy-agent", uris=("https://a.example/",)),
                cert(cn="legacy-agent", uris=(" " + RESEARCHER,))):  # fmt: skip
        assert isinstance(certificate_identity(bad), Unidentified)


# ------------------------------------------------------------------ configs refused

BAD: list[tuple[str, Any, str, str]] = [
    ("no listen.tls", lambda c: c["listen"].pop("tls"), "identity.client_certificates", "set listen.tls"),
    ("no client CA", lambda c: c["listen"]["tls"].pop("client_ca_file"), "identity.client_certificates",
     "client_ca_file"),
    ("an agent without client_id", lambda c: c["agents"][1].pop("client_id"), "agents[1].client_id",
     "needs a client_id"),
    ("two agents, one id", lambda c: c["agents"][1].update(client_id=RESEARCHER), "agents[1].client_id",
     "one certificate identity, one agent"),
    ("a bad SPIFFE ID", lambda c: c["agents"][0].update(client_id="spiffe://x/a/../b"), "agents[0].client_id",
     "not a SPIFFE ID"),
    ("two identities", lambda c: c["identity"].update(proxy_authorization=True), "identity", "choose one"),
    ("client_id with tokens", lambda c: c.update(identity={"proxy_authorization": True}),
     "agents[0].client_id", "read only with identity.client_certificates"),
    ("a key that is not the certificate's", lambda c: c["listen"]["tls"].update(key_file=c["listen"]["tls"]["other_key"]),
     "listen.tls.key_file", "is not the key of the certificate"),
    ("transparent mode", lambda c: c["listen"].update(mode="transparent", port=0), "listen.tls", "explicit mode"),
    ("a missing CA file", lambda c: c["listen"]["tls"].update(client_ca_file="/nonexistent.pem"),
     "listen.tls.client_ca_file", "does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "key", "said"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_name_the_key(tmp_path: Path, test_ca: trustme.CA, test_ca_file: Path, what: str,
                                  change: Any, key: str, said: str) -> None:  # fmt: skip
    cfg = gateway_config(tmp_path, test_ca_file, 443, test_ca.issue_cert("localhost"), test_ca_file)
    other = test_ca.issue_cert("other")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    cfg["listen"]["tls"]["other_key"] = str(tmp_path / "other.key")
    change(cfg)
    cfg["listen"].get("tls", {}).pop("other_key", None)
    cfg = json.loads(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        parse(cfg, str(tmp_path / "egress.yaml"), tmp_path)
    text = str(e.value)
    assert key in text and said in text, text


# ------------------------------------------------------------------ reload


def test_a_reload_that_changes_a_client_id_unproves_its_connections(
    tmp_path: Path, test_ca: trustme.CA, test_ca_file: Path, upstream: Upstream
) -> None:
    import os
    import signal

    import yaml

    issuer = Issuer.root("agents.example SPIFFE CA")
    client_ca = tmp_path / "bundle.pem"
    client_ca.write_bytes(issuer.cert.public_bytes(serialization.Encoding.PEM))
    cfg = gateway_config(
        tmp_path, test_ca_file, upstream.port, test_ca.issue_cert("127.0.0.1"), client_ca
    )
    cfg["reload"] = {"watch": False}
    path = write_config(tmp_path, cfg)
    p = start_proxy(path, tmp_path)
    g = Gateway(p, f"https://127.0.0.1:{p.port}", tmp_path, test_ca_file, issuer, issuer)
    old = g.cert_files("old", issuer.issue(uris=(RESEARCHER,)))
    moved = f"{TD}/ns/agents/sa/researcher-v2"
    new = g.cert_files("new", issuer.issue(uris=(moved,)))
    url = f"https://{API}:{upstream.port}/reload"
    try:
        with g.client(old) as kept:  # one tunnel, kept alive across the reload
            assert kept.get(url).status_code == 200
            cfg["agents"][0]["client_id"] = moved
            tmp = path.with_name("egress.yaml.new")
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
            os.replace(tmp, path)
            p.proc.send_signal(signal.SIGHUP)
            p.reload_record()
            # The tunnel's agent was proved by a certificate that no longer proves it.
            r = kept.get(url)
            assert r.status_code == 407 and r.headers["x-egress-reason"] == "proxy_auth_required"
        assert g.get(old, API, upstream.port, API_PH).startswith("407")  # the old ID: no agent's
        assert _last(p)["reason"] == "proxy_auth_failed"
        assert g.get(new, API, upstream.port, API_PH) == 200  # the new one is researcher
        assert _last(p)["agent"] == "researcher"
    finally:
        assert p.stop() == 0, p.stderr_path.read_text()
    assert "Traceback" not in p.stderr_path.read_text()


def test_rotated_tls_files_take_effect_without_a_restart(
    tmp_path: Path, test_ca: trustme.CA, test_ca_file: Path, upstream: Upstream
) -> None:
    """cert-manager and SPIRE rewrite the files in place: the watcher sees the bundle
    change, the reload applies it, the next handshake trusts the new CA and not the old."""
    import os

    old_ca, new_ca = Issuer.root("SPIFFE CA 1"), Issuer.root("SPIFFE CA 2")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(old_ca.cert.public_bytes(serialization.Encoding.PEM))
    cfg = gateway_config(
        tmp_path, test_ca_file, upstream.port, test_ca.issue_cert("127.0.0.1"), bundle
    )
    cfg["reload"] = {"watch": True, "interval_seconds": 0.2}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    g = Gateway(p, f"https://127.0.0.1:{p.port}", tmp_path, test_ca_file, old_ca, new_ca)
    first = g.cert_files("first", old_ca.issue(uris=(RESEARCHER,)))
    second = g.cert_files("second", new_ca.issue(uris=(RESEARCHER,)))
    try:
        assert g.get(first, API, upstream.port, API_PH) == 200
        tmp = bundle.with_name("bundle.pem.new")
        tmp.write_bytes(new_ca.cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, bundle)
        record = p.reload_record()
        assert (record["trigger"], record["outcome"]) == ("file", "applied"), record
        assert g.get(second, API, upstream.port, API_PH) == 200
        with pytest.raises(httpx.TransportError):
            g.client(first).get(f"https://{API}:{upstream.port}/")
    finally:
        assert p.stop() == 0, p.stderr_path.read_text()
