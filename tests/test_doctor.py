"""egress doctor against a real running egress: real clients (curl, Python), a client made
to ignore the proxy, a refused URL, the JSON shape and the exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress import doctor
from tests.conftest import (
    API,
    RunningProxy,
    assert_no_secret,
    base_config,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

BY_NAME = {p.name: p for p in doctor.PROBES}
# curl told to ignore every proxy variable: a client that goes direct.
NOPROXY_CURL = dataclasses.replace(
    BY_NAME["curl"], name="curl --noproxy",
    args=lambda url, d: ["--noproxy", "*", "-sS", "-o", "/dev/null", "--max-time", "5", url],
)  # fmt: skip
WORKING = ("curl", "python urllib", "python requests", "python httpx")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
            test_ca_file: Path) -> Iterator[tuple[RunningProxy, Path]]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("doctor")
    cfg = write_config(tmp, base_config(tmp, test_ca_file, upstream.port))
    p = start_proxy(cfg, tmp)
    yield p, cfg
    assert p.stop() == 0


def run_doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="egress")
    doctor.add_parser(parser.add_subparsers(dest="command"), "config file")
    code = doctor.run(parser.parse_args(["doctor", *argv]))
    out, err = capsys.readouterr()
    assert_no_secret(out, err)
    return code, out, err


CASES = [
    # (id, probes, url (None: the default), {client: (status, reason)}, exit code)
    ("curl and python work", WORKING, None, {n: ("works", None) for n in WORKING}, 0),
    ("a client that ignores the proxy goes direct", ("curl", "curl --noproxy"), None,
     {"curl": ("works", None), "curl --noproxy": ("direct", None)}, 1),
    ("a refused host", ("curl", "python requests", "python httpx"), "https://evil.example.invalid/",
     {n: ("refused", "host_not_allowed") for n in ("curl", "python requests", "python httpx")}, 1),
    ("a refused port", ("curl", "python urllib"), f"https://{API}:1/",
     {n: ("refused", "port_not_allowed") for n in ("curl", "python urllib")}, 1),
    ("a missing client", ("curl", "missing"), None,
     {"curl": ("works", None), "missing": ("missing", None)}, 0),
]  # fmt: skip


@pytest.mark.parametrize(("probes", "url", "expected", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_doctor_reports_each_client(
    running: tuple[RunningProxy, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, probes: tuple[str, ...], url: str | None,
    expected: dict[str, tuple[str, str | None]], code: int,
) -> None:  # fmt: skip
    proxy, cfg = running
    table = {**BY_NAME, NOPROXY_CURL.name: NOPROXY_CURL,
             "missing": dataclasses.replace(BY_NAME["curl"], name="missing", find=lambda: None)}  # fmt: skip
    monkeypatch.setattr(doctor, "PROBES", tuple(table[n] for n in probes))
    argv = ["--config", str(cfg), "--proxy-url", proxy.url, "--format", "json"]
    got, out, _ = run_doctor(capsys, *argv, *(["--url", url] if url else []))
    doc = json.loads(out)
    assert set(doc) == {"proxy_url", "url", "config", "ok", "clients"}
    assert doc["proxy_url"] == proxy.url and doc["ok"] is (code == 0)
    assert doc["url"] == url or (url is None and doc["url"].startswith(f"https://{API}:"))
    for c in doc["clients"]:
        assert set(c) == {"client", "status", "reason", "detail", "fix"}
        assert c["status"] in doctor.STATUSES
        if c["status"] not in ("works", "missing"):
            assert c["fix"], c
    assert {c["client"]: (c["status"], c["reason"]) for c in doc["clients"]} == expected
    assert got == code


def test_text_output_of_every_client_found(
    running: tuple[RunningProxy, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    proxy, cfg = running
    code, out, _ = run_doctor(capsys, "-c", str(cfg), "--proxy-url", proxy.url)
    lines = out.splitlines()
    assert lines[0].startswith(f"egress doctor: proxy {proxy.url}, test URL https://{API}:")
    for name in WORKING:
        assert any(ln.split() == [*name.split(), "works"] for ln in lines), out
    assert lines[-1].endswith("installed clients work")
    assert code == (0 if "fix:" not in out else 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exit_codes_of_errors(
    running: tuple[RunningProxy, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy, cfg = running
    bad = tmp_path / "bad.yaml"
    bad.write_text("allow: [{host: 12}]\n")
    cases = [
        (["-c", str(bad), "--proxy-url", proxy.url], 2, str(bad)),
        (["-c", str(cfg)], 2, "listen.port is 0"),
        (["-c", str(cfg), "--proxy-url", "socks5://x"], 2, "http://HOST:PORT"),
        (["-c", str(cfg), "--proxy-url", proxy.url, "--url", "ftp://x/"], 2, "--url"),
        (["-c", str(cfg), "--proxy-url", f"http://127.0.0.1:{_free_port()}"], 1,
         "nothing listens"),
    ]  # fmt: skip
    for argv, code, shown in cases:
        got, out, err = run_doctor(capsys, *argv)
        assert (got, out) == (code, ""), argv
        assert shown in err, (argv, err)
