"""TLS with the ephemeral CA: in-memory key, leaf certificates that name only the host.

Replaces mitmproxy's TlsConfig in ``egress run``. It never reads or writes a CA in
``confdir``; the certificate store is built in memory from the runtime's CA. Leaf
certificates carry exactly one name, the host being contacted, never names copied from
the upstream certificate: those would fall outside the CA's name constraints and would
invite HTTP/2 connection reuse across hosts.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
from typing import Any

from cryptography import x509
from mitmproxy import certs, ctx, http, tls
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.proxy import context
from mitmproxy.proxy.layers import ClientTLSLayer, modes
from mitmproxy.proxy.mode_specs import TransparentMode
from OpenSSL import SSL

from egress.ca import EphemeralCA
from egress.config import ListenTls
from egress.errors import InvalidHost
from egress.hostnames import canonical_host, is_ip
from egress.runtime import Runtime, shared

# Options with which mitmproxy's TlsConfig would (re)load a CA from confdir, and the TLS
# version options, whose check only warns but raises on OpenSSL 4 when loaded beside
# mitmproxy's own TlsConfig (mitmdump -s).
_SKIPPED_OPTIONS = {
    "certs", "confdir", "key_size", "cert_passphrase",
    "emudhra", "emudhra_old",  # mitmproxy 12.3: these too reload the CA (from confdir, or a public key)
    "tls_version_client_min", "tls_version_client_max", "tls_version_server_min", "tls_version_server_max",
}  # fmt: skip


def build_certstore(rt: Runtime, ca: EphemeralCA | None = None) -> certs.CertStore:
    ca = ca or rt.ca
    dh = certs.CertStore.load_dhparam(rt.private_dir / "dhparam.pem")  # public parameters
    chain = None
    if ca.anchor is not None:
        # Signed by a PKI issuer (ca.vault_pki): agents trust the issuer, so the CA's own
        # certificate must follow the leaf. mitmproxy sends what OpenSSL builds from the
        # chain file (public certificates only; the key never leaves memory).
        chain = rt.private_dir / f"ca-chain-{ca.cert.serial_number:x}.pem"
        if not chain.exists():
            tmp = chain.with_name(f"{chain.name}.{os.getpid()}.tmp")
            tmp.write_bytes(ca.cert_pem())
            os.replace(tmp, chain)
    kwargs: dict[str, Any] = dict(
        default_privatekey=ca.key, default_ca=certs.Cert(ca.cert),
        default_chain_file=chain, dhparams=dh,
    )  # fmt: skip
    if "default_crl" in inspect.signature(certs.CertStore.__init__).parameters:
        kwargs["default_crl"] = b""  # mitmproxy 12 serves a CRL; we issue none
    return certs.CertStore(**kwargs)


class EgressTls(TlsConfig):
    def __init__(self, runtime: Runtime | None = None):
        super().__init__()
        self._runtime = runtime
        self._embedded = runtime is not None
        self._certstore: certs.CertStore | None = None
        # One store per CA a reload added (Runtime.more_cas), by the CA's serial number.
        self._more_stores: dict[int, certs.CertStore] = {}
        self._proxy_ctx: tuple[ListenTls, SSL.Context] | None = None

    def load(self, loader: Any) -> None:
        if "tls_version_client_min" not in loader.master.options:
            super().load(loader)
        if "egress_config" not in loader.master.options:
            loader.add_option("egress_config", str, "", "Path to the egress config file.")

    def configure(self, updated: set[str]) -> None:
        super().configure(set(updated) - _SKIPPED_OPTIONS)
        if self._runtime is None:
            self._runtime = shared(ctx.options.egress_config)
        if self._certstore is None:
            self._certstore = build_certstore(self._runtime)
        # Whatever TlsConfig.configure() may have loaded (an option not in the list above),
        # leaf certificates are signed by the runtime's CA.
        self.certstore = self._certstore

    def running(self) -> None:
        # Not TlsConfig.running(), which would load a CA from confdir. Loaded into a plain
        # mitmdump, take the options egress run would set.
        if self._runtime is not None and not self._embedded:
            if "flow_detail" in ctx.options:
                # mitmdump's printer shows URLs and headers after injection: keep it quiet.
                ctx.options.update(flow_detail=0)
            ctx.options.update(
                ssl_insecure=False,
                ssl_verify_upstream_trusted_ca=str(self._runtime.upstream_trust),
                upstream_cert=False,
                http3=False,
            )

    def request(self, flow: http.HTTPFlow) -> None:
        pass  # mitmproxy 12's TlsConfig answers ".../mitmproxy-<CA serial>.crl" itself; egress never

    def _target(self, ctx_: context.Context) -> str | None:
        assert self._runtime is not None
        tunnel = self._runtime.tunnels.get(ctx_.client.id)
        if tunnel is not None:
            return tunnel.host
        if ctx_.server.sni:
            return str(ctx_.server.sni)
        if ctx_.client.sni:
            try:
                return canonical_host(ctx_.client.sni)
            except InvalidHost:
                return None
        return None

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        super().tls_clienthello(data)
        if self._runtime is None:
            return
        client = data.context.client
        if isinstance(client.proxy_mode, TransparentMode) and client.id in self._runtime.tunnels:
            # Decided already (on this ClientHello's SNI): connect upstream first, so that the
            # agent is offered only the protocol the upstream speaks. With the client's
            # handshake first, it would get h2 and mitmproxy would translate each request to
            # HTTP/1.1 for an upstream that speaks only that (docs/policy.md: Transparent mode).
            data.establish_server_tls_first = True

    def tls_start_client(self, tls_start: tls.TlsData) -> None:
        # Loaded beside mitmproxy's own TlsConfig (mitmdump -s), rebuild what it made.
        tls_start.ssl_conn = None
        listen_tls = self._runtime.config.listen_tls if self._runtime is not None else None
        if listen_tls is not None and is_proxy_tls(tls_start.context):
            self._start_proxy_tls(tls_start, listen_tls)
            return
        super().tls_start_client(tls_start)
        client, server = tls_start.context.client, tls_start.context.server
        if (
            isinstance(client.proxy_mode, TransparentMode)
            and tls_start.ssl_conn is not None
            and server.alpn is None
        ):
            # The upstream could not be reached before the agent's handshake: offer only
            # HTTP/1.1 rather than an h2 that might be translated later.
            app = tls_start.ssl_conn.get_app_data()
            app["client_alpn"] = b"http/1.1"
            tls_start.ssl_conn.set_app_data(app)

    def get_cert(self, conn_context: context.Context) -> certs.CertStoreEntry:
        host = self._target(conn_context) or "invalid"
        store = self._store_for(host)
        if is_ip(host):
            # No CN for an address: OpenSSL would check a CN like "127.0.0.1" against the DNS
            # name constraints and reject it.
            return store.get_cert(None, [x509.IPAddress(ipaddress.ip_address(host))])
        return store.get_cert(host, [x509.DNSName(host)])

    def _store_for(self, host: str) -> certs.CertStore:
        """The certificate store of the CA that signs for ``host`` (Runtime.ca_for): the
        first CA unless a reload allowed a name outside its constraints."""
        rt = self._runtime
        if rt is None or not rt.more_cas:
            return self.certstore
        ca = rt.ca_for(host)
        if ca is rt.ca:
            return self.certstore
        serial = ca.cert.serial_number
        if serial not in self._more_stores:
            self._more_stores[serial] = build_certstore(rt, ca)
        return self._more_stores[serial]

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        tls_start.ssl_conn = None
        super().tls_start_server(tls_start)

    # The agent's TLS to egress itself (listen.tls): egress's own certificate, not a leaf of
    # its CA (whose constraints name only upstreams), and the agent's client certificate
    # verified against listen.tls.client_ca_file (identity.client_certificates).

    def _proxy_context(self, listen_tls: ListenTls) -> SSL.Context:
        # One context per listen.tls in force: a reload that changes its files (a rotated
        # certificate, a new trust bundle; ListenTls carries their SHA-256) gets a new one
        # at the next handshake.
        if self._proxy_ctx is None or self._proxy_ctx[0] != listen_tls:
            c = SSL.Context(SSL.TLS_SERVER_METHOD)
            c.set_min_proto_version(SSL.TLS1_2_VERSION)
            # No session resumption: a resumed session skips the client certificate's
            # verification (and without an id context OpenSSL refuses it anyway).
            c.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
            c.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            c.set_session_id(b"egress-listen-tls")
            c.use_certificate_chain_file(str(listen_tls.cert_file))
            c.use_privatekey_file(str(listen_tls.key_file))
            c.check_privatekey()
            if listen_tls.client_ca_file is not None:
                c.load_verify_locations(str(listen_tls.client_ca_file))
                # Asked for, and verified if given (a certificate that does not verify ends
                # the handshake); one not given gets its 407 with an audit record
                # (addons/identity.py), which a failed handshake could not carry.
                c.set_verify(SSL.VERIFY_PEER, lambda _conn, _cert, _errno, _depth, ok: bool(ok))
                c.set_verify_depth(4)
            # CONNECT over HTTP/2 is not supported by mitmproxy: HTTP/1.1 to the proxy.
            c.set_alpn_select_callback(lambda _conn, offers: b"http/1.1" if b"http/1.1" in offers
                                       else SSL.NO_OVERLAPPING_PROTOCOLS)  # fmt: skip
            self._proxy_ctx = (listen_tls, c)
        return self._proxy_ctx[1]

    def _start_proxy_tls(self, tls_start: tls.TlsData, listen_tls: ListenTls) -> None:
        conn = SSL.Connection(self._proxy_context(listen_tls))
        conn.set_accept_state()
        tls_start.ssl_conn = conn


def is_proxy_tls(ctx_: context.Context) -> bool:
    """Is this the agent's TLS to egress itself (an HTTPS proxy), not to an upstream? An
    explicit proxy whose first layer after the mode is TLS, and no other TLS layer: the TLS
    inside a CONNECT is a second one, or comes after the HTTP layer."""
    layers = ctx_.layers
    return (
        len(layers) >= 2
        and isinstance(layers[0], modes.HttpProxy)
        and isinstance(layers[1], ClientTLSLayer)
        and sum(isinstance(layer, ClientTLSLayer) for layer in layers) == 1
    )


addons = [EgressTls()]
