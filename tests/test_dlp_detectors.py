"""The data-loss detectors on their own (egress/dlp, docs/dlp.md): a corpus of valid values
and near-misses per detector with measured precision and recall, ordinary code, generated
evasions (encodings, nesting, zero-width characters, look-alikes, splitting), locations
that never repeat a value, and the ``dlp:`` config's errors."""

from __future__ import annotations

import base64
import glob
import json
import random
import sysconfig
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.config import parse
from egress.dlp.catalogue import catalogue, detector_names
from egress.dlp.fields import Field, body_fields, header_fields, url_fields
from egress.dlp.policy import DlpRule, decide
from egress.dlp.scan import Masker, Scanner
from egress.errors import ConfigError
from tests.dlp_samples import VALID, near_misses

SCANNER = Scanner()
CONTEXTS = [
    "{}",
    "Here is the value you asked for: {} (keep it safe).",
    '{{"note": "{}"}}',
    "line one\nvalue={}\nline three",
    "<td>{}</td>",
]


def _detected(text: str) -> set[str]:
    return {f.detector for f in SCANNER.scan([Field("body", text, "body")]).findings}


def test_every_detector_has_samples() -> None:
    assert set(VALID) == set(detector_names())


def test_corpus_precision_and_recall(capsys: pytest.CaptureFixture[str]) -> None:
    """Recall on 60 valid values per detector in five contexts; precision over those and
    every near-miss (invalid check digits, documentation values, identifiers, code, images),
    five draws each. Printed, and recorded in docs/dlp.md."""
    rng = random.Random(2026)
    tp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    misses: list[str] = []
    for name, make in VALID.items():
        for i in range(60):
            text = CONTEXTS[i % len(CONTEXTS)].format(make(rng))
            found = _detected(text)
            if name in found:
                tp[name] += 1
            else:
                fn[name] += 1
                misses.append(f"{name}: {text[:80]!r}")
            for other in found - {name}:
                fp[other] += 1
    negatives = 0
    for _ in range(5):
        for what, text in near_misses(rng):
            negatives += 1
            for d in _detected(text):
                fp[d] += 1
                misses.append(f"near-miss {what!r} found as {d}")
    lines = [f"{'detector':22} {'precision':>9} {'recall':>7}"]
    for name in VALID:
        precision = tp[name] / ((tp[name] + fp[name]) or 1)
        recall = tp[name] / ((tp[name] + fn[name]) or 1)
        lines.append(f"{name:22} {precision:9.3f} {recall:7.3f}")
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    lines.append(f"{'all':22} {total_tp / (total_tp + total_fp):9.3f} "
                 f"{total_tp / (total_tp + total_fn):7.3f}  ({total_tp + total_fn} values, "
                 f"{negatives} near-misses)")  # fmt: skip
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not fp, misses
    assert all(tp[n] / (tp[n] + fn[n]) >= 0.95 for n in VALID), misses


def _stdlib_sources() -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        Path(p) for p in glob.glob(str(lib / "**" / "*.py"), recursive=True)
        if "site-packages" not in p and "/test" not in p and "/idlelib/" not in p
    )  # fmt: skip
    random.Random(7).shuffle(files)
    return files[:250]


