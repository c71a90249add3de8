"""egress review's output in every format on the example configs, against golden files.

Regenerate after a deliberate change: EGRESS_UPDATE_GOLDEN=1 python -m pytest
tests/test_review_golden.py, then read the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from egress.cli import main
from egress.config.includes import preset_names

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "review"
CONFIGS = ["config/egress.yaml", "config/egress-risky.yaml"]
FORMATS = {"text": "txt", "json": "json", "markdown": "md", "sarif": "sarif", "html": "html"}


def review(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    monkeypatch.chdir(ROOT)  # file names in the output are as given: relative, stable
    code = main(["review", *args])
    return code, capsys.readouterr().out


def check_golden(name: str, out: str) -> None:
    path = GOLDEN / name
    if os.environ.get("EGRESS_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
    assert path.exists(), f"no golden file {path}: run with EGRESS_UPDATE_GOLDEN=1"
    assert out == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_review_golden(
    cfg: str, fmt: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = review(["--config", cfg, "--format", fmt], capsys, monkeypatch)
    assert code == 0
    check_golden(f"{Path(cfg).stem}.{FORMATS[fmt]}", out)


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_diff_golden(
    fmt: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = review(["--diff", "config/egress.yaml", "config/egress-risky.yaml", "--format", fmt, "--fail-on-new-reach"],
                       capsys, monkeypatch)  # fmt: skip
    assert code == 1  # the risky config lets github_token reach more
    check_golden(f"diff-egress-to-risky.{FORMATS[fmt]}", out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_audit_golden(
    fmt: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--config", "config/egress.yaml", "--audit", "docs/examples/audit-report-mode.jsonl"]
    code, out = review([*args, "--format", fmt], capsys, monkeypatch)
    assert code == 0
    check_golden(f"egress-with-audit.{FORMATS[fmt]}", out)


FAIL_ON = [
    # (config, --fail-on, exit code)
    ("config/egress-risky.yaml", "critical", 1),
    ("config/egress-risky.yaml", "never", 0),
    ("config/egress.yaml", "high", 0),
]


@pytest.mark.parametrize(("cfg", "threshold", "code"), FAIL_ON)
def test_fail_on(
    cfg: str,
    threshold: str,
    code: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert review(["--config", cfg, "--fail-on", threshold], capsys, monkeypatch)[0] == code


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_passes_review_without_a_high_finding(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "egress.yaml"
    cfg.write_text(f"include: [{name}]\n")
    code, out = review(["--config", str(cfg), "--fail-on", "high"], capsys, monkeypatch)
    assert code == 0, out


@pytest.mark.parametrize("command", ["review", "learn"])
def test_help_has_examples_and_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and "exit codes:" in out
