"""Every ``console`` block of docs/review.md is the real output of its command: re-run it
and compare. A line ``...`` stands for lines left out: the pieces between must appear in
order, the first one at the start of the output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from egress.cli import main
from egress.review.findings import KINDS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "review.md"
BLOCK = re.compile(r"```console\n\$ (egress [^\n]*)\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(DOC.read_text())


def test_the_page_has_blocks() -> None:
    assert len(blocks()) >= 3


@pytest.mark.parametrize(("command", "shown"), blocks(), ids=[b[0] for b in blocks()])
def test_each_block_is_the_commands_real_output(
    command: str, shown: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    main(shlex.split(command)[1:])
    out = capsys.readouterr().out.splitlines()
    assert shows(shown.rstrip("\n").splitlines(), out)


def shows(shown: list[str], out: list[str]) -> bool:
    """Do the pieces of ``shown`` (split at "..." lines) appear in ``out`` in order, the
    first at the start and, without a trailing "...", the last at the end?"""
    pieces: list[list[str]] = [[]]
    for line in shown:
        if line == "...":
            pieces.append([])
        else:
            pieces[-1].append(line)
    at = 0
    for n, piece in enumerate(pieces):
        if not piece:
            continue
        found = next(
            (i for i in range(at, len(out) - len(piece) + 1) if out[i : i + len(piece)] == piece),
            None,
        )
        if found is None or (n == 0 and found != 0):
            return False
        at = found + len(piece)
    return bool(pieces[-1] == []) or at == len(out)


SHOWS = [
    (["a", "b"], ["a", "b"], True),
    (["a", "..."], ["a", "b"], True),
    (["a"], ["a", "b"], False),
    (["...", "b"], ["a", "b"], True),
    (["a", "...", "c", "..."], ["a", "b", "c", "d"], True),
    (["a", "...", "d", "c"], ["a", "b", "c", "d"], False),
    (["b", "..."], ["a", "b"], False),
]


@pytest.mark.parametrize(("shown", "out", "ok"), SHOWS)
def test_shows(shown: list[str], out: list[str], ok: bool) -> None:
    assert shows(shown, out) is ok


def test_every_finding_id_is_documented() -> None:
    text = DOC.read_text()
    assert [k for k in KINDS if f"| `{k}` |" not in text] == []
