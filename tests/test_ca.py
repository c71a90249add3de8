"""The ephemeral CA: name constraints enforced by real TLS clients; the key never on disk."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egress.ca import EphemeralCA
from egress.config import parse
from tests.conftest import API, RunningProxy, base_config, proxy_env, start_proxy, write_config
from tests.upstream import Upstream

RULES = parse(
    {"allow": ["allowed.test", "*.wild.test", {"host": "10.1.0.0/16", "ports": [1]}]},
    "t.yaml",
    Path("/"),
).rules


def leaf_signed_by(ca: EphemeralCA, name: x509.GeneralName, tmp: Path) -> tuple[Path, Path]:
    """What an attacker holding the leaked CA key could mint."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cn = (
        [x509.NameAttribute(NameOID.COMMON_NAME, str(name.value))]
        if isinstance(name, x509.DNSName)
        else []
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([name]), critical=not cn)
        .sign(ca.key, hashes.SHA256())
    )
    c, k = tmp / "leaf.pem", tmp / "leaf.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))  # fmt: skip
    return c, k


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1024)
                    s.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    )
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


CASES = [
    # (SAN of the minted leaf, name the client asks for, accepted)
    (x509.DNSName("allowed.test"), "allowed.test", True),
    (x509.DNSName("x.wild.test"), "x.wild.test", True),
    (x509.DNSName("a.b.wild.test"), "a.b.wild.test", True),
    (x509.DNSName("evil.test"), "evil.test", False),
    (x509.DNSName("allowed.test.evil.test"), "allowed.test.evil.test", False),
    (x509.IPAddress(ipaddress.ip_address("10.1.2.3")), "10.1.2.3", True),
    (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), "127.0.0.1", False),
    (x509.IPAddress(ipaddress.ip_address("::1")), "::1", False),
]


@pytest.mark.parametrize(("san", "name", "accepted"), CASES, ids=[c[1] for c in CASES])
def test_name_constraints_with_real_tls_clients(
    tmp_path: Path, san: x509.GeneralName, name: str, accepted: bool
) -> None:
    ca = EphemeralCA.create(RULES, 1)
    ca.write_cert(tmp_path / "ca.pem")
    cert, key = leaf_signed_by(ca, san, tmp_path)
    with tls_server(cert, key) as port:
        # Python's ssl (OpenSSL)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=name):
                    ok, error = True, ""
        except ssl.SSLCertVerificationError as e:
            ok, error = False, str(e)
        assert ok is accepted, error
        if not accepted:
            assert "subtree" in error or "name constraint" in error.lower() or "excluded" in error
        # curl, for the names it can reach here (10.1.2.3 and ::1 are covered above)
        if name in ("10.1.2.3", "::1"):
            return
        resolve = [] if ipaddress_ok(name) else ["--resolve", f"{name}:{port}:127.0.0.1"]
        r = subprocess.run(["curl", "-sS", "--cacert", str(tmp_path / "ca.pem"), *resolve, f"https://{name}:{port}/"],
                           capture_output=True, text=True, timeout=20)  # fmt: skip
        assert (r.returncode == 0) is accepted, r.stderr
        if not accepted:
            assert "subtree" in r.stderr or "SSL certificate problem" in r.stderr


def ipaddress_ok(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def test_ca_certificate_shape() -> None:
    ca = EphemeralCA.create(RULES, 5)
    cert = ca.cert
    assert "egress ephemeral CA" in cert.subject.rfc4514_string()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert {str(n.value) for n in nc.value.permitted_subtrees} == {
        "allowed.test",
        "wild.test",
        "10.1.0.0/16",
    }
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(hours=5) <= life <= datetime.timedelta(hours=5, minutes=6)
    assert EphemeralCA.create(RULES, 5).cert.serial_number != cert.serial_number
    assert "PRIVATE" not in ca.cert_pem().decode() and "redacted" in repr(ca)


def test_no_address_rules_excludes_every_address() -> None:
    ca = EphemeralCA.create(parse({"allow": ["a.test"]}, "t", Path("/")).rules, 1)
    nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert {str(n.value) for n in nc.excluded_subtrees or []} == {"0.0.0.0/0", "::/0"}


def test_running_proxy_keeps_its_key_off_disk(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    cfg = write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))
    p: RunningProxy = start_proxy(cfg, tmp_path, proxy_env(TMPDIR=str(private_tmp)))
    try:
        agent_dir = p.ca.parent
        assert sorted(os.listdir(agent_dir)) == ["egress-ca.pem"]
        for f in agent_dir.iterdir():
            assert b"PRIVATE KEY" not in f.read_bytes()
        x509.load_pem_x509_certificate(p.ca.read_bytes())
        (private,) = private_tmp.iterdir()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        for f in private.rglob("*"):
            assert b"PRIVATE KEY" not in f.read_bytes(), f
        # The leaf the proxy serves names only the contacted host.
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(
                f"CONNECT {API}:{upstream.port} HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n\r\n".encode()
            )
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            ctx = ssl.create_default_context(cafile=str(p.ca))
            with ctx.wrap_socket(s, server_hostname=API) as tls:
                leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(n.value) for n in sans] == [API]
    finally:
        assert p.stop() == 0
    assert list(private_tmp.iterdir()) == [], "the private directory outlived the proxy"
