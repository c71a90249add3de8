"""A denial's hint is enough in one round trip: apply it to the config and the same
request is allowed (plain http on an https rule used to take two: the port, then the
scheme)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress import config
from egress.messages import how_to_allow
from egress.policy import Allowlist
from egress.reasons import Reason

CASES = [
    # (rule as written, request scheme, port, method, path, expected hint, rule after the hint)
    ("{host: a.example}", "http", 80, "GET", "/", "add http to the 'schemes' of allow[0]",
     "{host: a.example, schemes: [https, http]}"),
    ("{host: a.example, ports: [8443]}", "http", 80, "GET", "/", "add http to the 'schemes' of allow[0] and 80 to its 'ports'",
     "{host: a.example, ports: [8443, 80], schemes: [https, http]}"),
    ("{host: a.example}", "https", 8443, "GET", "/", "add 8443 to the 'ports' of allow[0]",
     "{host: a.example, ports: [443, 8443]}"),
    ("{host: a.example, methods: [GET]}", "https", 443, "POST", "/", "add POST to the 'methods' of allow[0]",
     "{host: a.example, methods: [GET, POST]}"),
    ("{host: a.example, paths: [/v1/]}", "https", 443, "GET", "/v2/x", "add a prefix of '/v2/x' to the 'paths' of allow[0]",
     "{host: a.example, paths: [/v1/, /v2/x]}"),
]  # fmt: skip


def rules(tmp_path: Path, rule: str) -> Allowlist:
    (tmp_path / "e.yaml").write_text(f"allow:\n  - {rule}\n")
    return Allowlist(config.load(tmp_path / "e.yaml").rules)


@pytest.mark.parametrize(("rule", "scheme", "port", "method", "path", "hint", "after"), CASES)
def test_one_round_trip(tmp_path: Path, rule: str, scheme: str, port: int, method: str, path: str,
                        hint: str, after: str) -> None:  # fmt: skip
    d = rules(tmp_path, rule).decide(scheme, "a.example", port, method, path)
    assert not d.allowed
    assert how_to_allow(d.reason, "a.example", port, scheme, method, path, d.rule) == hint
    assert (
        rules(tmp_path, after).decide(scheme, "a.example", port, method, path).reason
        is Reason.ALLOWED
    )
