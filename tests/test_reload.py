"""Live reload (docs/reload.md): SIGHUP, a change of the config's files, a ConfigMap swap;
validated completely, swapped atomically, audited, counted; the old policy stays on error.

The proof is a real ``egress run`` with an echo upstream: requests keep flowing through
every reload and none fails because of one; what a reload adds is reachable and injected
at once, what it removes is refused at once, on new and on kept-alive connections, with
one process and with workers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from egress.ca import EphemeralCA, ca_constraints, covers, permits
from egress.config import parse
from egress.reload import (
    RESTART_ONLY,
    carry_placeholders,
    files_sha256,
    restart_only_changes,
    summarize,
)
from egress.secrets import SecretStore, SecretValue
from tests.canary import CANARIES
from tests.conftest import (
    API,
    OTHER,
    OTHER_SECRET,
    SECRET,
    RunningProxy,
    assert_no_secret,
    base_config,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

API_PH = "egress-api_token-placeholder"
OTHER_PH = "sk-EGRESSPLACEHOLDEROTHER0000"
THIRD_SECRET = "th1rd-s3cr3t-value-000042"
CANARIES.add(THIRD_SECRET)


# ---------------------------------------------------------------- pure parts, as tables


def _cfg(tmp: Path, data: dict[str, Any]) -> Any:
    return parse(data, str(tmp / "egress.yaml"), tmp)


def _base(tmp: Path) -> dict[str, Any]:
    (tmp / "s.env").write_text("T=value-of-t-0001\nU=value-of-u-0001\n")
    (tmp / "s.env").chmod(0o600)
    return {
        "ca": {"cert_path": str(tmp / "ca.pem")},
        "allow": ["api.test", "other.test"],
        "secrets": [{"name": "t", "source": {"file": str(tmp / "s.env"), "key": "T"},
                     "hosts": ["api.test"]}],
    }  # fmt: skip


# (id, change to the base config, the restart-only key it must name; None: reloadable)
CHANGES: list[tuple[str, Callable[[dict[str, Any]], None], str | None]] = [
    ("listen port", lambda d: d.update(listen={"port": 9999}), "listen"),
    ("listen mode", lambda d: d.update(listen={"mode": "transparent"}), "listen"),
    ("workers", lambda d: d.update(workers=3), "workers"),
    ("admin", lambda d: d.update(admin={"port": 9911}), "admin"),
    ("audit", lambda d: d.update(audit={"path": "stderr"}), "audit"),
    ("ca validity", lambda d: d["ca"].update(validity_hours=5), "ca"),
    ("limits", lambda d: d.update(limits={"max_body_bytes": 1000}), "limits"),
    ("reload settings", lambda d: d.update(reload={"interval_seconds": 9}), "reload"),
    ("agent dir", lambda d: d.update(agent={"dir": "/tmp/x-agent"}), "agent"),
    (
        "first vault secret",
        lambda d: d["secrets"].append(
            {"name": "v", "source": {"vault": {"path": "a/b", "key": "k"}}, "hosts": ["api.test"]}
        ),
        "Vault",
    ),  # fmt: skip
    # reloadable
    ("a rule added", lambda d: d["allow"].append("third.test"), None),
    ("a rule removed", lambda d: d["allow"].remove("other.test"), None),
    (
        "a secret added",
        lambda d: d["secrets"].append(
            {"name": "u", "source": {"file": "s.env", "key": "U"}, "hosts": ["other.test"]}
        ),
        None,
    ),
    ("a secret's hosts", lambda d: d["secrets"][0].update(hosts=["other.test"]), None),
    ("report mode", lambda d: d.update(mode="report"), None),
    ("static answers", lambda d: d.update(upstream={"resolve": {"api.test": "10.1.1.1"}}), None),
    ("locked layer", lambda d: d.update(locked={"deny": ["evil.test"]}), None),
]


@pytest.mark.parametrize(("change", "needs"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_what_only_a_restart_changes(tmp_path: Path, change: Callable[[dict[str, Any]], None],
                                     needs: str | None) -> None:  # fmt: skip
    old = _base(tmp_path)
    new = json.loads(json.dumps(old))
    change(new)
    found = restart_only_changes(_cfg(tmp_path, old), _cfg(tmp_path, new))
    if needs is None:
        assert found == []
    else:
        assert found and any(needs in f for f in found), found


def test_every_restart_only_key_is_in_the_table() -> None:
    """A key the table names is a key of the config: the table cannot drift silently."""
    from egress.config import TOP_KEYS

    keys = {k.split(".")[0] for k, _ in RESTART_ONLY}
    assert keys <= set(TOP_KEYS) and "allow" not in keys and "secrets" not in keys


def test_auto_placeholders_survive_a_reload(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["secrets"][0].update(placeholder="auto", placeholder_prefix="ph-")
    old, new = _cfg(tmp_path, data), _cfg(tmp_path, data)
    assert old.secrets[0].placeholder != new.secrets[0].placeholder  # random at each load
    kept = carry_placeholders(old, new)
    assert kept.secrets[0].placeholder == old.secrets[0].placeholder
    assert summarize(old, kept) == {}
    data["secrets"][0]["placeholder_length"] = 50  # other settings: a new placeholder
    changed = carry_placeholders(old, _cfg(tmp_path, data))
    assert changed.secrets[0].placeholder != old.secrets[0].placeholder
    assert len(changed.secrets[0].placeholder) == 50


def test_the_config_hash_is_the_files_bytes_in_order(tmp_path: Path) -> None:
    data = _base(tmp_path)
    (tmp_path / "frag.yaml").write_text("allow: [third.test]\n")
    data["include"] = ["frag.yaml"]
    main = tmp_path / "egress.yaml"
    main.write_text(yaml.safe_dump(data))
    from egress.config import load

    cfg = load(main)
    assert cfg.files == (main, tmp_path / "frag.yaml")
    joined = main.read_bytes() + (tmp_path / "frag.yaml").read_bytes()
    assert cfg.sha256 == hashlib.sha256(joined).hexdigest() == files_sha256(cfg.files)
    (tmp_path / "frag.yaml").write_text("allow: [fourth.test]\n")
    assert files_sha256(cfg.files) != cfg.sha256
    (tmp_path / "frag.yaml").unlink()
    assert files_sha256(cfg.files) is None


# (id, rules of the CA in force, rules of the new config, does the CA in force cover them)
COVERS = [
    ("same", ["api.test"], ["api.test"], True),
    ("fewer", ["api.test", "b.test"], ["api.test"], True),
    ("a new name", ["api.test"], ["api.test", "new.test"], False),
    ("below a wildcard", ["*.example.test"], ["deep.x.example.test"], True),
    ("the wildcard's own name", ["*.example.test"], ["example.test"], True),
    ("a sibling", ["a.example.test"], ["b.example.test"], False),
    ("a wider wildcard", ["*.a.example.test"], ["*.example.test"], False),
    ("a narrower range", ["10.0.0.0/8"], ["10.1.0.0/16"], True),
    ("a wider range", ["10.1.0.0/16"], ["10.0.0.0/8"], False),
    ("a first range", ["api.test"], ["api.test", "10.1.2.3"], False),
    ("nothing", ["api.test"], [], True),
]


@pytest.mark.parametrize(
    ("old", "new", "covered"), [c[1:] for c in COVERS], ids=[c[0] for c in COVERS]
)
def test_a_new_ca_only_for_names_outside_the_constraints(
    tmp_path: Path, old: list[str], new: list[str], covered: bool
) -> None:
    base = _base(tmp_path)
    base["secrets"] = []
    ca = EphemeralCA.create_with(ca_constraints(_cfg(tmp_path, {**base, "allow": old})), 1)
    wanted = ca_constraints(_cfg(tmp_path, {**base, "allow": new}))
    assert covers([ca], wanted) is covered
    if not covered:  # the CA a reload then makes covers them, and the pair covers everything
        extra = EphemeralCA.create_with(wanted, 1)
        assert covers([ca, extra], wanted) and covers([extra], wanted)


def test_report_mode_needs_an_unconstrained_ca(tmp_path: Path) -> None:
    base = _base(tmp_path)
    ca = EphemeralCA.create_with(ca_constraints(_cfg(tmp_path, base)), 1)
    report = ca_constraints(_cfg(tmp_path, {**base, "mode": "report"}))
    assert report is None and not covers([ca], report)
    loose = EphemeralCA.create_with(None, 1)
    assert covers([ca, loose], report) and permits(loose, "anything.example")
    assert permits(ca, "api.test") and not permits(ca, "anything.example")
    assert not permits(ca, "127.0.0.1")  # addresses are excluded without an address rule


def test_a_removed_secret_is_never_injected_and_still_scrubbed(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["secrets"].append({"name": "u", "source": {"file": str(tmp_path / "s.env"), "key": "U"},
                            "hosts": ["other.test"]})  # fmt: skip
    cfg = _cfg(tmp_path, data)
    store = SecretStore(cfg.secrets)
    store.load_all()
    keep = cfg.secrets[:1]
    store.replace(keep, {"t": store.sources["t"]}, {}, {})
    assert store.get("u") is None and store.get("t") == SecretValue("value-of-t-0001")
    known = {v.reveal() for _, v in store.known()}
    assert "value-of-u-0001" in known  # still never to reach a client
    for _ in range(3):  # removing it again and again keeps one copy
        store.replace(cfg.secrets, store.sources | {"u": store.sources["t"]},
                      {"u": SecretValue("value-of-u-0001")}, {})  # fmt: skip
        store.replace(keep, {"t": store.sources["t"]}, {}, {})
    assert sum(v.reveal() == "value-of-u-0001" for _, v in store.known()) == 1


# ---------------------------------------------------------------- a real egress run


class Reloading:
    """A running egress whose config file a test rewrites, with the reload records."""

    def __init__(self, proxy: RunningProxy, path: Path, upstream: Upstream):
        self.p, self.path, self.upstream = proxy, path, upstream

    def write(self, cfg: dict[str, Any] | str) -> None:
        text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False)
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.write_text(text)
        os.replace(tmp, self.path)  # as an editor or a ConfigMap does: never half a file

    def hup(self) -> None:
        self.p.proc.send_signal(signal.SIGHUP)

    def reloads(self) -> list[dict[str, Any]]:
        return [r for r in self.p.audit() if r.get("event") == "reload"]

    def wait(self, n: int, timeout: float = 30) -> dict[str, Any]:
        """The n-th reload record (1-based), once it is written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.reloads()
            if len(found) >= n:
                return found[n - 1]
            assert self.p.proc.poll() is None, self.p.stderr_path.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no reload record #{n}:\n" + self.p.stderr_path.read_text())

    def client(self, ca: Path | None = None, **kw: Any) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(ca or self.p.ca))
        return httpx.Client(proxy=self.p.url, verify=verify, timeout=20, **kw)

    def get(self, host: str, placeholder: str, client: httpx.Client | None = None) -> int | str:
        """The status, or the proxy's refusal of the CONNECT ("403 ...")."""
        url = f"https://{host}:{self.upstream.port}/reload"
        try:
            if client is not None:
                return client.get(
                    url, headers={"authorization": f"Bearer {placeholder}"}
                ).status_code
            with self.client() as c:
                return c.get(url, headers={"authorization": f"Bearer {placeholder}"}).status_code
        except httpx.ProxyError as e:
            return str(e).split(" (")[0]


