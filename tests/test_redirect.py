"""The redirect rules: golden files, and applied for real inside a network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from egress.redirect import RedirectSpec, iptables_restore, nftables
from tests.conftest import egress_cmd

GOLDEN = Path(__file__).parent / "golden"
SPEC = RedirectSpec(
    proxy_port=15001, proxy_uid=1337, ports=(80, 443), dns=("10.96.0.10", "fd00::a")
)
CASES = {
    "redirect-iptables-v4.rules": lambda: iptables_restore(SPEC, 4),
    "redirect-iptables-v6.rules": lambda: iptables_restore(SPEC, 6),
    "redirect-nftables.nft": lambda: nftables(SPEC),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = CASES[name]()
    path = GOLDEN / name
    if os.environ.get("EGRESS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_print_cli() -> None:
    r = subprocess.run(egress_cmd("redirect", "print", "--dns", "10.96.0.10", "--dns", "fd00::a"),
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0
    assert r.stdout == (f"# iptables-restore --noflush\n{iptables_restore(SPEC, 4)}"
                        f"# ip6tables-restore --noflush\n{iptables_restore(SPEC, 6)}")  # fmt: skip


def test_bad_spec() -> None:
    r = subprocess.run(
        egress_cmd("redirect", "print", "--dns", "not-an-ip"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "not-an-ip" in r.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace")


@needs_root
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_apply_and_remove_in_a_network_namespace(backend: str) -> None:
    tool = {"iptables": "iptables-save", "nftables": "nft"}[backend]
    if shutil.which(tool) is None or shutil.which("ip") is None:
        pytest.skip(f"{tool} or ip is not installed (.ci/run installs them)")
    ns = f"egress-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "netns", "exec", ns]
        apply_cmd = egress_cmd("redirect", "apply", "--backend", backend, "--dns", "10.96.0.10")
        # As in the pod's init container: root with every capability dropped but NET_ADMIN.
        no_caps = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
        refused = subprocess.run([*run, *no_caps, *apply_cmd], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert refused.returncode == 2 and "needs the NET_ADMIN capability" in refused.stderr
        net_admin = ["setpriv", "--bounding-set=-all,+net_admin", "--inh-caps=-all"]
        for _ in range(2):  # a retried init container applies twice: still one copy
            apply = subprocess.run([*run, *net_admin, *apply_cmd], capture_output=True, text=True, timeout=60)  # fmt: skip
            assert apply.returncode == 0, apply.stderr
        show = (
            [*run, "iptables-save"] if backend == "iptables" else [*run, "nft", "list", "ruleset"]
        )
        rules = subprocess.run(show, capture_output=True, text=True, timeout=30).stdout
        if backend == "iptables":
            assert (
                "-A EGRESS_REDIRECT -p tcp -m multiport --dports 80,443 -j REDIRECT --to-ports 15001"
                in rules
            )
            assert "-A EGRESS_FILTER -m owner --uid-owner 1337 -j ACCEPT" in rules
            assert rules.count("-j EGRESS_REDIRECT") == 1 and rules.count("-j EGRESS_FILTER") == 1
            six = subprocess.run(
                [*run, "ip6tables-save"], capture_output=True, text=True, timeout=30
            ).stdout
            assert "-A EGRESS_REDIRECT -d ::1/128 -j RETURN" in six
        else:
            assert "redirect to :15001" in rules and "skuid 1337" in rules
            assert rules.count("redirect to :15001") == 1
        remove = subprocess.run([*run, *egress_cmd("redirect", "remove", "--backend", backend)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert remove.returncode == 0
        after = subprocess.run(show, capture_output=True, text=True, timeout=30).stdout
        assert "EGRESS_REDIRECT" not in after and "table inet egress" not in after
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_dns_from_resolv_conf(tmp_path: Path) -> None:
    """In a pod the cluster DNS is whatever the kubelet wrote into /etc/resolv.conf."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("search agents.svc.cluster.local svc.cluster.local\n"
                    "nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n")  # fmt: skip
    r = subprocess.run(egress_cmd("redirect", "print", "--dns-from", str(conf)),
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"# iptables-restore --noflush\n{iptables_restore(SPEC, 4)}"
                        f"# ip6tables-restore --noflush\n{iptables_restore(SPEC, 6)}")  # fmt: skip
    r = subprocess.run(egress_cmd("redirect", "print", "--dns-from", str(tmp_path / "nope")),
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "--dns-from" in r.stderr and "No such file" in r.stderr