def test_ordinary_code_holds_no_credentials_and_no_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Python's standard library as request bodies: no credential and no number-shaped
    finding. Its e-mail addresses (authors, mailing lists) are real addresses, which the
    e-mail detector is meant to find; they are counted and printed."""
    found: Counter[str] = Counter()
    wrong: list[str] = []
    size = 0
    for path in _stdlib_sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        size += len(text)
        for f in SCANNER.scan(body_fields(text.encode(), "text/x-python")).findings:
            found[f.detector] += 1
            if f.detector not in ("email_address",):
                wrong.append(f"{path.name}: {f.detector} in {f.where} ({f.how})")
    with capsys.disabled():
        print(f"\nstandard library: {size / 1e6:.1f} MB, findings {dict(found)}")
    assert not wrong, wrong


CREDENTIALS = [n for n in VALID if any(d.name == n and d.kind == "credential" for d in catalogue())]


def _b64(value: bytes, skip: int) -> bytes:
    return base64.b64encode(b"\x00\n "[:skip] + value).rstrip(b"=")


ENCODINGS: dict[str, Any] = {
    "base64@0": lambda v: _b64(v, 0),
    "base64@1": lambda v: _b64(v, 1),
    "base64@2": lambda v: _b64(v, 2),
    "base64@3": lambda v: _b64(v, 3),
    "base64url": lambda v: base64.urlsafe_b64encode(v),
    "hex": lambda v: v.hex().encode(),
    "hex upper with 0x": lambda v: b" ".join(f"0x{b:02X}".encode() for b in v),
    "\\x escapes": lambda v: b"".join(f"\\x{b:02x}".encode() for b in v),
    "percent": lambda v: quote(v, safe="").encode(),
    "percent every byte": lambda v: "".join(f"%{b:02X}" for b in v).encode(),
    "wrapped base64": lambda v: b"\n".join(
        base64.b64encode((v + b"\n") * 3)[i : i + 40]
        for i in range(0, len(base64.b64encode((v + b"\n") * 3)), 40)
    ),
}  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    detector=st.sampled_from(CREDENTIALS + ["payment_card", "iban", "email_address", "us_ssn"]),
    seed=st.integers(0, 2**32),
    chain=st.lists(st.sampled_from(sorted(ENCODINGS)), min_size=0, max_size=2),
    zero_width=st.booleans(),
    prefix=st.text(alphabet="abc XYZ:=\n", max_size=12),
    suffix=st.text(alphabet="abc XYZ.,\n", max_size=12),
)
def test_a_value_is_found_through_any_chain_of_encodings(
    detector: str, seed: int, chain: list[str], zero_width: bool, prefix: str, suffix: str
) -> None:
    rng = random.Random(seed)
    value = VALID[detector](rng)
    if detector == "private_key":
        chain = chain[:1]  # 1 KB of base64 nested twice is past the view budget by design
    if zero_width:
        cut = rng.randrange(1, len(value))
        value = value[:cut] + rng.choice("\u200b\u200c\u200d\u2060\ufeff\u00ad") + value[cut:]
    data = value.encode()
    for name in chain:
        data = ENCODINGS[name](data)
    text = f"{prefix} {data.decode('utf-8', 'surrogateescape')} {suffix}"
    result = SCANNER.scan([Field("body", text, "body")])
    assert detector in {f.detector for f in result.findings}, (chain, zero_width, text[:120])


FOLDED = [(d, a) for d in ("github_token", "aws_access_key", "email_address")
          for a in ("cyrillic", "greek", "full-width")] + [("payment_card", "full-width")]  # fmt: skip


@pytest.mark.parametrize(("detector", "alphabet"), FOLDED)
def test_look_alike_letters_and_full_width_digits_are_folded(detector: str, alphabet: str) -> None:
    value = VALID[detector](random.Random(3))
    swaps = {"cyrillic": {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "A": "А",
                          "B": "В", "E": "Е", "K": "К", "M": "М", "H": "Н", "O": "О", "P": "Р",
                          "C": "С", "T": "Т", "X": "Х"},
             "greek": {"A": "Α", "B": "Β", "E": "Ε", "Z": "Ζ", "H": "Η", "I": "Ι", "K": "Κ",
                       "M": "Μ", "N": "Ν", "O": "Ο", "P": "Ρ", "T": "Τ", "Y": "Υ", "X": "Χ",
                       "o": "ο"},
             "full-width": {c: chr(ord(c) + 0xFEE0) for c in "0123456789@."}}[alphabet]  # fmt: skip
    disguised = "".join(swaps.get(c, c) for c in value)
    assert disguised != value
    findings = SCANNER.scan([Field("body", f"x {disguised} y", "body")]).findings
    assert [(f.detector, f.how) for f in findings if f.detector == detector] == [
        (detector, "folded")
    ]


VARIABLE_LENGTH = ["slack_token", "gitlab_token", "openai_api_key", "anthropic_api_key", "pypi_token",
                   "url_credentials", "secret_assignment"]  # fmt: skip


@pytest.mark.parametrize("word", ["EXAMPLE", "xxxx", "_sample", "PLACEHOLDER", "your-", "****"])
@pytest.mark.parametrize("detector", VARIABLE_LENGTH)
def test_a_placeholder_word_glued_to_a_real_value_does_not_wave_it_through(
    detector: str, word: str
) -> None:
    """A documentation word marks an example only when nothing random is left without it:
    an agent could append one to a real token (which the receiver strips off)."""
    value = VALID[detector](random.Random(11))
    glued = value[:-1] + word + value[-1] if detector == "url_credentials" else value + word
    if detector == "url_credentials":  # the password ends at '@'
        glued = value.replace("@", word + "@", 1)
    assert detector in _detected(f"x {glued} y"), glued


@pytest.mark.parametrize("split", [2, 4, 8])
def test_a_value_split_across_json_fields_or_query_parameters_is_found(split: int) -> None:
    value = VALID["aws_access_key"](random.Random(split))
    parts = [
        value[i : i + len(value) // split + 1]
        for i in range(0, len(value), len(value) // split + 1)
    ]
    body = json.dumps({f"p{i}": p for i, p in enumerate(parts)}).encode()
    found = SCANNER.scan(body_fields(body, "application/json")).findings
    assert [(f.detector, f.where) for f in found] == [
        ("aws_access_key", "JSON string values joined")
    ]
    query = "/x?" + "&".join(f"p{i}={p}" for i, p in enumerate(parts))
    found = SCANNER.scan(url_fields(query)).findings
    assert [(f.detector, f.where) for f in found] == [("aws_access_key", "query values joined")]


def test_a_deeply_nested_encoding_is_reported_not_missed() -> None:
    value = VALID["github_token"](random.Random(1)).encode()
    for _ in range(5):
        value = base64.b64encode(value)
    result = SCANNER.scan([Field("body", value.decode(), "body")])
    assert not result.complete
    rule = DlpRule(0, None, frozenset({"email_address"}), "block", None, None,
                   frozenset({"body"}))  # fmt: skip
    from egress.dlp.policy import too_deep

    decisions = decide([too_deep("body", "request")], (rule,))
    assert [(d.finding.detector, d.action) for d in decisions] == [("too_deeply_encoded", "block")]


@pytest.mark.parametrize(
    "where", ["json key", "nested key", "form name", "header name", "multipart name"]
)
def test_a_location_never_repeats_the_value(where: str) -> None:
    """Locations name fields by what the agent called them only when a name cannot hold a
    value (letters, '_', '-'); any other name is shown by its position."""
    value = VALID["aws_access_key"](random.Random(9))
    hexed = value.encode().hex()
    fields = {
        "json key": body_fields(json.dumps({value: 1, hexed: 2}).encode(), "application/json"),
        "nested key": body_fields(json.dumps({value: {"x": value}}).encode(), "application/json"),
        "form name": body_fields(f"{value}=1&{hexed}=2".encode(), "application/x-www-form-urlencoded"),
        "header name": header_fields([(f"x-{value}", "1"), (hexed, "2")]),
        "multipart name": body_fields(
            b'--b\r\ncontent-disposition: form-data; name="' + value.encode() + b'"\r\n\r\nv\r\n--b--\r\n',
            "multipart/form-data; boundary=b"),
    }[where]  # fmt: skip
    findings = SCANNER.scan(fields).findings
    assert findings
    for f in findings:
        for form in (value, value.lower(), hexed):
            assert (
                form not in f.where and form not in repr(f) and form not in json.dumps(f.to_dict())
            )


def test_masking_gives_one_token_per_value_and_restores_them() -> None:
    emails = [VALID["email_address"](random.Random(i)) for i in range(2)]
    body = json.dumps({"a": emails[0], "b": [emails[1], emails[0]]}).encode()
    findings = SCANNER.scan(body_fields(body, "application/json")).findings
    masker = Masker()
    masked = masker.replace(body, findings)
    assert json.loads(masked) == {"a": "[EMAIL_1]", "b": ["[EMAIL_2]", "[EMAIL_1]"]}
    assert all(e not in repr(masker) for e in emails)
    restored, n = masker.restore(masked, json_escaped=True)
    assert (json.loads(restored), n) == (json.loads(body), 3)


def _cfg(dlp: Any, agents: bool = False) -> dict[str, Any]:
    cfg: dict[str, Any] = {"allow": ["api.example.com"], "dlp": dlp}
    if agents:
        cfg["identity"] = {"proxy_authorization": True}
        cfg["agents"] = [{"name": "coder", "token": {"sha256": "0" * 64}}]
    return cfg


BAD = [
    ({"rules": []}, "dlp.rules: must be a non-empty list"),
    ({"rules": [{"action": "block"}]}, "dlp.rules[0].detectors: is required"),
    ({"rules": [{"detectors": ["emial_address"], "action": "block"}]},
     "dlp.rules[0].detectors[0]: 'emial_address' is not a detector or group (all, credentials, personal): did you mean 'email_address'?"),
    ({"rules": [{"detectors": ["all"], "action": "drop"}]},
     "dlp.rules[0].action: 'drop' is not one of block, mask, report"),
    ({"rules": [{"detectors": ["all"], "action": "block", "hosts": ["https://x.com"]}]},
     "dlp.rules[0].hosts[0]: 'https://x.com' has a scheme"),
    ({"rules": [{"detectors": ["all"], "action": "block", "agents": ["coder"]}]},
     "dlp.rules[0].agents[0]: there are no agents"),
    ({"rules": [{"detectors": ["all"], "action": "block", "surfaces": ["cookies"]}]},
     "dlp.rules[0].surfaces[0]: 'cookies' is not one of body, url, headers"),
    ({"rules": [{"detectors": ["all"], "action": "block", "detector": ["x"]}]},
     "dlp.rules[0].detector: unknown key: did you mean 'detectors'?"),
    ({"rules": [{"detectors": ["all"], "action": "block"}], "phone_regions": ["XX"]},
     "dlp.phone_regions[0]: 'XX' is not a region code"),
    ({"rules": [{"name": "a", "detectors": ["all"], "action": "block"},
                {"name": "a", "detectors": ["all"], "action": "report"}]},
     "dlp.rules: two rules are named 'a'"),
    ({"rule": []}, "dlp.rule: unknown key: did you mean 'rules'?"),
    ({"inbound": [{"action": "mask"}]}, "dlp.inbound[0].action: 'mask' is not one of report, block"),
    ({"inbound": [{"host": ["x.com"]}]}, "dlp.inbound[0].host: unknown key: did you mean 'hosts'?"),
    ({}, "dlp.rules: must be a non-empty list: give rules (detectors, action), inbound rules, or both"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dlp", "message"), BAD, ids=[m.split(":")[0] + "|" + m[-20:] for _, m in BAD]
)
def test_a_bad_dlp_block_names_the_key_and_the_fix(tmp_path: Path, dlp: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(_cfg(dlp), "egress.yaml", tmp_path)
    assert message in str(e.value)


def test_groups_expand_and_an_agent_rule_applies_to_that_agent_only(tmp_path: Path) -> None:
    cfg = parse(_cfg({"rules": [{"detectors": ["personal"], "action": "mask", "agents": ["coder"],
                                 "hosts": ["*.example.com"]}]}, agents=True),
                "egress.yaml", tmp_path)  # fmt: skip
    assert cfg.dlp is not None
    rule = cfg.dlp.rules[0]
    assert "email_address" in rule.detectors and "github_token" not in rule.detectors
    assert cfg.dlp.active("api.example.com", "coder") == (rule,)
    assert cfg.dlp.active("api.example.com", None) == ()
    assert cfg.dlp.active("example.org", "coder") == ()


def test_inbound_alone_is_a_dlp_block(tmp_path: Path) -> None:
    cfg = parse(
        _cfg({"inbound": [{"hosts": ["*.example.com"], "action": "block"}]}),
        "egress.yaml",
        tmp_path,
    )
    assert cfg.dlp is not None and cfg.dlp.rules == ()
    assert [r.label for r in cfg.dlp.inbound_for("a.example.com", None)] == ["dlp.inbound[0]"]
    assert cfg.dlp.inbound_for("example.org", None) == ()


def test_the_example_config_loads() -> None:
    from egress.config import load

    cfg = load(Path(__file__).parent.parent / "config" / "egress-dlp.yaml")
    assert cfg.dlp is not None and [r.action for r in cfg.dlp.rules] == ["block", "mask", "report"]
    assert cfg.dlp.restore_masked


SLOW_BEFORE = {  # each took seconds to minutes before its fix (adversarial reviews)
    "private key headers": "-----BEGIN RSA PRIVATE KEY-----" + "a: \\n" * 40 + "!",
    "base64 run without a line break": "Ab" * 40_000 + "!\n",
    "json of many zeros": json.dumps([0] * 300_000),
    "hex-looking prose": "a bad face fed a deaf bee " * 8_000,
    "many at signs": "@a." * 60_000,
}


@pytest.mark.parametrize("name", list(SLOW_BEFORE))
def test_no_input_makes_a_scan_slow(name: str) -> None:
    import time

    text = SLOW_BEFORE[name]
    start = time.perf_counter()
    SCANNER.scan(
        body_fields(text.encode(), "application/json" if name.startswith("json") else "text/plain")
    )
    assert time.perf_counter() - start < 5.0, name


@settings(max_examples=60, deadline=None)
@given(
    filler=st.text(alphabet="abc key token XYZ:=\n", max_size=600),
    value_len=st.integers(20, 300),
    seed=st.integers(0, 2**32),
    name=st.sampled_from(["api_key", "client_secret", "DB_PASSWORD", "x-auth-token", "privateKey"]),
    at=st.integers(0, 600),
)
def test_reading_near_a_keyword_finds_what_reading_everything_finds(
    filler: str, value_len: int, seed: int, name: str, at: int
) -> None:
    """secret_assignment runs only around its keywords (Detector.near): the same findings
    as a run over the whole text, whatever the value's length and the text around it."""
    import dataclasses as dc
    import string as s

    rng = random.Random(seed)
    value = "".join(rng.choice(s.ascii_letters + s.digits) for _ in range(value_len))
    text = filler[:at] + f' {name} = "{value}" ' + filler[at:]
    everywhere = Scanner([dc.replace(d, near=None) for d in catalogue()])
    found = {(f.detector, f.value) for f in SCANNER.scan([Field("body", text, "body")]).findings}
    want = {(f.detector, f.value) for f in everywhere.scan([Field("body", text, "body")]).findings}
    assert found == want
