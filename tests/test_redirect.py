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
        apply = subprocess.run([*run, *egress_cmd("redirect", "apply", "--backend", backend, "--dns", "10.96.0.10")],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
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
            six = subprocess.run(
                [*run, "ip6tables-save"], capture_output=True, text=True, timeout=30
            ).stdout
            assert "-A EGRESS_REDIRECT -d ::1/128 -j RETURN" in six
        else:
            assert "redirect to :15001" in rules and "skuid 1337" in rules
        remove = subprocess.run([*run, *egress_cmd("redirect", "remove", "--backend", backend)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert remove.returncode == 0
        after = subprocess.run(show, capture_output=True, text=True, timeout=30).stdout
        assert "EGRESS_REDIRECT" not in after and "table inet egress" not in after
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
