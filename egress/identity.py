"""Which agent sent a request (docs/agents.md): pure functions over plain data.

An agent proves who it is with its proxy credential, ``Proxy-Authorization: Basic
base64(<agent>:<token>)`` (what ``HTTPS_PROXY=http://<agent>:<token>@host:port`` makes every
client send). egress keeps only each token's SHA-256, and compares the SHA-256 of what is
presented with ``hmac.compare_digest``: the time it takes does not depend on where the two
differ, and digests of equal length are compared whatever the token's length. The token is
useless anywhere but at egress: no upstream ever sees it (egress strips the header).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from egress.hostnames import IPNetwork
from egress.reasons import Reason

# The longest Proxy-Authorization value egress decodes (a name of 63 and a token of a few
# hundred bytes fit many times over).
MAX_CREDENTIAL = 4096


def token_digest(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


@dataclass(frozen=True)
class Credentials:
    """Each agent's token digest. Holds no token; its repr shows only the agent names."""

    digests: dict[str, bytes] = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(agents={sorted(self.digests)})"


@dataclass(frozen=True)
class Identified:
    agent: str


@dataclass(frozen=True)
class Unidentified:
    reason: Reason  # PROXY_AUTH_REQUIRED (nothing usable given) or PROXY_AUTH_FAILED
    detail: str


def basic_credential(header: str | None) -> tuple[str, bytes] | None:
    """(user, password bytes) of a ``Basic`` Proxy-Authorization value, or None."""
    if not header or len(header) > MAX_CREDENTIAL:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        name = user.decode("ascii")
    except UnicodeDecodeError:
        return None
    return name, password


def authenticate(header: str | None, credentials: Credentials) -> Identified | Unidentified:
    """The agent a Proxy-Authorization value proves, or why it proves none. Unknown names
    are compared against a digest too, so that an unknown name and a wrong token take the
    same path; messages never quote the token."""
    given = basic_credential(header)
    if given is None:
        what = "no" if not header else "an unreadable"
        return Unidentified(
            Reason.PROXY_AUTH_REQUIRED,
            f"{what} proxy credential: this egress serves several agents and needs to know "
            "which one is asking; give the agent's name and token as the proxy's user and "
            "password (HTTPS_PROXY=http://<agent>:<token>@host:port)",
        )
    name, password = given
    expected = credentials.digests.get(name)
    presented = token_digest(password)
    matches = hmac.compare_digest(presented, expected if expected is not None else _NOBODY)
    if expected is None or not matches:
        # An unknown name is never quoted: a token given as the user name (http://<token>@...)
        # would otherwise reach the denial body and the audit log.
        who = f"agent {name!r}" if expected is not None else "an unknown agent name"
        return Unidentified(
            Reason.PROXY_AUTH_FAILED,
            f"the proxy credential for {who} is not valid: check the agent's name and its token",
        )
    return Identified(name)


_NOBODY = hashlib.sha256(b"egress: no such agent").digest()


# --- client certificates (identity.client_certificates) -----------------------------------

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")  # fullmatch: no trailing newline slips through
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def spiffe_problem(text: str) -> str | None:
    """What makes ``text`` not a SPIFFE ID (SPIFFE-ID.md), or None. Strict: lowercase
    scheme and trust domain, no port, userinfo, query, fragment or percent-encoding, no
    empty, "." or ".." path segment; at most 2048 bytes."""
    if len(text.encode()) > 2048:
        return "longer than 2048 bytes"
    if not text.startswith("spiffe://"):
        return "it must start with spiffe:// (lowercase)"
    rest = text[len("spiffe://") :]
    domain, slash, path = rest.partition("/")
    if not domain:
        return "the trust domain is empty"
    if len(domain) > 255 or not _TRUST_DOMAIN.fullmatch(domain):
        return (f"the trust domain {domain!r} may hold only lowercase letters, digits, '.', '-' "
                "and '_' (no port, no user)")  # fmt: skip
    if not slash:
        return None
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "a path segment is empty, '.' or '..'"
        if not _SEGMENT.fullmatch(segment):
            return (f"the path segment {segment!r} may hold only letters, digits, '.', '-' and "
                    "'_' (no query, fragment or percent-encoding)")  # fmt: skip
    return None


def certificate_identity(cert: x509.Certificate) -> tuple[str, str] | Unidentified:
    """Who a verified client certificate says its holder is, and by which kind of name:
    ("spiffe", its SPIFFE ID) when it carries one (an X.509-SVID carries exactly one URI
    SAN), ("cn", its subject's one common name) when it carries no URI at all. Never a CA;
    a certificate with URIs but no SPIFFE ID names no one (which URI would it be?)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            return Unidentified(Reason.PROXY_AUTH_FAILED, "the client certificate is a CA "
                                "certificate, not an agent's")  # fmt: skip
    except x509.ExtensionNotFound:
        pass
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris:
        if not any(u.lower().startswith("spiffe:") for u in uris):
            return Unidentified(Reason.PROXY_AUTH_FAILED, "the client certificate carries URIs "
                                "but no SPIFFE ID (spiffe://...)")  # fmt: skip
        if len(uris) != 1:
            return Unidentified(Reason.PROXY_AUTH_FAILED, "the client certificate carries "
                                f"{len(uris)} URIs: an X.509-SVID carries exactly one")  # fmt: skip
        problem = spiffe_problem(uris[0])
        if problem:
            return Unidentified(Reason.PROXY_AUTH_FAILED,
                                f"the client certificate's SPIFFE ID is not valid: {problem}")  # fmt: skip
        return ("spiffe", uris[0])
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        return Unidentified(Reason.PROXY_AUTH_FAILED, "the client certificate names no one: "
                            "no SPIFFE ID (URI SAN) and not exactly one common name")  # fmt: skip
    return ("cn", names[0].value)


def client_id_kind(client_id: str) -> str:
    """An agent's client_id is a SPIFFE ID (matched against a URI SAN only) or a common
    name (matched against a certificate without URIs only): a common name that spells a
    SPIFFE ID proves nothing."""
    return "spiffe" if client_id.startswith("spiffe:") else "cn"


def certificate_agent(
    found: tuple[str, str], client_ids: dict[str, str]
) -> Identified | Unidentified:
    """The agent whose client_id is the certificate's identity, of the same kind, exactly
    (no case folding, no prefix)."""
    kind, identity = found
    agent = client_ids.get(identity)
    if agent is None or client_id_kind(identity) != kind:
        shown = identity if identity.isprintable() and len(identity) <= 256 else "(unprintable)"
        what = "SPIFFE ID" if kind == "spiffe" else "common name"
        return Unidentified(Reason.PROXY_AUTH_FAILED, f"the client certificate's {what} "
                            f"{shown!r} is no agent's client_id")  # fmt: skip
    return Identified(agent)


# --- source addresses (identity.source_addresses) ------------------------------------------


def source_agent(address: str | None, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    """The agent whose source_addresses hold ``address`` (a connection's peer address), or
    None. An IPv4-mapped IPv6 address is its IPv4 address; a link-local peer (with or
    without a zone) is no one (the config refuses such ranges too). The config allows no
    overlap, so at most one agent matches."""
    if not address or "%" in address:
        return None  # a zone: a link-local peer, whose address any agent's link may carry
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return None
    for net, agent in table:
        if ip.version == net.version and ip in net:
            return agent
    return None
