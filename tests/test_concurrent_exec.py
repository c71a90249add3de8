"""Two ``egress exec`` and one ``egress run`` on one config at the same time: each has its
own CA and port, none disturbs the others, every request gets its real secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import (
    API,
    SECRET,
    assert_no_secret,
    base_config,
    egress_cmd,
    proxy_env,
    start_proxy,
    write_config,
)
from tests.upstream import Upstream


def test_two_execs_and_a_run_at_once(
    tmp_path: Path, upstream: Upstream, test_ca_file: Path
) -> None:
    cfg = write_config(tmp_path, base_config(tmp_path, test_ca_file, upstream.port))
    run = start_proxy(cfg, tmp_path)
    try:
        script = (f'for i in 1 2 3; do curl -sS --fail -o /dev/null https://{API}:{upstream.port}/exec-$EGRESS_TAG-$i '
                  '-H "Authorization: Bearer $API_TOKEN" || exit 9; sleep 0.2; done')  # fmt: skip
        execs = [
            subprocess.Popen(
                egress_cmd(
                    "exec",
                    "--config",
                    str(cfg),
                    "--audit",
                    str(tmp_path / f"exec{n}.jsonl"),
                    "--",
                    "sh",
                    "-c",
                    script,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=proxy_env(EGRESS_TAG=str(n)),
            )  # fmt: skip
            for n in (1, 2)
        ]
        via_run = subprocess.run(
            ["curl", "-sS", "--fail", "-o", "/dev/null", "--proxy", run.url, "--cacert", str(run.ca),
             "-H", "Authorization: Bearer egress-api_token-placeholder", f"https://{API}:{upstream.port}/run"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        outputs = [p.communicate(timeout=90) for p in execs]
        assert via_run.returncode == 0, via_run.stderr
        for p, (out, err) in zip(execs, outputs, strict=True):
            assert p.returncode == 0, err
            assert_no_secret(out, err)
    finally:
        assert run.stop() == 0
    paths = sorted(r.path for r in upstream.requests)
    assert paths == sorted(["/run"] + [f"/exec-{n}-{i}" for n in (1, 2) for i in (1, 2, 3)])
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in upstream.requests)
    # egress run still owns ca.cert_path; each exec made and removed its own CA.
    assert run.ca.exists()
