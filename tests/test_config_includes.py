"""include: fragments and presets merged into a config, and where every key came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress import config
from egress.config import Origin
from egress.errors import ConfigError

MAIN = """\
include:
  - fragment.yaml
allow:
  - host: example.com
secrets:
  - name: token
    source: {env: REAL_TOKEN}
    hosts: [example.com]
"""

FRAGMENT = """\
description: a fragment
allow:
  - host: api.example.org
    methods: [GET]
  - host: uploads.example.org
secrets:
  - name: org_key
    source: {env: ORG_KEY}
    hosts: [api.example.org]
    inject: [headers]
"""


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path / "egress.yaml"


def test_own_rules_first_then_included_with_their_origins(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"egress.yaml": MAIN, "fragment.yaml": FRAGMENT}))
    assert [r.host.text for r in cfg.rules] == [
        "example.com",
        "api.example.org",
        "uploads.example.org",
    ]
    assert [s.name for s in cfg.secrets] == ["token", "org_key"]
    frag = str(tmp_path / "fragment.yaml")
    main = str(tmp_path / "egress.yaml")
    cases = {
        "allow[0]": Origin(main, 4, "allow[0]"),
        "allow[0].host": Origin(main, 4, "allow[0].host"),
        "allow[1]": Origin(frag, 3, "allow[0]"),
        "allow[1].methods": Origin(frag, 4, "allow[0].methods"),
        "allow[2].host": Origin(frag, 5, "allow[1].host"),
        "secrets[1].hosts": Origin(frag, 9, "secrets[0].hosts"),
        "secrets[0].source": Origin(main, 7, "secrets[0].source"),
        "include[0]": Origin(main, 2, "include[0]"),
    }
    for key, origin in cases.items():
        assert cfg.origins[key] == origin, key
    # A rule written in an included file says so: messages tell the user not to edit it.
    assert [r.origin for r in cfg.rules] == ["", f"{frag}:3", f"{frag}:5"]


def test_a_preset_by_name(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"egress.yaml": "include: [pypi]\n"}))
    assert {r.host.text for r in cfg.rules} >= {"pypi.org", "files.pythonhosted.org"}
    assert cfg.origins["allow[0]"].file == "preset:pypi"
    assert cfg.origins["allow[0]"].line is not None


def test_a_denial_hint_for_an_included_rule_names_its_file(tmp_path: Path) -> None:
    from egress.messages import how_to_allow
    from egress.policy import Allowlist
    from egress.reasons import Reason

    cfg = config.load(write(tmp_path, {"egress.yaml": MAIN, "fragment.yaml": FRAGMENT}))
    cases = [
        # (host, method, path, reason, text the hint holds)
        ("api.example.org", "POST", "/x", Reason.METHOD_NOT_ALLOWED,
         f"add POST to the 'methods' of allow[1] (allow[1] is written in {tmp_path / 'fragment.yaml'}:3"),
        ("example.com", "POST", "/x", Reason.ALLOWED, None),
    ]  # fmt: skip
    for host, method, path, reason, hint in cases:
        d = Allowlist(cfg.rules).decide("https", host, 443, method, path)
        assert d.reason is reason
        text = how_to_allow(d.reason, host, 443, "https", method, path, d.rule)
        assert (text is None) if hint is None else (text is not None and hint in text), text


def test_the_including_file_overrides_a_fragment_secret(tmp_path: Path) -> None:
    main = MAIN + "  - name: org_key\n    source: {file: secrets.env, key: ORG}\n"
    cfg = config.load(write(tmp_path, {"egress.yaml": main, "fragment.yaml": FRAGMENT}))
    spec = {s.name: s for s in cfg.secrets}["org_key"]
    assert spec.source.kind == "file" and spec.source.file == tmp_path / "secrets.env"
    assert [h.text for h in spec.hosts] == ["api.example.org"]  # from the fragment
    index = [s.name for s in cfg.secrets].index("org_key")
    assert cfg.origins[f"secrets[{index}].source"].file == str(tmp_path / "egress.yaml")
    assert cfg.origins[f"secrets[{index}].hosts"].file == str(tmp_path / "fragment.yaml")


BAD = [
    # (files, the file the problem is reported in, expected text)
    ({"egress.yaml": "include: [pipy]\n"}, "egress.yaml", "include[0]: 'pipy' is not a preset egress ships (did you mean 'pypi'?)"),
    ({"egress.yaml": "include: [./missing.yaml]\n"}, "egress.yaml", "include[0]: "),
    ({"egress.yaml": "include: [a.yaml]\n", "a.yaml": "include: [b.yaml]\n", "b.yaml": "include: [a.yaml]\n"},
     "b.yaml", "includes itself"),
    ({"egress.yaml": "include: [f.yaml]\n", "f.yaml": "listen: {port: 1}\n"}, "f.yaml", "listen: unknown key"),
    ({"egress.yaml": "include: [f.yaml]\nallow: [a.example]\n", "f.yaml": "allow:\n  - host: 'bad host'\n"},
     "f.yaml", "allow[0].host: "),
    ({"egress.yaml": "include: [f.yaml, g.yaml]\n", "f.yaml": FRAGMENT, "g.yaml": FRAGMENT},
     "g.yaml", "secrets[0].name: 'org_key' is also defined in"),
    ({"egress.yaml": "include: 3\n"}, "egress.yaml", "include: must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(("files", "where", "expected"), BAD)
def test_problems_name_the_file_they_are_in(
    tmp_path: Path, files: dict[str, str], where: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, files))
    lines = str(e.value).splitlines()
    assert any(line.startswith(f"{tmp_path / where}: ") and expected in line for line in lines), (
        str(e.value)
    )


def test_a_fragment_included_twice_counts_once(tmp_path: Path) -> None:
    files = {"egress.yaml": "include: [f.yaml, ./f.yaml]\n", "f.yaml": FRAGMENT}
    assert len(config.load(write(tmp_path, files)).rules) == 2


def test_every_shipped_preset_loads_alone(tmp_path: Path) -> None:
    from egress.config.includes import preset_names

    names = preset_names()
    assert names
    for name in names:
        cfg = config.load(write(tmp_path, {"egress.yaml": f"include: [{name}]\n"}))
        assert cfg.rules, name
        assert all(
            cfg.origins[f"allow[{i}]"].file == f"preset:{name}" for i in range(len(cfg.rules))
        )
