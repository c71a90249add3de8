"""``scheme: aws_sigv4`` secrets: the config keys, their errors, and multi-part sources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from egress.config import parse
from egress.errors import ConfigError, SecretLoadError
from egress.secrets import SecretStore, SecretValue

HOST = "s3.eu-west-1.amazonaws.com"


def cfg(**secret: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "aws", "scheme": "aws_sigv4", "hosts": [HOST],
                            "source": {"env": {"access_key_id": "K", "secret_access_key": "S"}}}  # fmt: skip
    base.update(secret)
    return {
        "allow": [HOST, "minio.internal"],
        "secrets": [{k: v for k, v in base.items() if v is not None}],
    }


def test_defaults() -> None:
    spec = parse(cfg(), "t.yaml", Path("/")).secrets[0]
    assert spec.scheme == "aws_sigv4" and spec.aws is not None
    assert spec.placeholder.startswith("AKIAEGRESS") and len(spec.placeholder) == 20
    assert spec.source.keys == (("access_key_id", "K"), ("secret_access_key", "S"))
    assert spec.auth_headers == ("authorization",)
    assert spec.aws.max_presign_seconds == 3600 and spec.aws.presigned


def test_env_mapping_gives_the_agent_a_dummy_secret_key() -> None:
    spec = parse(cfg(env={"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}),
                 "t.yaml", Path("/")).secrets[0]  # fmt: skip
    assert spec.env == "AWS_ACCESS_KEY_ID"
    assert [k for k, _ in spec.agent_env] == ["AWS_SECRET_ACCESS_KEY"]


ERRORS = [
    ("bad placeholder", {"placeholder": "egress-aws-placeholder"}, "secrets[0].placeholder", "upper-case letters and digits"),
    ("one key", {"source": {"env": "K"}}, "secrets[0].source.env", "reads several parts"),
    ("missing role", {"source": {"env": {"access_key_id": "K"}}}, "secrets[0].source.env.secret_access_key", "is required by scheme aws_sigv4"),
    ("unknown role", {"source": {"env": {"access_key_id": "K", "secret_access_key": "S", "sesion_token": "T"}}},
     "secrets[0].source.env.sesion_token", "did you mean 'session_token'?"),
    ("file with key", {"source": {"file": "/x.env", "key": "K"}}, "secrets[0].source.keys", "reads several parts"),
    ("key and keys", {"source": {"file": "/x.env", "key": "K", "keys": {"access_key_id": "a"}}}, "secrets[0].source.keys", "not both"),
    ("vault keys", {"source": {"vault": {"path": "aws/x", "keys": {"access_key_id": "a"}}}},
     "secrets[0].source.keys.secret_access_key", "is required"),
    ("inject", {"inject": ["body"]}, "secrets[0].inject", "does not go with scheme aws_sigv4"),
    ("aws on static", {"scheme": "static", "source": {"env": "K"}, "aws": {"regions": ["eu-west-1"]}}, "secrets[0].aws", "goes with 'scheme: aws_sigv4' only"),
    ("keys on static", {"scheme": "static", "source": {"env": {"access_key_id": "K"}}}, "secrets[0].source.env", "several parts go with aws_sigv4 and the OAuth mint types"),
    ("unknown scheme", {"scheme": "aws_sigv2"}, "secrets[0].scheme", "is not one of static, aws_sigv4"),
    ("unknown aws key", {"aws": {"region": ["eu-west-1"]}}, "secrets[0].aws.region", "did you mean 'regions'?"),
    ("bad region", {"aws": {"regions": ["EU West"]}}, "secrets[0].aws.regions[0]", "is not an AWS region name"),
    ("presign too long", {"aws": {"max_presign_seconds": 700000}}, "secrets[0].aws.max_presign_seconds", "7 days"),
    ("skew", {"aws": {"clock_skew_seconds": 3600}}, "secrets[0].aws.clock_skew_seconds", "15 minutes"),
    ("endpoint without service", {"aws": {"endpoints": {"minio.internal": {"region": "us-east-1"}}}},
     "secrets[0].aws.endpoints.minio.internal.service", "is required"),
]  # fmt: skip


@pytest.mark.parametrize("changes,key,message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_name_the_key_and_the_fix(changes: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(cfg(**changes), "t.yaml", Path("/"))
    text = str(e.value)
    assert f"{key}:" in text and message in text, text


def store_for(source: dict[str, Any], tmp: Path | None = None) -> SecretStore:
    spec = parse(cfg(source=source), "t.yaml", tmp or Path("/")).secrets[0]
    return SecretStore((spec,))


def test_env_parts_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "AKIAREAL0000000000001")
    monkeypatch.setenv("S", "real/secret+key")
    monkeypatch.setenv("T", "session-token-value")
    store = store_for(
        {"env": {"access_key_id": "K", "secret_access_key": "S", "session_token": "T"}}
    )
    store.load_all()
    value = store.get("aws")
    assert value is not None and value.reveal() == "real/secret+key"
    assert value.part("session_token") == "session-token-value"
    assert set(value.texts()) == {"AKIAREAL0000000000001", "real/secret+key", "session-token-value"}
    assert store.env_vars_consumed() == {"K", "S", "T"}
    assert "real" not in repr(value) and "real" not in f"{value}"


def test_optional_part_may_be_missing_required_may_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "AKIAREAL0000000000001")
    monkeypatch.setenv("S", "real/secret+key")
    monkeypatch.delenv("T", raising=False)
    store = store_for(
        {"env": {"access_key_id": "K", "secret_access_key": "S", "session_token": "T"}}
    )
    store.load_all()
    assert store.get("aws") is not None and store.get("aws").part("session_token") is None  # type: ignore[union-attr]
    monkeypatch.delenv("S")
    with pytest.raises(SecretLoadError, match=r"'S' \(secret_access_key\) is missing") as e:
        store_for({"env": {"access_key_id": "K", "secret_access_key": "S"}}).load_all()
    assert "AKIAREAL" not in str(e.value)


def test_file_parts_load(tmp_path: Path) -> None:
    f = tmp_path / "aws.yaml"
    f.write_text("id: AKIAREAL0000000000001\nsecret: real/secret+key\n")
    os.chmod(f, 0o600)
    store = store_for(
        {"file": str(f), "keys": {"access_key_id": "id", "secret_access_key": "secret"}}, tmp_path
    )
    store.load_all()
    assert store.get("aws") == SecretValue(
        "real/secret+key",
        (("access_key_id", "AKIAREAL0000000000001"), ("secret_access_key", "real/secret+key")),
    )


def test_wire_round_trip() -> None:
    v = SecretValue("s", (("access_key_id", "a"), ("secret_access_key", "s")))
    assert SecretValue.from_wire(v.to_wire()) == v
    assert SecretValue.from_wire(SecretValue("plain").to_wire()) == SecretValue("plain")


CHECK_CASES = [
    ("eu-west-1", 0, "secrets: aws (re-signed)"),
    ("us-east-1", 1, "aws_scope_mismatch (403)"),
]


@pytest.mark.parametrize("region,code,expected", CHECK_CASES)
def test_egress_check_shows_the_re_signing(
    tmp_path: Path, region: str, code: int, expected: str
) -> None:
    """What a reviewer sees: the agent holds the placeholder key id, egress re-signs."""
    import subprocess

    import yaml

    from tests.conftest import egress_cmd, proxy_env

    config = tmp_path / "egress.yaml"
    config.write_text(yaml.safe_dump(cfg(placeholder="AKIAEGRESS0000000001")))
    auth = (f"Authorization: AWS4-HMAC-SHA256 Credential=AKIAEGRESS0000000001/20261203/{region}/s3/"
            f"aws4_request, SignedHeaders=host;x-amz-date, Signature={'a' * 64}")  # fmt: skip
    run = subprocess.run(
        egress_cmd("check", "--config", str(config), "-H", auth, f"https://{HOST}/b/k"),
        capture_output=True, text=True, env=proxy_env(K="AKIAREALKEY000000001", S="real-secret-key-value"),
    )  # fmt: skip
    assert run.returncode == code, run.stdout + run.stderr
    assert expected in run.stdout
    assert "AKIAREALKEY000000001" not in run.stdout + run.stderr
    assert "real-secret-key-value" not in run.stdout + run.stderr


def test_the_credentials_example_loads() -> None:
    """config/egress-credentials.yaml shows every scheme of docs/credentials.md."""
    from egress import config

    cfg = config.load(Path(__file__).resolve().parents[1] / "config" / "egress-credentials.yaml")
    kinds = {s.name: (s.scheme, s.mint.type if s.mint else None) for s in cfg.secrets}
    assert kinds == {
        "aws_data": ("aws_sigv4", None), "github": ("static", "github_app"),
        "gcs": ("static", "google_service_account"), "crm": ("static", "oauth_client_credentials"),
        "partner_hooks": ("hmac", None), "blob_store": ("azure_shared_key", None),
    }  # fmt: skip