@pytest.fixture
def reloading(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> Iterator[Callable[..., Reloading]]:
    started: list[Reloading] = []

    def start(cfg: dict[str, Any], env: dict[str, str] | None = None) -> Reloading:
        path = write_config(tmp_path, cfg)
        r = Reloading(start_proxy(path, tmp_path, env or proxy_env()), path, upstream)
        started.append(r)
        return r

    yield start
    for r in started:
        code = r.p.stop()
        err = r.p.stderr_path.read_text()
        assert code == 0, err
        assert "Traceback" not in err
        assert_no_secret(r.p.outputs())


def _one_host(tmp: Path, test_ca_file: Path, port: int, **extra: Any) -> dict[str, Any]:
    """API only, with its secret; the watcher off unless asked for."""
    cfg = base_config(tmp, test_ca_file, port)
    cfg["allow"] = cfg["allow"][:1]
    cfg["secrets"] = cfg["secrets"][:1]
    cfg["reload"] = {"watch": False}
    cfg.update(extra)
    return cfg


def _with_other(cfg: dict[str, Any], tmp: Path, port: int) -> dict[str, Any]:
    new = json.loads(json.dumps(cfg))
    new["allow"].append({"host": OTHER, "ports": [port]})
    new["secrets"].append(base_config(tmp, Path("x"), port)["secrets"][1])
    return new


class Traffic:
    """Requests to API in a loop, on a kept-alive connection and on new ones, while a test
    reloads: every one must succeed with the secret injected."""

    def __init__(self, r: Reloading):
        self.r, self.results, self._stop = r, list[Any](), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.r.client() as kept:
            while not self._stop.is_set():
                for c in (kept, None):
                    try:
                        self.results.append(self.r.get(API, API_PH, c))
                    except Exception as e:  # noqa: BLE001 (a failure is what the test looks for)
                        self.results.append(repr(e))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def check(self, at_least: int = 4) -> None:
        failed = [x for x in self.results if x != 200]
        assert not failed, failed[:5]
        assert len(self.results) >= at_least, self.results


def _wait_requests(traffic: Traffic, n: int) -> None:
    deadline = time.monotonic() + 30
    start = len(traffic.results)
    while len(traffic.results) < start + n and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_valid_and_invalid_while_requests_flow(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path,
    workers: int,
) -> None:  # fmt: skip
    cfg = _one_host(tmp_path, test_ca_file, upstream.port, workers=workers,
                    admin={"host": "127.0.0.1", "port": 0})  # fmt: skip
    r = reloading(cfg)
    assert r.get(OTHER, OTHER_PH) == "403 Forbidden"
    with Traffic(r) as traffic:
        _wait_requests(traffic, 4)
        # 1. valid: a host and a secret (from a file) added
        added = _with_other(cfg, tmp_path, upstream.port)
        r.write(added)
        r.hup()
        rec = r.wait(1)
        assert rec["outcome"] == "applied" and rec["trigger"] == "sighup", rec
        assert rec["generation"] == 1 and rec["changes"]["secrets_added"] == ["other_token"]
        assert rec["new_sha256"] == hashlib.sha256(r.path.read_bytes()).hexdigest()
        upstream.recorder.clear()
        # Every new connection gets it at once, whichever worker takes it.
        assert [r.get(OTHER, OTHER_PH) for _ in range(6)] == [200] * 6
        assert {q.headers["authorization"] for q in upstream.requests if q.path == "/reload"
                and "other" in q.headers.get("host", "")} == {f"Bearer {OTHER_SECRET}"}  # fmt: skip
        # 2. invalid: rejected, nothing changes
        _wait_requests(traffic, 4)
        r.write({**added, "allow": [*added["allow"], {"hots": "typo.test"}]})
        r.hup()
        rec = r.wait(2)
        assert rec["outcome"] == "rejected" and rec["reason"] == "config_invalid", rec
        assert "allow[2]" in rec["detail"] and "hots" in rec["detail"], rec["detail"]
        assert rec["generation"] == 1 and rec["old_sha256"] == r.wait(1)["new_sha256"]
        assert r.get(OTHER, OTHER_PH) == 200
        with r.client() as kept_other:  # a kept-alive tunnel to OTHER, open across the next reload
            assert r.get(OTHER, OTHER_PH, kept_other) == 200
            # 3. valid: OTHER removed again
            _wait_requests(traffic, 4)
            r.write(cfg)
            r.hup()
            rec = r.wait(3)
            assert rec["outcome"] == "applied" and rec["generation"] == 2, rec
            assert rec["changes"]["secrets_removed"] == ["other_token"]
            assert [r.get(OTHER, OTHER_PH) for _ in range(4)] == ["403 Forbidden"] * 4
            # The open tunnel's next request is decided under the new policy too.
            assert r.get(OTHER, OTHER_PH, kept_other) == 403
        _wait_requests(traffic, 4)
    traffic.check(at_least=12)
    assert all(q.headers["authorization"] == f"Bearer {SECRET}"
               for q in upstream.requests if q.headers.get("host", "").startswith(API))  # fmt: skip
    admin = _admin_port(r)
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    assert 'egress_reloads_total{outcome="applied",trigger="sighup"} 2.0' in metrics
    assert 'egress_reloads_total{outcome="rejected",trigger="sighup"} 1.0' in metrics
    assert "egress_config_generation 2.0" in metrics


def _admin_port(r: Reloading) -> int:
    import re

    m = re.search(r"admin listener on http://127\.0\.0\.1:(\d+)", r.p.stderr_path.read_text())
    assert m
    return int(m.group(1))


# (id, the new config from the one in force, reason code, words the detail must hold)
REJECTIONS: list[
    tuple[str, Callable[[dict[str, Any], Path], dict[str, Any] | str], str, list[str]]
] = [
    ("unknown key", lambda c, t: {**c, "bogus": 1}, "config_invalid", ["bogus", "unknown key"]),
    ("YAML error", lambda c, t: yaml.safe_dump(c) + "allow: [\n", "config_invalid", ["line"]),
    ("empty file", lambda c, t: "", "config_invalid", ["empty"]),
    (
        "listen port",
        lambda c, t: {**c, "listen": {"host": "127.0.0.1", "port": 1}},
        "restart_required",
        ["listen changed", "restart egress"],
    ),  # fmt: skip
    ("workers", lambda c, t: {**c, "workers": 2}, "restart_required", ["workers changed"]),
    (
        "audit",
        lambda c, t: {**c, "audit": {"path": str(t / "other.jsonl")}},
        "restart_required",
        ["audit changed"],
    ),  # fmt: skip
    (
        "a required secret cannot be read",
        lambda c, t: {
            **c,
            "secrets": [
                *c["secrets"],
                {
                    "name": "missing",
                    "source": {"file": str(t / "secrets.env"), "key": "NOPE"},
                    "hosts": [API],
                },
            ],
        },
        "secret_load_failed",
        ["missing", "NOPE"],
    ),  # fmt: skip
    (
        "a secret bound to a host not allowed",
        lambda c, t: {
            **c,
            "secrets": [
                *c["secrets"],
                {
                    "name": "x",
                    "source": {"env": "EGRESS_TEST_API_TOKEN"},
                    "hosts": ["nowhere.test"],
                },
            ],
        },
        "config_invalid",
        ["secrets[1].hosts[0]", "nowhere.test"],
    ),  # fmt: skip
]


def test_a_rejected_reload_changes_nothing(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = _one_host(tmp_path, test_ca_file, upstream.port)
    r = reloading(cfg)
    first_ca = r.p.ca.read_bytes()
    with Traffic(r) as traffic:
        for n, (name, make, reason, words) in enumerate(REJECTIONS, 1):
            r.write(make(cfg, tmp_path))
            r.hup()
            rec = r.wait(n)
            assert (rec["outcome"], rec["reason"]) == ("rejected", reason), (name, rec)
            assert all(w in rec["detail"] for w in words), (name, rec["detail"])
            assert rec["generation"] == 0 and rec["new_sha256"] != rec["old_sha256"], rec
            assert r.get(API, API_PH) == 200, name
            _wait_requests(traffic, 2)
        # Back to the file in force: unchanged.
        r.write(cfg)
        r.hup()
        rec = r.wait(len(REJECTIONS) + 1)
        assert rec["outcome"] == "unchanged" and rec["new_sha256"] == rec["old_sha256"], rec
    traffic.check()
    assert r.p.ca.read_bytes() == first_ca
    err = r.p.stderr_path.read_text()
    assert err.count("rejected:") == len(REJECTIONS) and "restart egress" in err


def test_the_file_watcher_reloads_and_tries_a_bad_file_once(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = _one_host(tmp_path, test_ca_file, upstream.port, reload={"interval_seconds": 0.2})
    r = reloading(cfg)
    r.write(_with_other(cfg, tmp_path, upstream.port))
    rec = r.wait(1)
    assert (rec["trigger"], rec["outcome"]) == ("file", "applied"), rec
    assert r.get(OTHER, OTHER_PH) == 200
    r.write("listen: [\n")
    assert r.wait(2)["outcome"] == "rejected"
    time.sleep(1.5)  # several polls of the same bad file: tried once
    assert len(r.reloads()) == 2
    assert r.get(OTHER, OTHER_PH) == 200
    r.write(cfg)
    rec = r.wait(3)
    assert (rec["trigger"], rec["outcome"], rec["generation"]) == ("file", "applied", 2), rec
    assert r.get(OTHER, OTHER_PH) == "403 Forbidden"


def test_a_configmap_update_swaps_the_data_symlink(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """How the kubelet updates a mounted ConfigMap: a new timestamped folder, then the
    ``..data`` symlink renamed over; the file names are symlinks through ``..data``. Here
    only an included file changes, and the old folder is still there."""
    cfg = _one_host(tmp_path, test_ca_file, upstream.port, reload={"interval_seconds": 0.2})
    cm = tmp_path / "cm"
    cm.mkdir()
    main = dict(cfg)
    allow = main.pop("allow")
    main["include"] = ["allow.yaml"]

    def version(name: str, rules: list[Any]) -> None:
        d = cm / name
        d.mkdir()
        (d / "egress.yaml").write_text(yaml.safe_dump(main))
        (d / "allow.yaml").write_text(yaml.safe_dump({"allow": rules}))
        link = cm / "..data_tmp"
        link.symlink_to(name)
        os.replace(link, cm / "..data")

    version("..2026_12_04_v1", allow)
    for f in ("egress.yaml", "allow.yaml"):
        (cm / f).symlink_to(f"..data/{f}")
    path = cm / "egress.yaml"
    p = start_proxy(path, tmp_path, proxy_env())
    r = Reloading(p, path, upstream)
    try:
        assert r.get(OTHER, OTHER_PH) == "403 Forbidden"
        version("..2026_12_04_v2", [*allow, {"host": OTHER, "ports": [upstream.port]}])
        rec = r.wait(1)
        assert (rec["trigger"], rec["outcome"]) == ("file", "applied"), rec
        assert rec["changes"] == {"rules_changed": ["allow[1]"]}, rec
        assert r.get(OTHER, OTHER_PH) == 200
    finally:
        assert p.stop() == 0


def test_new_names_get_a_new_ca_and_the_old_one_keeps_serving(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = _one_host(tmp_path, test_ca_file, upstream.port)
    r = reloading(cfg)
    old_ca = tmp_path / "old-ca.pem"
    old_ca.write_bytes(r.p.ca.read_bytes())  # what an agent read at its start
    r.write(_with_other(cfg, tmp_path, upstream.port))
    r.hup()
    assert r.wait(1)["outcome"] == "applied"
    bundle = r.p.ca.read_bytes()
    assert bundle.startswith(old_ca.read_bytes()) and bundle.count(b"BEGIN CERTIFICATE") == 2
    with r.client(old_ca) as c:  # the old CA still signs for what it covered
        assert r.get(API, API_PH, c) == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get(f"https://{OTHER}:{upstream.port}/")
    with r.client() as c:  # the new bundle covers both
        assert r.get(API, API_PH, c) == 200 and r.get(OTHER, OTHER_PH, c) == 200
    # A reload within the names both CAs cover makes no third one.
    r.write(cfg)
    r.hup()
    assert r.wait(2)["outcome"] == "applied"
    assert r.p.ca.read_bytes() == bundle


def test_agents_lose_what_a_reload_takes_away(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """A changed token ends the identity of the connections that proved the old one; a
    revoked grant stops the secret at once; a new agent works at once."""
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["reload"] = {"watch": False}
    token = {"a": "token-of-agent-a-000000001", "b": "token-of-agent-b-000000001"}
    CANARIES.update(token.values())

    def digest(t: str) -> dict[str, str]:
        return {"sha256": hashlib.sha256(t.encode()).hexdigest()}

    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [
        {"name": "a", "token": digest(token["a"]), "secrets": ["api_token"]},
        {"name": "b", "token": digest(token["b"]), "secrets": ["api_token", "other_token"]},
    ]
    r = reloading(cfg)

    def client(agent: str, secret: str) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(r.p.ca))
        proxy = httpx.Proxy(r.p.url, auth=(agent, secret))
        return httpx.Client(proxy=proxy, verify=verify, timeout=20)

    with client("a", token["a"]) as a, client("b", token["b"]) as b:
        assert r.get(API, API_PH, a) == 200 and r.get(OTHER, OTHER_PH, b) == 200
        new_b = "token-of-agent-b-000000002"
        CANARIES.add(new_b)
        changed = json.loads(json.dumps(cfg))
        changed["agents"][0]["secrets"] = []  # a loses api_token
        changed["agents"][1]["token"] = digest(new_b)  # b's token rotated
        changed["agents"].append({"name": "c", "token": digest("token-of-agent-c-000000001"),
                                  "secrets": ["other_token"]})  # fmt: skip
        r.write(changed)
        r.hup()
        rec = r.wait(1)
        assert rec["outcome"] == "applied" and rec["changes"]["agents_added"] == ["c"], rec
        assert rec["changes"]["agents_changed"] == ["a", "b"], rec
        upstream.recorder.clear()
        assert r.get(API, API_PH, a) == 403  # secret_not_granted, on a's kept tunnel
        assert r.get(OTHER, OTHER_PH, b) == 407  # b's tunnel proved a token that is gone
    assert not any(q.headers.get("authorization") == f"Bearer {SECRET}" for q in upstream.requests)
    with client("b", token["b"]) as old, client("b", new_b) as new:
        assert r.get(OTHER, OTHER_PH, old) == "407 Proxy Authentication Required"
        assert r.get(OTHER, OTHER_PH, new) == 200
    with client("c", "token-of-agent-c-000000001") as c:
        assert r.get(OTHER, OTHER_PH, c) == 200
    reasons = [x["reason"] for x in r.p.audit() if x.get("event") == "request"][-4:]
    assert "secret_not_granted" in reasons and "proxy_auth_required" in reasons


def test_a_request_keeps_the_policy_it_started_with(tmp_path: Path) -> None:
    """In process, through the addons: a request decided before a reload is carried
    through under its own policy (a form's _method checked against the rules it was
    allowed by), while the next request gets the new one."""
    from egress.addons.base import policy_of
    from egress.addons.policy import Allowlist
    from mitmproxy.test import taddons, tflow

    from egress.runtime import Runtime, Tunnel

    data = {"ca": {"cert_path": str(tmp_path / "ca.pem")}, "upstream": {"resolve": {"api.test": "127.0.0.2"},
            "allow_private": ["127.0.0.2/32"]}, "allow": [{"host": "api.test", "methods": ["GET", "POST"]}]}  # fmt: skip
    rt = Runtime.start(_cfg(tmp_path, data))
    try:
        addon = Allowlist(rt)

        def flow() -> Any:  # a request inside a CONNECT tunnel to api.test
            f = tflow.tflow()
            rt.tunnels[f.client_conn.id] = Tunnel(
                "api.test", 443, ipaddress.ip_address("127.0.0.2")
            )
            f.client_conn.sni = "api.test"
            f.request.scheme, f.request.host, f.request.port = "https", "api.test", 443
            f.request.headers["host"] = "api.test"
            return f

        async def run() -> None:
            with taddons.context(addon):
                before = flow()
                await addon.requestheaders(before)
                assert before.response is None
                old = policy_of(before, rt)
                new_cfg = _cfg(
                    tmp_path, {**data, "allow": [{"host": "api.test", "methods": ["GET"]}]}
                )
                rt.apply_policy(new_cfg, None, None)
                assert rt.policy is not old and policy_of(before, rt) is old
                # Its body arrives after the reload: a POST override, which the rules it was
                # allowed by permit and the new ones would not.
                before.request.headers["content-type"] = "application/x-www-form-urlencoded"
                before.request.content = b"_method=POST&x=1"
                addon.request(before)
                assert before.response is None
                again = flow()  # the same, started after the reload: refused
                again.request.headers["content-type"] = "application/x-www-form-urlencoded"
                again.request.content = b"_method=POST&x=1"
                await addon.requestheaders(again)
                assert again.response is None
                addon.request(again)
                assert again.response is not None
                assert again.response.headers["x-egress-reason"] == "method_not_allowed"
                after = flow()
                after.request.method = "POST"
                await addon.requestheaders(after)
                assert after.response is not None
                assert after.response.headers["x-egress-reason"] == "method_not_allowed"

        import asyncio

        asyncio.run(run())
    finally:
        rt.close()


def test_a_vault_secret_added_by_a_reload_is_read_and_injected(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path,
    vault: Any,
) -> None:  # fmt: skip
    vault.kv2_put("reload/third", {"token": THIRD_SECRET})
    vault.policy("egress-reload", 'path "secret/data/reload/*" { capabilities = ["read"] }\n')
    token = vault.token(["egress-reload"], ttl="1h")
    cfg = _one_host(tmp_path, test_ca_file, upstream.port, workers=2)  # only the parent reads
    cfg["vault"] = {"address": vault.address, "ca_file": str(vault.ca_file), "timeout_seconds": 5,
                    "auth": {"method": "token", "token_env": "VT"}}  # fmt: skip
    cfg["secrets"].append({"name": "first", "source": {"vault": {"path": "reload/third", "key": "token"}},
                           "hosts": [API], "placeholder": "first-placeholder-0001"})  # fmt: skip
    r = reloading(cfg, proxy_env(VT=token))
    new = _with_other(cfg, tmp_path, upstream.port)
    new["secrets"][-1] = {"name": "third", "source": {"vault": {"path": "reload/third", "key": "token"}},
                          "hosts": [OTHER], "placeholder": "third-placeholder-0001"}  # fmt: skip
    r.write(new)
    r.hup()
    rec = r.wait(1)
    assert rec["outcome"] == "applied" and rec["changes"]["secrets_added"] == ["third"], rec
    upstream.recorder.clear()
    assert r.get(OTHER, "third-placeholder-0001") == 200
    assert [q.headers["authorization"] for q in upstream.requests] == [f"Bearer {THIRD_SECRET}"]
    # A path the token may not read: rejected, and the policy in force stays.
    bad = json.loads(json.dumps(new))
    bad["secrets"][-1]["source"]["vault"]["path"] = "forbidden/x"
    r.write(bad)
    r.hup()
    rec = r.wait(2)
    assert (rec["outcome"], rec["reason"]) == ("rejected", "secret_load_failed"), rec
    assert "third" in rec["detail"] and "permission denied" in rec["detail"], rec["detail"]
    assert r.get(OTHER, "third-placeholder-0001") == 200


def test_review_and_learn_pass_over_reload_records(tmp_path: Path) -> None:
    """A reload record is an audit record that decides nothing: neither counted as a
    request nor as a skipped line (which review reports as damage to the log)."""
    from egress.review.auditjoin import AuditJoin
    from egress.review.learner import Learner

    cfg = _cfg(tmp_path, _base(tmp_path))
    reload_line = json.dumps({"time": "2026-12-04T02:31:41.851Z", "event": "reload", "trigger": "sighup",
                              "outcome": "applied", "reason": None, "old_sha256": "a" * 64,
                              "new_sha256": "b" * 64, "generation": 1, "changes": {}, "detail": None})  # fmt: skip
    request_line = json.dumps({"time": "2026-12-04T02:31:42.000Z", "event": "request", "flow_id": "f",
                               "client": "127.0.0.1", "method": "GET", "scheme": "https", "host": "api.test",
                               "port": 443, "path": "/", "decision": "allow", "reason": "allowed"})  # fmt: skip
    for feeder in (AuditJoin(cfg, "a"), Learner(cfg)):
        for line in (reload_line, request_line, "not json"):
            feeder.feed(line)
        assert (feeder.skipped, feeder.records) == (1, 1), type(feeder).__name__


def test_pinning_a_policy_leaves_flows_serializable(tmp_path: Path) -> None:
    """mitmdump -s ... -w saves flows: nothing egress pins to a flow may go into them."""
    from egress.addons.base import policy_of
    from mitmproxy import io as mitmproxy_io
    from mitmproxy.test import tflow

    from egress.runtime import Runtime

    rt = Runtime.start(
        _cfg(tmp_path, {"ca": {"cert_path": str(tmp_path / "ca.pem")}, "allow": ["api.test"]})
    )
    try:
        f = tflow.tflow()
        assert policy_of(f, rt) is rt.policy
        import io

        mitmproxy_io.FlowWriter(io.BytesIO()).add(f)
        assert "Policy" not in repr(f.get_state())
    finally:
        rt.close()


def test_a_crlf_config_hashes_as_the_watcher_reads_it(tmp_path: Path) -> None:
    from egress.config import load

    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"ca:\r\n  cert_path: ca.pem\r\nallow:\r\n  - api.test\r\n")
    cfg = load(path)
    assert cfg.sha256 == files_sha256(cfg.files) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_secret_that_fails_stays_scrubbed(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["secrets"][0]["required"] = False
    cfg = _cfg(tmp_path, data)
    store = SecretStore(cfg.secrets)
    store.load_all()
    store.replace(cfg.secrets, store.sources, {}, {"t": "its new source cannot be read"})
    assert store.get("t") is None
    assert "value-of-t-0001" in {v.reveal() for _, v in store.known()}


def test_what_a_reload_cannot_read_again_is_carried_and_what_it_can_is_read(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """egress clears the variables it read at start: a reload keeps an env secret's value
    and an env token's digest while their source is the same. A token file is read again:
    rotating it (the watcher sees it) revokes the old token. An address range a reload
    removes is refused on tunnels opened before it too."""
    cfg = _one_host(tmp_path, test_ca_file, upstream.port, reload={"interval_seconds": 0.2})
    token_file = tmp_path / "b.token"
    token_file.write_text("token-of-agent-b-000000001\n")
    token_file.chmod(0o600)
    tokens = {"a": "token-of-agent-a-000000001", "b": "token-of-agent-b-000000001"}
    CANARIES.update([*tokens.values(), "token-of-agent-b-000000002"])
    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [{"name": "a", "token": {"env": "AGENT_A_TOKEN"}, "secrets": ["api_token"]},
                     {"name": "b", "token": {"file": str(token_file)}, "secrets": ["api_token"]}]  # fmt: skip
    r = reloading(cfg, proxy_env(AGENT_A_TOKEN=tokens["a"]))

    def client(agent: str, token: str) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(r.p.ca))
        return httpx.Client(
            proxy=httpx.Proxy(r.p.url, auth=(agent, token)), verify=verify, timeout=20
        )

    changed = json.loads(json.dumps(cfg))
    changed["allow"].append({"host": OTHER, "ports": [upstream.port]})
    changed["secrets"][0]["hosts"] = [API, OTHER]  # the env secret's hosts only
    r.write(changed)
    rec = r.wait(1)
    assert (rec["outcome"], rec["changes"]["secrets_changed"]) == ("applied", ["api_token"]), rec
    upstream.recorder.clear()
    with client("a", tokens["a"]) as a:
        assert r.get(OTHER, API_PH, a) == 200 and r.get(API, API_PH, a) == 200
    assert [q.headers["authorization"] for q in upstream.requests] == [f"Bearer {SECRET}"] * 2
    # b's token file rotated: the watcher reloads, the old token stops working.
    token_file.write_text("token-of-agent-b-000000002\n")
    rec = r.wait(2)
    assert (rec["trigger"], rec["outcome"], rec["changes"]) == (
        "file",
        "applied",
        {"tokens_changed": ["b"]},
    ), rec
    with client("b", tokens["b"]) as old, client("b", "token-of-agent-b-000000002") as new:
        assert r.get(API, API_PH, old) == "407 Proxy Authentication Required"
        assert r.get(API, API_PH, new) == 200
    # loopback no longer allowed: refused on a tunnel opened before the reload too
    with client("a", tokens["a"]) as kept:
        assert r.get(API, API_PH, kept) == 200
        closed = json.loads(json.dumps(changed))
        closed["upstream"]["allow_private"] = []
        r.write(closed)
        assert r.wait(3)["outcome"] == "applied"
        assert r.get(API, API_PH, kept) == 403
        with client("a", tokens["a"]) as fresh:
            assert r.get(API, API_PH, fresh) == "403 Forbidden"
    reasons = [x["reason"] for x in r.p.audit() if x.get("event") in ("request", "connect")]
    assert reasons[-2:] == ["resolved_private", "resolved_private"], reasons[-4:]


def test_a_grant_revoked_while_a_signed_request_is_sent_stops_it(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """An HMAC signature covers the body, so it is made once the body is in: a reload that
    revokes the grant between the headers and the body stops the signature."""
    import base64
    import socket

    cfg = _one_host(tmp_path, test_ca_file, upstream.port)
    key = "hmac-signing-key-000000000001"
    CANARIES.add(key)
    (tmp_path / "hook.env").write_text(f"HOOK_KEY={key}\n")
    (tmp_path / "hook.env").chmod(0o600)
    cfg["secrets"] = [{"name": "hook", "scheme": "hmac", "hosts": [API], "placeholder": "egress-hook-placeholder-0001",
                       "source": {"file": str(tmp_path / "hook.env"), "key": "HOOK_KEY"},
                       "hmac": {"header": "X-Sig", "value": "sha256={hex}"}}]  # fmt: skip
    token = "token-of-agent-a-000000001"
    cfg["identity"] = {"proxy_authorization": True}
    cfg["agents"] = [{"name": "a", "token": {"sha256": hashlib.sha256(token.encode()).hexdigest()},
                      "secrets": ["hook"]}]  # fmt: skip
    r = reloading(cfg)
    with socket.create_connection(("127.0.0.1", r.p.port), timeout=20) as raw:
        auth = base64.b64encode(f"a:{token}".encode()).decode()
        raw.sendall(f"CONNECT {API}:{upstream.port} HTTP/1.1\r\nHost: {API}:{upstream.port}\r\n"
                    f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())  # fmt: skip
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        tls = ssl.create_default_context(cafile=str(r.p.ca)).wrap_socket(raw, server_hostname=API)
        body = b"0123456789"
        tls.sendall(f"POST /hook HTTP/1.1\r\nHost: {API}:{upstream.port}\r\nX-Sig: egress-hook-placeholder-0001\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode())  # fmt: skip
        time.sleep(0.3)  # the headers are decided; the body has not come
        revoked = json.loads(json.dumps(cfg))
        revoked["agents"][0]["secrets"] = []
        r.write(revoked)
        r.hup()
        assert r.wait(1)["outcome"] == "applied"
        upstream.recorder.clear()
        tls.sendall(body)
        head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 403") and b"secret_not_granted" in head, head
    assert upstream.requests == []


def test_an_optional_minted_secret_is_never_read_raw_by_a_reload(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """Its token endpoint was down at start; a reload leaves it to its minter: the long-lived
    client secret it mints from is never injected."""
    cfg = _one_host(tmp_path, test_ca_file, upstream.port)
    long_lived = "LONG-LIVED-client-secret-0001"
    CANARIES.add(long_lived)
    (tmp_path / "oauth.env").write_text(f"CID=client-id-1\nCSECRET={long_lived}\n")
    (tmp_path / "oauth.env").chmod(0o600)
    cfg["upstream"]["resolve"]["login.crm.test"] = "127.0.0.1"
    cfg["secrets"].append({"name": "crm", "required": False, "hosts": [API], "placeholder": "crm-placeholder-000001",
                           "source": {"file": str(tmp_path / "oauth.env"),
                                      "keys": {"client_id": "CID", "client_secret": "CSECRET"}},
                           "mint": {"type": "oauth_client_credentials",
                                    "token_url": "https://login.crm.test:1/token"}})  # fmt: skip
    r = reloading(cfg)
    assert r.get(API, "crm-placeholder-000001") == 503
    new = json.loads(json.dumps(cfg))
    new["allow"].append({"host": OTHER, "ports": [upstream.port]})
    r.write(new)
    r.hup()
    assert r.wait(1)["outcome"] == "applied"
    assert [r.get(API, "crm-placeholder-000001") for _ in range(3)] == [503] * 3
    assert all(long_lived not in str(q.headers) for q in upstream.requests)


def test_a_reload_that_cannot_be_installed_changes_nothing(
    reloading: Callable[..., Reloading], tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    """Writing the new CA bundle fails (a full or read-only disk; here a directory in the
    way): the reload is rejected, nothing changes, in the parent or in any worker; once the
    cause is gone, the next reload applies."""
    cfg = _one_host(tmp_path, test_ca_file, upstream.port, workers=2)
    r = reloading(cfg)
    block = r.p.ca.parent / f".{r.p.ca.name}.{r.p.proc.pid}.tmp"
    block.mkdir()
    r.write(_with_other(cfg, tmp_path, upstream.port))  # a new name: a new CA to write
    r.hup()
    rec = r.wait(1)
    assert (rec["outcome"], rec["reason"], rec["generation"]) == (
        "rejected",
        "internal_error",
        0,
    ), rec
    assert "IsADirectoryError" in rec["detail"]
    assert [r.get(OTHER, OTHER_PH) for _ in range(4)] == ["403 Forbidden"] * 4
    assert r.p.ca.read_bytes().count(b"BEGIN CERTIFICATE") == 1
    block.rmdir()
    r.hup()
    rec = r.wait(2)
    assert (rec["outcome"], rec["generation"]) == ("applied", 1), rec
    assert [r.get(OTHER, OTHER_PH) for _ in range(4)] == [200] * 4
