"""egress completion: scripts built from the parser, tried in a real bash; zsh and fish
scripts syntax-checked where those shells are installed."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from egress import completion
from egress.cli import _parser

BASH_CASES = [
    # (words typed, the word completed, the completions expected)
    (["egress", "re"], {"redirect", "review"}),
    (["egress", "review", "--"], {"--config", "--format", "--output", "--fail-on", "--diff",
                                  "--fail-on-new-reach", "--audit", "--help"}),
    (["egress", "redirect", ""], {"print", "apply", "remove"}),
    (["egress", "exec", "--log-level", ""], {"auto", "quiet", "deny"}),
    (["egress", "env", "-c", "x.yaml", "--shell", "f"], {"fish"}),
    (["egress", "--"], {"--help", "--version"}),
    (["egress", "exec", "-c", "x.yaml", "--", "bas"], {"bash"}),
]  # fmt: skip


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("words", "expected"), BASH_CASES, ids=[" ".join(w) for w, _ in BASH_CASES]
)
def test_bash_completes(words: list[str], expected: set[str]) -> None:
    script = completion.script("bash")
    words_q = " ".join(f"'{w}'" for w in words)
    driver = (
        f'COMP_WORDS=({words_q}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); '
        '_egress; printf "%s\\n" "${COMPREPLY[@]}"'
    )  # fmt: skip
    out = subprocess.run(["bash", "-c", script + "\n" + driver], capture_output=True, text=True,
                         timeout=30, check=True).stdout  # fmt: skip
    got = {line for line in out.splitlines() if line}
    if words[-1] == "bas":
        assert expected <= got  # every command on PATH that starts so
    else:
        assert got == expected


def test_the_script_follows_the_parser() -> None:
    """A subcommand or option added to the parser is in every script at once."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("zzfresh", help="added by the test")
    extra.add_argument("--zzopt", choices=["one", "two"])
    for shell in completion.SHELLS:
        text = completion.script(shell, parser)
        assert "zzfresh" in text and "zzopt" in text and "one two" in text, shell
    root = completion.walk(parser)
    assert set(root.subcommands) >= {"run", "exec", "env", "check", "review", "learn",
                                     "redirect", "zzfresh"}  # fmt: skip
    assert root.subcommands["zzfresh"].valued["--zzopt"] == ["one", "two"]


@pytest.mark.parametrize("shell", ["zsh", "fish", "bash"])
def test_syntax(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    r = subprocess.run([shell, "-n"], input=completion.script(shell), capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_run_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="egress")
    completion.add_parser(parser.add_subparsers(dest="command"))
    assert completion.run(parser.parse_args(["completion", "fish"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("# fish completion for egress")
    assert "complete -c egress -n '__fish_use_subcommand' -a run" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["completion", "tcsh"])
