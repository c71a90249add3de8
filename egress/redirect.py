"""Traffic redirect for the sidecar: the rules, as data, that send an agent's outbound TCP
to the proxy and drop everything else that must not leave.

Same-namespace (Istio-style) rules, for the init container of an agent pod:
- nat: TCP to the redirected ports goes to the proxy's transparent port, except traffic of
  the proxy's own UID (so that its upstream connections are not looped back) and loopback;
- filter: the proxy's UID, loopback, and (where configured) the cluster DNS servers may
  leave; UDP 443 (QUIC) and everything else are dropped. IPv6 gets the same rules.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

NAT_CHAIN = "EGRESS_REDIRECT"
FILTER_CHAIN = "EGRESS_FILTER"


@dataclass(frozen=True)
class RedirectSpec:
    proxy_port: int = 15001  # the proxy's transparent listener
    proxy_uid: int = 1337  # the proxy runs as this UID; its traffic is exempt
    ports: tuple[int, ...] = (80, 443)  # TCP destination ports redirected to the proxy
    dns: tuple[str, ...] = ()  # DNS servers the agent may query (UDP and TCP 53)
    # TCP ports the pod serves to others (egress's admin port, for the kubelet's probes):
    # replies on connections accepted there may leave; nothing else accepted may answer.
    inbound_ports: tuple[int, ...] = (9901,)

    def __post_init__(self) -> None:
        for port in (self.proxy_port, *self.ports, *self.inbound_ports):
            if not 0 < port < 65536:
                raise ValueError(f"{port} is not a port number")
        if self.proxy_uid < 0:
            raise ValueError("proxy_uid must be 0 or more")
        for d in self.dns:
            ipaddress.ip_address(d)


def nameservers(resolv_conf: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (zone ids dropped)."""
    out = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            out.append(str(ipaddress.ip_address(fields[1].split("%", 1)[0])))
    return out


def _dns(spec: RedirectSpec, version: int) -> list[str]:
    return [d for d in spec.dns if ipaddress.ip_address(d).version == version]


def iptables_restore(spec: RedirectSpec, version: int = 4) -> str:
    """Input for ``iptables-restore --noflush`` (version 4) or ``ip6tables-restore`` (6)."""
    loopback = "127.0.0.0/8" if version == 4 else "::1/128"
    ports = ",".join(map(str, spec.ports))
    lines = [
        "*nat",
        f":{NAT_CHAIN} - [0:0]",
        f"-A OUTPUT -p tcp -j {NAT_CHAIN}",
        f"-A {NAT_CHAIN} -m owner --uid-owner {spec.proxy_uid} -j RETURN",
        f"-A {NAT_CHAIN} -d {loopback} -j RETURN",
        f"-A {NAT_CHAIN} -p tcp -m multiport --dports {ports} -j REDIRECT --to-ports {spec.proxy_port}",
        "COMMIT",
        "*filter",
        f":{FILTER_CHAIN} - [0:0]",
        f"-A OUTPUT -j {FILTER_CHAIN}",
        f"-A {FILTER_CHAIN} -m owner --uid-owner {spec.proxy_uid} -j ACCEPT",
        f"-A {FILTER_CHAIN} -o lo -j ACCEPT",
        # Connections the nat rules redirected to the proxy: the filter hook still sees the
        # original output interface (not lo) but the new, loopback, destination.
        f"-A {FILTER_CHAIN} -d {loopback} -j ACCEPT",
    ]
    if spec.inbound_ports:
        # Replies on connections accepted on the inbound ports (a SYN-ACK belongs to no
        # full socket, so the owner match above misses it). Connections accepted on any
        # other port cannot answer: no inbound channel for the agent.
        inbound = ",".join(map(str, spec.inbound_ports))
        lines.append(f"-A {FILTER_CHAIN} -p tcp -m multiport --sports {inbound} "
                     "-m conntrack --ctstate ESTABLISHED --ctdir REPLY -j ACCEPT")  # fmt: skip
    if version == 6:
        # Neighbour discovery is sent by the kernel, not by a socket of the proxy's UID:
        # without it no IPv6 packet, the proxy's included, finds the next hop.
        # RFC 4861 messages carry hop limit 255.
        lines += [f"-A {FILTER_CHAIN} -p ipv6-icmp --icmpv6-type {t} -m hl --hl-eq 255 -j ACCEPT"
                  for t in ("neighbour-solicitation", "neighbour-advertisement", "router-solicitation")]  # fmt: skip
    for server in _dns(spec, version):
        lines += [f"-A {FILTER_CHAIN} -d {server} -p udp --dport 53 -j ACCEPT",
                  f"-A {FILTER_CHAIN} -d {server} -p tcp --dport 53 -j ACCEPT"]  # fmt: skip
    lines += [
        f"-A {FILTER_CHAIN} -p udp --dport 443 -j DROP",  # QUIC: never around the proxy
        f"-A {FILTER_CHAIN} -j DROP",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def iptables_remove(version: int = 4) -> list[list[str]]:
    """Commands that undo iptables_restore (each may fail harmlessly if already gone)."""
    cmd = "iptables" if version == 4 else "ip6tables"
    return [
        [cmd, "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", NAT_CHAIN],
        [cmd, "-t", "nat", "-F", NAT_CHAIN],
        [cmd, "-t", "nat", "-X", NAT_CHAIN],
        [cmd, "-t", "filter", "-D", "OUTPUT", "-j", FILTER_CHAIN],
        [cmd, "-t", "filter", "-F", FILTER_CHAIN],
        [cmd, "-t", "filter", "-X", FILTER_CHAIN],
    ]


def nftables(spec: RedirectSpec) -> str:
    """The same rules for ``nft -f`` (one inet table, both address families)."""
    ports = ", ".join(map(str, spec.ports))
    dns4, dns6 = _dns(spec, 4), _dns(spec, 6)
    lines = [
        "table inet egress {",
        "  chain agent_redirect {",
        "    type nat hook output priority -100; policy accept;",
        f"    meta skuid {spec.proxy_uid} return",
        "    ip daddr 127.0.0.0/8 return",
        "    ip6 daddr ::1 return",
        f"    tcp dport {{ {ports} }} redirect to :{spec.proxy_port}",
        "  }",
        "  chain agent_filter {",
        "    type filter hook output priority 0; policy drop;",
        f"    meta skuid {spec.proxy_uid} accept",
        '    oifname "lo" accept',
        # redirected to the proxy: still the original oif here, but a loopback destination
        "    ip daddr 127.0.0.0/8 accept",
        "    ip6 daddr ::1 accept",
        # neighbour discovery: sent by the kernel, not by the proxy's UID
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } ip6 hoplimit 255 accept",
    ]
    if spec.inbound_ports:
        inbound = ", ".join(map(str, spec.inbound_ports))
        lines.append(
            f"    tcp sport {{ {inbound} }} ct state established ct direction reply accept"
        )
    if dns4:
        lines.append(
            f"    ip daddr {{ {', '.join(dns4)} }} meta l4proto {{ tcp, udp }} th dport 53 accept"
        )
    if dns6:
        lines.append(
            f"    ip6 daddr {{ {', '.join(dns6)} }} meta l4proto {{ tcp, udp }} th dport 53 accept"
        )
    lines += ["    udp dport 443 drop", "  }", "}"]
    return "\n".join(lines) + "\n"


def nftables_remove() -> list[list[str]]:
    return [["nft", "delete", "table", "inet", "egress"]]
