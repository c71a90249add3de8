"""Agents as principals (docs/agents.md): two agents with their own credentials through one
running egress, each reaching only its own hosts and getting only its own secrets."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.canary import CANARIES
from tests.conftest import (
    API,
    OTHER,
    OTHER_SECRET,
    SECRET,
    RunningProxy,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

ALPHA_TOKEN = "alpha-proxy-token-7f3e9a1c2b"  # from the environment
BETA_TOKEN = "beta-proxy-token-0d4c8e2a6f"  # only its SHA-256 is in the config
CANARIES.update({ALPHA_TOKEN, BETA_TOKEN})
API_PLACEHOLDER = "egress-api_token-placeholder"
OTHER_PLACEHOLDER = "sk-EGRESSPLACEHOLDEROTHER0000"


def agents_config(tmp: Path, ca_file: Path, port: int, plain_port: int) -> dict[str, Any]:
    cfg = base_config(tmp, ca_file, port, plain_port)
    # Shared: API (https and plain http). alpha: nothing more, api_token. beta: OTHER too,
    # other_token only.
    cfg["allow"] = [r for r in cfg["allow"] if r["host"] == API]
    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [
        {"name": "alpha", "token": {"env": "EGRESS_AGENT_ALPHA"}, "secrets": ["api_token"]},
        {"name": "beta", "token": {"sha256": hashlib.sha256(BETA_TOKEN.encode()).hexdigest()},
         "allow": [{"host": OTHER, "ports": [port]}], "secrets": ["other_token"]},
    ]  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def agents_proxy(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, plain_upstream: Upstream,
    test_ca_file: Path,
) -> Iterator[RunningProxy]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("agents")
    cfg = agents_config(tmp, test_ca_file, upstream.port, plain_upstream.port)
    p = start_proxy(write_config(tmp, cfg), tmp, proxy_env(EGRESS_AGENT_ALPHA=ALPHA_TOKEN))
    yield p
    assert p.stop() == 0, p.stderr_path.read_text()


def curl(
    p: RunningProxy, url: str, *args: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = ["curl", "-sS", "--max-time", "20", "--proxy", p.url, "--cacert", str(p.ca),
           "-w", "\n%{http_code} %{http_connect}", *args, url]  # fmt: skip
    if user is not None:
        cmd[1:1] = ["--proxy-user", user]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert_no_secret(done.stdout, done.stderr)
    for token in (ALPHA_TOKEN, BETA_TOKEN):
        assert token not in done.stdout
    return done


def codes(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    code, connect = done.stdout.rsplit("\n", 1)[-1].split(" ")
    return code, connect


def last_record(p: RunningProxy, path_part: str = "") -> dict[str, Any]:
    records = [r for r in p.audit() if path_part in (r.get("path") or "") or not path_part]
    assert records, "no audit record"
    return records[-1]


ALPHA = f"alpha:{ALPHA_TOKEN}"
BETA = f"beta:{BETA_TOKEN}"


@pytest.mark.parametrize(
    "who, host, placeholder, expect_code, expect_connect, reason, injected",
    [
        # Each agent reaches the shared host and its own, with its own secret.
        (ALPHA, API, API_PLACEHOLDER, "200", "200", "allowed", SECRET),
        (BETA, OTHER, OTHER_PLACEHOLDER, "200", "200", "allowed", OTHER_SECRET),
        # Not the other agent's host.
        (ALPHA, OTHER, OTHER_PLACEHOLDER, "000", "403", "host_not_allowed", None),
        # The shared host, but not the other agent's secret (placeholders are no secret).
        (BETA, API, API_PLACEHOLDER, "403", "200", "secret_not_granted", None),
        # No credential, a wrong one, an unknown agent, a token for the other agent.
        (None, API, API_PLACEHOLDER, "000", "407", "proxy_auth_required", None),
        ("alpha:wrong-token", API, API_PLACEHOLDER, "000", "407", "proxy_auth_failed", None),
        (f"gamma:{ALPHA_TOKEN}", API, API_PLACEHOLDER, "000", "407", "proxy_auth_failed", None),
        (f"beta:{ALPHA_TOKEN}", API, API_PLACEHOLDER, "000", "407", "proxy_auth_failed", None),
        (f"alpha:{ALPHA_TOKEN}x", API, API_PLACEHOLDER, "000", "407", "proxy_auth_failed", None),
        (f"alpha:{ALPHA_TOKEN[:-1]}", API, API_PLACEHOLDER, "000", "407", "proxy_auth_failed", None),
    ],
    # Ids without the tokens: pytest puts the current test's id in the environment.
    ids=["alpha-own", "beta-own", "alpha-other-host", "beta-other-secret", "no-credential",
         "wrong-token", "unknown-agent", "other-agents-token", "token-plus-one", "token-minus-one"],
)  # fmt: skip
def test_each_agent_gets_its_own_hosts_and_secrets(
    agents_proxy: RunningProxy, upstream: Upstream, who: str | None, host: str,
    placeholder: str, expect_code: str, expect_connect: str, reason: str, injected: str | None,
) -> None:  # fmt: skip
    p = agents_proxy
    before = len(p.audit())
    done = curl(p, f"https://{host}:{upstream.port}/agents/{reason}",
                "-H", f"Authorization: Bearer {placeholder}", user=who)  # fmt: skip
    assert codes(done) == (expect_code, expect_connect), done.stderr
    records = p.audit()[before:]
    assert [r["reason"] for r in records] == [reason]
    agent = (
        who.split(":")[0]
        if who and reason not in ("proxy_auth_required", "proxy_auth_failed")
        else None
    )
    assert records[0]["agent"] == agent
    if injected is not None:
        assert upstream.recorder.requests[-1].headers["authorization"] == f"Bearer {injected}"
        assert records[0]["secrets"] and records[0]["secrets"][0] in ("api_token", "other_token")
    else:
        assert all(
            f"Bearer {s}" not in str(r.headers)
            for r in upstream.recorder.requests
            for s in (SECRET, OTHER_SECRET)
        )


def test_a_refused_credential_says_how_to_give_one(
    agents_proxy: RunningProxy, upstream: Upstream
) -> None:
    """407 with a Proxy-Authenticate challenge, the reason in the status line and body."""
    done = subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "20", "--proxy", agents_proxy.url, "--cacert",
         str(agents_proxy.ca), f"https://{API}:{upstream.port}/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "HTTP/1.1 407 Proxy Authentication Required (egress: proxy_auth_required" in done.stderr
    assert 'proxy-authenticate: basic realm="egress"' in done.stderr.lower()
    assert "x-egress-reason: proxy_auth_required" in done.stderr


@pytest.mark.parametrize(
    "who, expect, reason, agent",
    [
        (ALPHA, "200", "allowed", "alpha"),
        (BETA, "200", "allowed", "beta"),
        (None, "407", "proxy_auth_required", None),
        ("beta:nope", "407", "proxy_auth_failed", None),
    ],
    ids=["alpha", "beta", "none", "wrong"],
)  # fmt: skip
def test_plain_http_proxy_requests_show_their_credential_each_time(
    agents_proxy: RunningProxy, plain_upstream: Upstream, who: str | None, expect: str,
    reason: str, agent: str | None,
) -> None:  # fmt: skip
    p = agents_proxy
    before = len(p.audit())
    done = curl(p, f"http://{API}:{plain_upstream.port}/plain", user=who)
    assert codes(done)[0] == expect
    records = p.audit()[before:]
    assert [(r["reason"], r["agent"]) for r in records] == [(reason, agent)]
    if expect == "200":
        assert all(
            k.lower() != "proxy-authorization" for k in plain_upstream.recorder.requests[-1].headers
        )


def test_an_agent_token_leaves_the_environment(agents_proxy: RunningProxy) -> None:
    environ = Path(f"/proc/{agents_proxy.proc.pid}/environ").read_bytes()
    assert ALPHA_TOKEN.encode() not in environ
    assert b"EGRESS_AGENT_ALPHA=" + b"*" * len(ALPHA_TOKEN) in environ  # overwritten in place


def test_the_upstream_never_sees_the_proxy_credential(
    agents_proxy: RunningProxy, upstream: Upstream
) -> None:
    done = curl(agents_proxy, f"https://{API}:{upstream.port}/headers", "-H",
                f"Proxy-Authorization: Basic {BETA_TOKEN}", user=ALPHA)  # fmt: skip
    assert codes(done)[0] == "200"
    sent = upstream.recorder.requests[-1].headers
    assert all(k.lower() != "proxy-authorization" for k in sent)
    assert ALPHA_TOKEN not in json.dumps(dict(sent)) and BETA_TOKEN not in json.dumps(dict(sent))


@pytest.mark.parametrize(
    "agent, host, placeholder, reason",
    [
        ("alpha", API, API_PLACEHOLDER, "allowed"),
        ("beta", OTHER, OTHER_PLACEHOLDER, "allowed"),
        ("alpha", OTHER, OTHER_PLACEHOLDER, "host_not_allowed"),
        ("beta", API, API_PLACEHOLDER, "secret_not_granted"),
    ],
)
def test_check_decides_as_the_agent_like_the_proxy(
    tmp_path: Path, upstream: Upstream, plain_upstream: Upstream, test_ca_file: Path,
    agent: str, host: str, placeholder: str, reason: str,
) -> None:  # fmt: skip
    """`egress check --agent` gives the reason the running proxy gave in the table above."""
    cfg = write_config(
        tmp_path, agents_config(tmp_path, test_ca_file, upstream.port, plain_upstream.port)
    )
    done = subprocess.run(
        [*egress_cmd("check", "--config", str(cfg), "--no-secrets", "--format", "json", "--agent", agent),
         "-H", f"Authorization: Bearer {placeholder}", f"https://{host}:{upstream.port}/agents/x"],
        capture_output=True, text=True, timeout=60, env=proxy_env(),
    )  # fmt: skip
    assert json.loads(done.stdout)[0]["reason"] == reason, done.stdout + done.stderr


@pytest.mark.parametrize(
    "args, error",
    [
        ([], "defines agents (alpha, beta): say which one asks with --agent NAME"),
        (["--agent", "gamma"], "--agent gamma: not an agent of"),
    ],
)
def test_check_needs_a_known_agent(tmp_path: Path, upstream: Upstream, plain_upstream: Upstream,
                                   test_ca_file: Path, args: list[str], error: str) -> None:  # fmt: skip
    cfg = write_config(
        tmp_path, agents_config(tmp_path, test_ca_file, upstream.port, plain_upstream.port)
    )
    done = subprocess.run([*egress_cmd("check", "--config", str(cfg), "--no-secrets", *args),
                           f"https://{API}/"], capture_output=True, text=True, timeout=60, env=proxy_env())  # fmt: skip
    assert done.returncode == 2 and error in done.stderr, done.stderr


def test_a_fixed_identity_attributes_every_request_to_its_agent(
    tmp_path: Path, upstream: Upstream, plain_upstream: Upstream, test_ca_file: Path
) -> None:
    """A sidecar: one agent, no credential asked; a credential the agent sends changes nothing."""
    cfg = base_config(tmp_path, test_ca_file, upstream.port, plain_upstream.port)
    cfg["allow"] = [r for r in cfg["allow"] if r["host"] == API]
    cfg["identity"] = {"fixed": "solo"}
    cfg["agents"] = [{"name": "solo", "allow": [{"host": OTHER, "ports": [upstream.port]}],
                      "secrets": ["other_token"]}]  # fmt: skip
    cfg["admin"] = {"port": 0}
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        ok = curl(p, f"https://{OTHER}:{upstream.port}/solo", "-H", f"Authorization: Bearer {OTHER_PLACEHOLDER}",
                  user="beta:anything")  # fmt: skip
        assert codes(ok)[0] == "200"
        assert upstream.recorder.requests[-1].headers["authorization"] == f"Bearer {OTHER_SECRET}"
        refused = curl(
            p,
            f"https://{API}:{upstream.port}/solo",
            "-H",
            f"Authorization: Bearer {API_PLACEHOLDER}",
        )
        assert codes(refused)[0] == "403"
        assert [(r["agent"], r["reason"]) for r in p.audit()] == [
            ("solo", "allowed"),
            ("solo", "secret_not_granted"),
        ]
        admin = re.search(r"admin listener on (http://127\.0\.0\.1:\d+)", p.stderr_path.read_text())
        assert admin
        metrics = urllib.request.urlopen(admin.group(1) + "/metrics", timeout=10).read().decode()
        assert 'egress_agent_requests_total{agent="solo",decision="allow"} 1.0' in metrics
        assert 'egress_agent_requests_total{agent="solo",decision="deny"} 1.0' in metrics
    finally:
        assert p.stop() == 0


# --- from an adversarial review: grants beyond placeholders, tokens in messages, reports -----

AZ_HOST = "egressacct.blob.core.windows.net"


def _azure_config(tmp: Path) -> Path:
    cfg = {
        "allow": [{"host": AZ_HOST}, {"host": "10.9.0.0/16"}],
        "identity": {"proxy_authorization": True},
        "agents": [
            {"name": "alpha", "token": {"sha256": "0" * 64}, "secrets": ["az"],
             "allow": [{"host": "internal.test"}, {"host": "10.0.0.0/8"}]},
            {"name": "beta", "token": {"sha256": "1" * 64}, "mode": "report"},
        ],
        "secrets": [{"name": "az", "scheme": "azure_shared_key", "hosts": [AZ_HOST],
                     "source": {"env": "EGRESS_TEST_API_TOKEN"}, "azure": {"account": "egressacct"}}],
        "upstream": {"resolve": {"internal.test": "10.1.2.3", AZ_HOST: "20.60.1.1"}, "dns": "static"},
        "audit": {"path": str(tmp / "audit.jsonl")},
    }  # fmt: skip
    return write_config(tmp, cfg)


def _check(cfg: Path, agent: str, url: str, *headers: str) -> dict[str, Any]:
    argv = [
        *egress_cmd(
            "check", "--config", str(cfg), "--no-secrets", "--format", "json", "--agent", agent
        )
    ]
    for h in headers:
        argv += ["-H", h]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=60, env=proxy_env())
    return json.loads(done.stdout)[0]


@pytest.mark.parametrize(
    "agent, url, reason",
    [
        # A Shared Key secret signs on the account name alone, with no placeholder: still
        # only for the agents it is granted to.
        ("alpha", f"https://{AZ_HOST}/c?comp=list", "allowed"),
        ("beta", f"https://{AZ_HOST}/c?comp=list", "secret_not_granted"),
        # An agent's address rules open private ranges for it alone.
        ("alpha", "https://internal.test/", "allowed"),
        ("beta", "https://internal.test/", "host_not_allowed"),
    ],
)
def test_grants_cover_secrets_without_placeholders_and_ranges_are_per_agent(
    tmp_path: Path, agent: str, url: str, reason: str
) -> None:
    got = _check(_azure_config(tmp_path), agent, url, "x-ms-version: 2025-01-05",
                 "Authorization: SharedKey egressacct:" + "A" * 43 + "=")  # fmt: skip
    assert got["reason"] == reason, got
    if agent == "beta" and reason == "host_not_allowed":
        assert got.get("would_deny") == "host_not_allowed"  # beta is in report mode


def test_a_report_mode_agent_is_a_review_finding(tmp_path: Path) -> None:
    done = subprocess.run([*egress_cmd("review", "--config", str(_azure_config(tmp_path)), "--format", "json")],
                          capture_output=True, text=True, timeout=60, env=proxy_env())  # fmt: skip
    report = json.loads(done.stdout)
    found = [
        (f["id"], f["location"]["key"]) for f in report["findings"] if f["id"] == "report_mode"
    ]
    assert found == [("report_mode", "agents[1].mode")], report["findings"]
    # The reach matrix has an agent axis: az only for alpha.
    assert {(r["secret"], r["agent"]) for r in report["reach"]} == {("az", "alpha")}
    assert any(h["rule"] == "agents[0].allow[0]" for h in report["hosts"])


# --- groups and the locked layer ----------------------------------------------------------


def _layered_config(tmp: Path, port: int, ca_file: Path, plain_port: int) -> Path:
    cfg = base_config(tmp, ca_file, port, plain_port)
    cfg["allow"] = [r for r in cfg["allow"] if r["host"] == API and r.get("schemes") != ["http"]]
    cfg["allow"].append({"host": OTHER, "ports": [port]})  # shared, but locked below
    cfg["locked"] = {"deny": [OTHER], "hosts": [API, "*.egress.test"]}
    cfg["groups"] = [{"name": "coders", "secrets": ["api_token"]}]
    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [
        {"name": "alpha", "token": {"env": "EGRESS_AGENT_ALPHA"}, "groups": ["coders"]},
        {"name": "beta", "token": {"sha256": hashlib.sha256(BETA_TOKEN.encode()).hexdigest()},
         "mode": "report"},
    ]  # fmt: skip
    return write_config(tmp, cfg)


@pytest.mark.parametrize(
    "who, host, placeholder, connect, reason, injected",
    [
        # alpha gets api_token through its group.
        (ALPHA, API, API_PLACEHOLDER, "200", "allowed", SECRET),
        # beta is in no group: the shared host, not the group's secret.
        (BETA, API, API_PLACEHOLDER, "200", "secret_not_granted", None),
        # OTHER is in the shared allow:, but locked.deny wins, for alpha and for beta in
        # report mode alike.
        (ALPHA, OTHER, OTHER_PLACEHOLDER, "403", "host_locked", None),
        (BETA, OTHER, OTHER_PLACEHOLDER, "403", "host_locked", None),
    ],
    ids=["group-secret", "no-group", "locked", "locked-in-report-mode"],
)  # fmt: skip
def test_groups_grant_and_the_locked_layer_holds(
    tmp_path: Path, upstream: Upstream, plain_upstream: Upstream, test_ca_file: Path,
    who: str, host: str, placeholder: str, connect: str, reason: str, injected: str | None,
) -> None:  # fmt: skip
    cfg = _layered_config(tmp_path, upstream.port, test_ca_file, plain_upstream.port)
    p = start_proxy(cfg, tmp_path, proxy_env(EGRESS_AGENT_ALPHA=ALPHA_TOKEN))
    try:
        done = curl(p, f"https://{host}:{upstream.port}/layered", "-H", f"Authorization: Bearer {placeholder}",
                    user=who)  # fmt: skip
        assert codes(done)[1] == connect, done.stderr
        assert [r["reason"] for r in p.audit()] == [reason]
        if injected:
            assert upstream.recorder.requests[-1].headers["authorization"] == f"Bearer {injected}"
        else:
            assert not upstream.recorder.requests
    finally:
        assert p.stop() == 0
    agent = who.split(":")[0]
    check = _check(
        cfg,
        agent,
        f"https://{host}:{upstream.port}/layered",
        f"Authorization: Bearer {placeholder}",
    )
    assert check["reason"] == reason  # egress check agrees with the proxy


@pytest.mark.parametrize(
    "deny, host, reason",
    [
        # A deny entry takes a name and everything under it, whichever way it is written.
        (["*.pastebin.test"], "pastebin.test", "host_locked"),
        (["*.pastebin.test"], "www.pastebin.test", "host_locked"),
        (["pastebin.test"], "a.b.pastebin.test", "host_locked"),
        (["pastebin.test"], "notpastebin.test", "allowed"),
        # An address entry: also when a name leads there (egress never dials it).
        (["169.254.0.0/16"], "meta.test", "host_locked"),
        (["169.254.0.0/16"], "169.254.169.254", "host_locked"),
        (["10.9.0.0/16"], "meta.test", "allowed"),
    ],
)
def test_locked_deny_covers_names_below_and_addresses_behind_names(
    tmp_path: Path, deny: list[str], host: str, reason: str
) -> None:
    cfg = write_config(tmp_path, {
        "allow": [{"host": "*.pastebin.test"}, {"host": "pastebin.test"}, {"host": "notpastebin.test"},
                  {"host": "meta.test"}, {"host": "169.254.0.0/16"}],
        "locked": {"deny": deny},
        "upstream": {"dns": "static", "allow_private": ["169.254.0.0/16"],
                     "resolve": {"meta.test": "169.254.169.254", "pastebin.test": "20.1.1.1",
                                 "www.pastebin.test": "20.1.1.1", "a.b.pastebin.test": "20.1.1.1",
                                 "notpastebin.test": "20.1.1.2"}},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    })  # fmt: skip
    done = subprocess.run([*egress_cmd("check", "--config", str(cfg), "--no-secrets", "--format", "json"),
                           f"https://{host}/"], capture_output=True, text=True, timeout=60, env=proxy_env())  # fmt: skip
    assert json.loads(done.stdout)[0]["reason"] == reason, done.stdout


def test_a_name_resolving_to_a_locked_address_is_refused_by_the_proxy(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["locked"] = {"deny": ["127.0.0.1/32"]}  # API resolves there
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        done = curl(p, f"https://{API}:{upstream.port}/locked")
        assert codes(done)[1] == "403"
        assert [r["reason"] for r in p.audit()] == ["host_locked"]
        assert not upstream.recorder.requests
    finally:
        assert p.stop() == 0


def test_a_report_mode_agent_stays_inside_locked_hosts(
    tmp_path: Path, upstream: Upstream, plain_upstream: Upstream, test_ca_file: Path
) -> None:
    """Report mode lets an agent through to hosts its rules lack, but never past the
    admin's locked.hosts (and the shared rules)."""
    cfg = base_config(tmp_path, test_ca_file, upstream.port, plain_upstream.port)
    cfg["allow"] = [r for r in cfg["allow"] if r["host"] == API and r.get("schemes") != ["http"]]
    cfg["secrets"] = cfg["secrets"][:1]  # other_token's host has no rule here
    cfg["locked"] = {"hosts": [OTHER]}
    cfg["identity"] = {"fixed": "beta"}
    cfg["agents"] = [{"name": "beta", "mode": "report"}]
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        inside = curl(p, f"https://{OTHER}:{upstream.port}/inside")  # no rule, inside locked.hosts
        outside = curl(p, f"https://www.example.test:{upstream.port}/outside")
        assert codes(inside)[0] == "200" and codes(outside)[1] == "403"
        records = p.audit()
        assert [(r["host"], r["reason"], r["would_deny"]) for r in records] == [
            (OTHER, "allowed", "host_not_allowed"),
            ("www.example.test", "host_not_allowed", None),
        ]
    finally:
        assert p.stop() == 0


@pytest.mark.parametrize(
    "token, error",
    [
        (
            {"env": "EGRESS_AGENT_NOT_SET"},
            "agents[0].token (env:EGRESS_AGENT_NOT_SET): the variable is not set or empty",
        ),
        ({"file": "missing-token"}, "agents[0].token (file:"),
        ({"file": "empty-token"}, "the file is empty"),
    ],
    ids=["env", "missing-file", "empty-file"],
)
def test_an_unreadable_agent_token_stops_the_start_with_a_clear_error(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path, token: dict[str, str], error: str
) -> None:
    (tmp_path / "empty-token").write_text("\n")
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [{"name": "alpha", "token": token, "secrets": ["api_token"]}]
    done = subprocess.run(egress_cmd("run", "--config", str(write_config(tmp_path, cfg))),
                          capture_output=True, text=True, timeout=60, env=proxy_env())  # fmt: skip
    assert done.returncode != 0 and error in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
