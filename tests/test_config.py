"""Every bad config gives one clear error naming the file, the key path and the problem."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from egress import config
from egress.errors import ConfigError
from tests.conftest import egress_cmd, proxy_env

BAD = [
    # agents (docs/agents.md)
    ("agents without identity", "allow: [a.com]\nagents: [{name: a, token: {env: T}}]\n",
     "identity: with agents: say how egress tells them apart"),
    ("identity without agents", "allow: [a.com]\nidentity: {fixed: a}\n", "identity: there are no agents"),
    ("identity both ways", "allow: [a.com]\nidentity: {fixed: a, proxy_authorization: true}\nagents: [{name: a, token: {env: T}}]\n",
     "identity: choose one"),
    ("fixed unknown agent", "allow: [a.com]\nidentity: {fixed: researcher}\nagents: [{name: researchr}]\n",
     "identity.fixed: 'researcher' is not an agent: did you mean 'researchr'?"),
    ("fixed with two agents", "allow: [a.com]\nidentity: {fixed: a}\nagents: [{name: a}, {name: b}]\n",
     "identity.fixed: a fixed identity serves one agent, but 2 are defined"),
    ("proxy auth without token", "allow: [a.com]\nidentity: {proxy_authorization: true}\nagents: [{name: a}]\n",
     "agents[0].token: agent 'a' needs a token"),
    ("proxy auth transparent", "listen: {mode: transparent}\nallow: [a.com]\nidentity: {proxy_authorization: true}\nagents: [{name: a, token: {env: T}}]\n",
     "identity.proxy_authorization: transparent mode carries no proxy credential"),
    ("agent name", "allow: [a.com]\nidentity: {fixed: Bad Name}\nagents: [{name: Bad Name}]\n",
     "agents[0].name: 'Bad Name' must be 1-63 lower-case letters"),
    ("agent twice", "allow: [a.com]\nidentity: {proxy_authorization: true}\nagents: [{name: a, token: {env: T}}, {name: a, token: {env: U}}]\n",
     "agents[1].name: 'a' is defined twice"),
    ("agent unknown key", "allow: [a.com]\nidentity: {fixed: a}\nagents: [{name: a, alow: []}]\n",
     "agents[0].alow: unknown key: did you mean 'allow'?"),
    ("agent rule", "allow: [a.com]\nidentity: {fixed: a}\nagents: [{name: a, allow: [{host: '*'}]}]\n",
     "agents[0].allow[0].host: a bare '*' would allow every host"),
    ("agent unknown secret", "allow: [a.com]\nidentity: {fixed: a}\nagents: [{name: a, secrets: [gh_token]}]\nsecrets:\n  - {name: gh, source: {env: X}, hosts: [a.com]}\n",
     "agents[0].secrets: 'gh_token' is not a secret: secrets: gh"),
    ("agent token two ways", "allow: [a.com]\nidentity: {proxy_authorization: true}\nagents: [{name: a, token: {env: T, file: f}}]\n",
     "agents[0].token: give exactly one of sha256"),
    ("agent token sha256", "allow: [a.com]\nidentity: {proxy_authorization: true}\nagents: [{name: a, token: {sha256: abc}}]\n",
     "agents[0].token.sha256: must be 64 lower-case hex digits"),
    ("agent mode", "allow: [a.com]\nidentity: {fixed: a}\nagents: [{name: a, mode: audit}]\n",
     "agents[0].mode: 'audit' is not one of enforce, report"),
    ("group unknown", "allow: [a.com]\nidentity: {fixed: a}\ngroups: [{name: coders}]\nagents: [{name: a, groups: [coder]}]\n",
     "agents[0].groups[0]: 'coder' is not a group: did you mean 'coders'?"),
    ("groups without agents", "allow: [a.com]\ngroups: [{name: coders}]\n", "groups: groups serve agents"),
    ("group unknown secret", "allow: [a.com]\nidentity: {fixed: a}\ngroups: [{name: g, secrets: [nope]}]\nagents: [{name: a, groups: [g]}]\n",
     "groups[0].secrets: 'nope' is not a secret"),
    ("agent rule outside locked.hosts", "allow: [a.com]\nlocked: {hosts: [a.com, '*.b.com']}\nidentity: {fixed: a}\nagents: [{name: a, allow: [x.b.com, evil.com]}]\n",
     "agents[0].allow[1].host: 'evil.com' is outside locked.hosts (a.com, *.b.com)"),
    ("group rule outside locked.hosts", "allow: [a.com]\nlocked: {hosts: [a.com]}\nidentity: {fixed: a}\ngroups: [{name: g, allow: ['*.a.com']}]\nagents: [{name: a, groups: [g]}]\n",
     "groups[0].allow[0].host: '*.a.com' is outside locked.hosts"),
    ("locked hosts without agents", "allow: [a.com]\nlocked: {hosts: [a.com]}\n", "locked.hosts: limits what agents'"),
    ("locked bad pattern", "allow: [a.com]\nlocked: {deny: ['*']}\n", "locked.deny[0]: a bare '*' would allow every host"),
    ("secret host only an agent allows", "allow: [a.com]\nidentity: {fixed: a}\nagents: [{name: a, allow: [b.com]}]\nsecrets:\n  - {name: t, source: {env: X}, hosts: [c.com]}\n",
     "secrets[0].hosts[0]: 'c.com' is not allowed by any rule"),
    # (id, yaml, expected "<key>: <message part>")
    ("unknown top key", "allow: []\nalow: []\n", "alow: unknown key: did you mean 'allow'?"),
    ("unknown rule key", "allow:\n  - host: a.com\n    port: [443]\n", "allow[0].port: unknown key: did you mean 'ports'?"),
    ("public suffix wildcard", "allow:\n  - host: a.com\n  - host: b.com\n  - host: c.com\n  - host: '*.com'\n",
     "allow[3].host: '*.com' would allow every host under the public suffix 'com'"),
    ("bare star", "allow:\n  - host: '*'\n", "allow[0].host: a bare '*' would allow every host"),
    ("host with scheme", "allow:\n  - host: https://a.com\n", "allow[0].host: 'https://a.com' has a scheme"),
    ("missing host", "allow:\n  - ports: [443]\n", "allow[0].host: is required"),
    ("bad port", "allow:\n  - host: a.com\n    ports: [70000]\n", "allow[0].ports[0]: '70000' is not a port number"),
    ("bad scheme", "allow:\n  - host: a.com\n    schemes: [ftp]\n", "allow[0].schemes[0]: 'ftp' is not a scheme"),
    ("bad method", "allow:\n  - host: a.com\n    methods: ['G T']\n", "allow[0].methods[0]: 'G T' is not an HTTP method"),
    ("bad path", "allow:\n  - host: a.com\n    paths: [repos]\n", "allow[0].paths[0]: 'repos' must be a path prefix"),
    ("allow not a list", "allow: a.com\n", "allow: must be a list of rules"),
    ("listen host name", "listen: {host: localhost}\n", "listen.host: 'localhost' must be an IP address"),
    ("listen mode", "listen: {mode: transparant}\n", "listen.mode: 'transparant' is not one of explicit, transparent"),
    ("transparent off loopback", "listen: {mode: transparent, host: 0.0.0.0}\n",
     "listen.host: '0.0.0.0': in transparent mode egress listens on loopback only"),
    ("listen port type", "listen: {port: '80'}\n", "listen.port: must be an integer, not a string"),
    ("ca validity", "ca: {validity_hours: 0}\n", "ca.validity_hours: 0 must be between 1 and 744"),
    ("missing ca file", "upstream: {ca_files: [nope.pem]}\n", "upstream.ca_files[0]: "),
    ("resolve bad address", "upstream: {resolve: {a.test: nope}}\n", "upstream.resolve.a.test: 'nope' is not an IP address"),
    ("secret missing source", "allow: [a.com]\nsecrets:\n  - name: t\n    hosts: [a.com]\n", "secrets[0].source: is required"),
    ("secret two sources", "allow: [a.com]\nsecrets:\n  - name: t\n    source: {env: X, file: f}\n    hosts: [a.com]\n",
     "secrets[0].source: give exactly one of"),
    ("secret file without key", "allow: [a.com]\nsecrets:\n  - name: t\n    source: {file: f}\n    hosts: [a.com]\n",
     "secrets[0].source.key: is required with 'file'"),
    ("secret unbound host", "allow: [a.com]\nsecrets:\n  - name: t\n    source: {env: X}\n    hosts: [b.com]\n",
     "secrets[0].hosts[0]: 'b.com' is not allowed by any rule under 'allow'"),
    ("secret bad surface", "allow: [a.com]\nsecrets:\n  - name: t\n    source: {env: X}\n    hosts: [a.com]\n    inject: [header]\n",
     "secrets[0].inject[0]: 'header' is not a surface: did you mean 'headers'?"),
    ("secret bad placeholder", "allow: [a.com]\nsecrets:\n  - name: t\n    source: {env: X}\n    hosts: [a.com]\n    placeholder: 'a b'\n",
     "secrets[0].placeholder: must be 8-256 characters"),
    ("secret bad name", "allow: [a.com]\nsecrets:\n  - name: 'my-token'\n    source: {env: X}\n    hosts: [a.com]\n",
     "secrets[0].name: 'my-token': use letters, digits and '_'"),
    ("secret unknown key", "allow: [a.com]\nsecrets:\n  - name: t\n    source: {env: X}\n    hosts: [a.com]\n    host: a.com\n",
     "secrets[0].host: unknown key: did you mean 'hosts'?"),
    ("duplicate secret", "allow: [a.com]\nsecrets:\n  - {name: t, source: {env: X}, hosts: [a.com]}\n  - {name: t, source: {env: Y}, hosts: [a.com]}\n",
     "secrets[1].name: 't' is already used by secrets[0]"),
    ("overlapping placeholders", "allow: [a.com]\nsecrets:\n  - {name: t, source: {env: X}, hosts: [a.com], placeholder: abcdefgh}\n"
     "  - {name: u, source: {env: Y}, hosts: [a.com], placeholder: abcdefghij}\n",
     "secrets[0].placeholder: is contained in the placeholder of secrets[1] (u)"),
    ("bool as int", "limits: {max_body_bytes: true}\n", "limits.max_body_bytes: must be an integer, not a boolean"),
    ("int as string", "audit: {path: 5}\n", "audit.path: must be a string, not int"),
    ("agent proxy url", "agent: {dir: shared, proxy_url: 'https://x'}\n", "agent.proxy_url: 'https://x' must be an http:// URL"),
    ("bool port", "allow:\n  - {host: a.com, ports: [true]}\n", "allow[0].ports[0]: must be a string or number, not a boolean"),
    ("secret host with no rules", "secrets:\n  - {name: t, source: {env: X}, hosts: [a.com]}\n",
     "secrets[0].hosts[0]: 'a.com' is not allowed by any rule under 'allow'"),
    ("invalid yaml", "allow: [a.com\n", "invalid YAML"),
    ("empty file", "", "the file is empty"),
    ("top level list", "- a\n", "must be a mapping, not a list"),
]  # fmt: skip


@pytest.mark.parametrize(("yaml_text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_file_key_and_problem(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    lines = str(e.value).splitlines()
    assert any(line.startswith(f"{path}: ") and expected in line for line in lines), str(e.value)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("allow:\n  - host: '*'\n  - host: a.com\n    ports: [0]\nlisten: {prot: 1}\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    keys = [p.key for p in e.value.problems]
    assert keys == ["listen.prot", "allow[0].host", "allow[1].ports[0]"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        config.load(tmp_path / "nope.yaml")


def test_example_and_default_configs_are_valid() -> None:
    root = Path(__file__).parent.parent
    example = config.load(root / "config" / "egress.yaml")
    assert [r.host.text for r in example.rules][:2] == ["api.github.com", "github.com"]
    default = config.load_default()
    assert default.path == config.EMBEDDED_DEFAULT
    assert all(not s.required for s in default.secrets)
    assert config.load(root / "config" / "egress-vault.yaml").vault is not None


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("allow:\n  - a.com\n  - {host: b.com, schemes: [http, https]}\nsecrets:\n"
                    "  - {name: tok, source: {env: X}, hosts: [a.com]}\n")  # fmt: skip
    cfg = config.load(path)
    assert cfg.listen_host == "127.0.0.1" and cfg.listen_port == 8080
    assert cfg.listen_mode == "explicit"
    assert cfg.ca_cert_path == tmp_path / "egress-ca.pem"
    a, b = cfg.rules
    assert (a.ports, a.schemes, a.methods, a.paths) == ((443,), ("https",), None, None)
    assert b.ports == (80, 443)
    path.write_text("allow:\n  - {host: a.com, ports: 8443}\n")
    assert config.load(path).rules[0].ports == (8443,)
    s = cfg.secrets[0]
    assert s.placeholder == "egress-tok-placeholder" and s.surfaces == {"headers"}
    assert s.required and not s.allow_http


@pytest.mark.parametrize("command", ["run", "check"])
def test_cli_refuses_bad_config(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("allow:\n  - host: '*.co.uk'\n")
    args = (
        ["run", "--config", str(path)]
        if command == "run"
        else ["check", "--config", str(path), "https://a.uk/"]
    )
    r = subprocess.run(
        egress_cmd(*args), capture_output=True, text=True, env=proxy_env(), timeout=60
    )
    assert r.returncode == 2
    assert f"{path}: allow[0].host: '*.co.uk' would allow every host" in r.stderr
    assert "Traceback" not in r.stderr and "listening" not in r.stderr


def test_auto_placeholders_are_random_and_shaped(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("allow: [api.test]\nsecrets:\n  - {name: k, source: {env: X}, hosts: [api.test], "
                    "placeholder: auto, placeholder_prefix: sk-ant-, placeholder_length: 48}\n")  # fmt: skip
    one, two = config.load(path).secrets[0].placeholder, config.load(path).secrets[0].placeholder
    assert one != two
    assert one.startswith("sk-ant-") and len(one) == 48
    path.write_text("allow: [api.test]\nsecrets:\n  - {name: k, source: {env: X}, hosts: [api.test], "
                    "placeholder_prefix: sk-}\n")  # fmt: skip
    with pytest.raises(
        ConfigError, match="placeholder_prefix and placeholder_length go with 'placeholder: auto'"
    ):
        config.load(path)


def test_transparent_defaults(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("listen: {mode: transparent}\nallow: [a.com]\n")
    cfg = config.load(path)
    # 15001: where `egress redirect` sends the agent's traffic by default
    assert (cfg.listen_mode, cfg.listen_host, cfg.listen_port) == (
        "transparent",
        "127.0.0.1",
        15001,
    )
    path.write_text("listen: {mode: transparent, host: '::1', port: 16000}\nallow: [a.com]\n")
    cfg = config.load(path)
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 16000)
