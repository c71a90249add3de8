from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from egress.config import parse
from egress.errors import SecretLoadError
from egress.secrets import SecretStore, SecretValue

VALUE = "very-secret-value-42"


def store(tmp: Path, *secrets: dict) -> SecretStore:
    hosts = {h for s in secrets for h in s["hosts"]}
    return SecretStore(
        parse({"allow": sorted(hosts), "secrets": list(secrets)}, "t.yaml", tmp).secrets
    )


def test_secret_value_never_shows_itself() -> None:
    v = SecretValue(VALUE)
    for text in (repr(v), str(v), f"{v}", f"{v!r}", "%s" % v, repr([v]), repr({"k": v})):  # noqa: UP031 (logging style)
        assert VALUE not in text
    with pytest.raises(TypeError):
        pickle.dumps(v)
    assert v.reveal() == VALUE


@pytest.mark.parametrize(
    ("name", "content", "value"),
    [("s.env", f"# c\nexport TOKEN='{VALUE}'\nOTHER=x\n", VALUE),
     ("s.env", f'TOKEN="{VALUE}"\n', VALUE),
     ("s.yaml", f"TOKEN: {VALUE}\nOTHER: 1\n", VALUE),
     ("s.yml", f"TOKEN: '{VALUE}'\n", VALUE)],
)  # fmt: skip
def test_file_source_formats(tmp_path: Path, name: str, content: str, value: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    f.chmod(0o600)
    s = store(
        tmp_path, {"name": "t", "source": {"file": name, "key": "TOKEN"}, "hosts": ["a.test"]}
    )
    s.load_all()
    got = s.get("t")
    assert got is not None and got.reveal() == value


FAILURES = [
    # (file content, mode, message part)
    ("TOKEN=x\n", 0o644, "readable by other users (mode 644): run 'chmod 600"),
    ("OTHER=x\n", 0o600, "key 'TOKEN' is not in"),
    ("TOKEN=\n", 0o600, "the value is empty"),
    (None, 0o600, "does not exist"),
]


@pytest.mark.parametrize(("content", "mode", "message"), FAILURES)
def test_file_source_failures_name_secret_and_file(
    tmp_path: Path, content: str | None, mode: int, message: str
) -> None:
    f = tmp_path / "s.env"
    if content is not None:
        f.write_text(content)
        f.chmod(mode)
    s = store(
        tmp_path, {"name": "t", "source": {"file": "s.env", "key": "TOKEN"}, "hosts": ["a.test"]}
    )
    with pytest.raises(SecretLoadError) as e:
        s.load_all()
    assert "secret 't'" in str(e.value) and message in str(e.value)


def test_yaml_error_does_not_quote_the_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(f"TOKEN: [{VALUE}\n")
    f.chmod(0o600)
    s = store(
        tmp_path, {"name": "t", "source": {"file": "s.yaml", "key": "TOKEN"}, "hosts": ["a.test"]}
    )
    with pytest.raises(SecretLoadError) as e:
        s.load_all()
    assert VALUE not in str(e.value)


@pytest.mark.parametrize("bad", ["a\\r\\nX-Injected: 1", "a\\nb", "a\\0b"])
def test_values_that_could_split_headers_are_refused(tmp_path: Path, bad: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(f'TOKEN: "{bad}"\n')  # YAML escapes: a real CR, LF or NUL in the value
    f.chmod(0o600)
    s = store(
        tmp_path, {"name": "t", "source": {"file": "s.yaml", "key": "TOKEN"}, "hosts": ["a.test"]}
    )
    with pytest.raises(SecretLoadError, match="CR, LF or NUL"):
        s.load_all()


def test_env_source_and_optional_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EGRESS_T", VALUE)
    monkeypatch.delenv("EGRESS_MISSING", raising=False)
    s = store(
        tmp_path,
        {"name": "t", "source": {"env": "EGRESS_T"}, "hosts": ["a.test"]},
        {
            "name": "opt",
            "source": {"env": "EGRESS_MISSING"},
            "hosts": ["a.test"],
            "required": False,
        },
    )
    s.load_all()
    assert s.get("t") == SecretValue(VALUE)
    assert s.get("opt") is None and "$EGRESS_MISSING is not set" in s.problems["opt"]
    assert s.env_vars_consumed() == {"EGRESS_T", "EGRESS_MISSING"}
    assert VALUE not in repr(s)


def test_required_secret_missing_raises(tmp_path: Path) -> None:
    os.environ.pop("EGRESS_NOPE", None)
    s = store(tmp_path, {"name": "t", "source": {"env": "EGRESS_NOPE"}, "hosts": ["a.test"]})
    with pytest.raises(
        SecretLoadError, match=r"secret 't' \(env:EGRESS_NOPE\): \$EGRESS_NOPE is not set"
    ):
        s.load_all()


def test_a_dropped_value_is_still_known(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EGRESS_T", VALUE)
    s = store(tmp_path, {"name": "t", "source": {"env": "EGRESS_T"}, "hosts": ["a.test"]})
    s.load_all()
    s.drop("t")  # stale past max_stale: no longer injected...
    assert s.get("t") is None
    assert [v.reveal() for _, v in s.known()] == [VALUE]  # ...but still scrubbed and searched for
