"""egress exec and egress check, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from egress.cli import CA_ENV_VARS
from tests.conftest import (
    API,
    OTHER_SECRET,
    SECRET,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    write_config,
)
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"


@pytest.fixture
def cfg(tmp_path: Path, upstream: Upstream, test_ca_file: Path) -> Path:
    return write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))


def egress(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        egress_cmd(*args), capture_output=True, text=True, env=env or proxy_env(), timeout=90
    )


def test_exec_environment_has_placeholders_and_no_secret(cfg: Path) -> None:
    env = proxy_env(ALIAS_OF_SECRET=SECRET, HTTPS_PROXY="http://elsewhere:1",
                    PIP_INDEX_URL=f"https://me:{SECRET}@pypi.example.invalid/simple")  # fmt: skip
    r = egress("exec", "--config", str(cfg), "--", "python3", "-c",
               "import json, os; print(json.dumps(dict(os.environ)))", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    child = json.loads(r.stdout)
    assert child["API_TOKEN"] == PH
    assert child["OTHER_TOKEN"] == "sk-EGRESSPLACEHOLDEROTHER0000"
    assert "EGRESS_TEST_API_TOKEN" not in child and "ALIAS_OF_SECRET" not in child
    assert "PIP_INDEX_URL" not in child  # a secret inside a URL counts too
    assert (
        child["HTTPS_PROXY"].startswith("http://127.0.0.1:")
        and child["HTTPS_PROXY"] == child["http_proxy"]
    )
    # Every CA variable names exec's own, private CA file, never ca.cert_path (which another
    # egress may be serving).
    assert len({child[var] for var in CA_ENV_VARS}) == 1
    assert child[CA_ENV_VARS[0]] != str(cfg.parent / "agent" / "egress-ca.pem")
    assert child[CA_ENV_VARS[0]].endswith("egress-ca.pem")
    assert_no_secret(r.stdout, r.stderr)


@pytest.mark.parametrize("code", [0, 3, 7])
def test_exec_passes_the_exit_code(cfg: Path, code: int) -> None:
    r = egress("exec", "--config", str(cfg), "--", "python3", "-c", f"import sys; sys.exit({code})")
    assert r.returncode == code, r.stderr


def test_exec_command_not_found(cfg: Path) -> None:
    r = egress("exec", "--config", str(cfg), "--", "no-such-command-egress")
    assert r.returncode == 127 and "cannot run 'no-such-command-egress'" in r.stderr


def test_exec_runs_an_agent_through_the_proxy(cfg: Path, upstream: Upstream) -> None:
    script = (f'curl -sS --fail-with-body https://{API}:{upstream.port}/via-exec '
              '-H "Authorization: Bearer $API_TOKEN" && '
              f'curl -sS -o /dev/null -w "%{{http_code}}" https://denied.egress.test:{upstream.port}/ ; true')  # fmt: skip
    r = egress("exec", "--config", str(cfg), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert upstream.requests[0].path == "/via-exec"
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert (
        json.loads(r.stdout[: r.stdout.rindex("}") + 1])["headers"]["authorization"]
        == f"Bearer {PH}"
    )
    assert r.stdout.endswith("000") or r.stdout.endswith("403")  # the denied CONNECT
    assert len(upstream.requests) == 1
    audit = [json.loads(line) for line in (cfg.parent / "audit.jsonl").read_text().splitlines()]
    assert [(a["host"], a["decision"]) for a in audit] == [
        (API, "allow"),
        ("denied.egress.test", "deny"),
    ]
    assert_no_secret(r.stdout, r.stderr, (cfg.parent / "audit.jsonl").read_text())


def test_exec_without_command() -> None:
    r = egress("exec")
    assert r.returncode == 2 and "exec needs a command" in r.stderr


CHECKS = [
    # (args, exit code, output parts)
    (
        ["https://api.egress.test:{port}/x"],
        0,
        ["ALLOW GET", "rule:    allow[0]", "secrets: api_token"],
    ),
    (
        ["--method", "POST", "https://other.egress.test:{port}/x"],
        0,
        ["ALLOW POST", "secrets: other_token"],
    ),
    (
        ["https://nope.egress.test/"],
        1,
        ["DENY GET", "reason:  host_not_allowed", "- host: nope.egress.test"],
    ),
    (
        ["https://api.egress.test/"],
        1,
        ["reason:  port_not_allowed", "add 443 to the 'ports' of allow[0]"],
    ),
    (
        ["http://api.egress.test:{port}/"],
        1,
        ["reason:  scheme_not_allowed", "add http to the 'schemes'"],
    ),
    (["https://u:p@api.egress.test:{port}/"], 1, ["reason:  userinfo_in_url"]),
    (["https://API.EGRESS.TEST.:{port}/x"], 0, ["ALLOW GET"]),
    # The secret checks run too (tests/test_check.py compares them with the proxy's).
    (
        ["https://other.egress.test:{port}/leak?q=" + PH],
        1,
        ["DENY GET", "reason:  placeholder_to_unbound_host (403)", "secret:  api_token"],
    ),
    (
        ["-H", f"Authorization: Bearer {PH}", "https://api.egress.test:{port}/x"],
        0,
        ["ALLOW GET", "secrets: api_token (injected)"],
    ),
    (
        ["-H", f"X-Leak: {SECRET}", "https://other.egress.test:{port}/x"],
        1,
        ["reason:  secret_to_unbound_host", "real value of secret 'api_token'"],
    ),
]


@pytest.mark.parametrize(("args", "code", "parts"), CHECKS, ids=[" ".join(c[0]) for c in CHECKS])
def test_check(cfg: Path, upstream: Upstream, args: list[str], code: int, parts: list[str]) -> None:
    r = egress("check", "--config", str(cfg), *[a.format(port=upstream.port) for a in args])
    assert r.returncode == code, r.stdout + r.stderr
    for part in parts:
        assert part in r.stdout
    assert upstream.connections == 0, "check must not send anything"
    assert_no_secret(r.stdout, r.stderr)
    assert OTHER_SECRET not in r.stdout


def test_check_refuses_like_a_proxy_that_cannot_start(cfg: Path, upstream: Upstream) -> None:
    """A required secret that cannot be loaded stops egress run; check exits 2 with the
    same message instead of deciding anything."""
    env = proxy_env()
    del env["EGRESS_TEST_API_TOKEN"]
    r = egress("check", "--config", str(cfg), f"https://api.egress.test:{upstream.port}/x", env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "egress: error: secret 'api_token' (env:EGRESS_TEST_API_TOKEN): "
        "$EGRESS_TEST_API_TOKEN is not set"
    )
    r = egress("check", "--config", str(cfg), "--no-secrets",
               f"https://api.egress.test:{upstream.port}/x", env=env)  # fmt: skip
    assert r.returncode == 0 and "secrets not loaded (--no-secrets)" in r.stdout


def test_two_proxies_never_share_a_ca_file(cfg: Path, upstream: Upstream, tmp_path: Path) -> None:
    """A second egress on the same ca.cert_path is refused (it would replace the certificate
    the first one's clients trust); egress exec keeps its CA private and touches no file
    another egress uses, while it runs through a proxy of its own."""
    from tests.conftest import start_proxy

    first = start_proxy(cfg, tmp_path)
    try:
        ca_before = first.ca.read_bytes()
        second = egress("run", "--config", str(cfg))
        assert second.returncode != 0
        assert "ca.cert_path" in second.stderr and "another running egress" in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr
        script = (f'curl -sS --fail-with-body -o /dev/null https://{API}:{upstream.port}/via-exec-ca '
                  '&& echo "$SSL_CERT_FILE"')  # fmt: skip
        r = egress("exec", "--config", str(cfg), "--", "sh", "-c", script)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() != str(first.ca)  # exec trusted a CA file of its own
        assert not Path(r.stdout.strip()).exists()  # removed when exec ended
        assert first.ca.read_bytes() == ca_before  # the running proxy's CA is untouched
        # The first proxy's clients still verify against it.
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", first.url,
                              "--cacert", str(first.ca), f"https://{API}:{upstream.port}/still"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.stdout == "200", out.stderr
    finally:
        assert first.stop() == 0
    # Once the first one has stopped, the path is free again.
    again = start_proxy(cfg, tmp_path)
    assert again.stop() == 0


@pytest.mark.parametrize("command", ["run", "exec", "check", "review", "learn", "doctor"])
def test_subcommand_help_has_a_description_examples_and_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from egress.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "exit codes" in out.lower() and "egress " + command in out, out
