"""Small responses are not held back by Nagle's algorithm, with one worker or several.

Each worker accepts on a socket egress made itself (egress.workers). asyncio turns Nagle off
(TCP_NODELAY) only where the socket's protocol says TCP; a listener made with protocol 0
left it on, and every small response then waited for the client's delayed ACK: about 45 ms
per request on Linux, whatever the load (python -m bench found it). The bound here is
generous (a proxied request takes a few ms, under 20 ms on a loaded machine); the failure
it guards against is never under 40 ms.
"""

from __future__ import annotations

import ssl
import statistics
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import API, base_config, start_proxy, write_config
from tests.nginx_upstream import NginxUpstream
from tests.upstream import Upstream

PH = "egress-api_token-placeholder"


@pytest.mark.parametrize("workers", [1, 2])
def test_sequential_small_requests_are_not_delayed(
    tmp_path: Path, upstream: Upstream, nginx: NginxUpstream, test_ca_file: Path, workers: int
) -> None:
    # nginx, not the Python upstream: that one writes a response's head and body in two
    # small writes and so meets the same delayed ACK itself.
    cfg = base_config(tmp_path, test_ca_file, upstream.port)
    cfg["allow"] += [{"host": API, "ports": [nginx.h1_port]}]
    cfg["workers"] = workers
    p = start_proxy(write_config(tmp_path, cfg), tmp_path)
    try:
        tls = ssl.create_default_context(cafile=str(p.ca))
        times = []
        with httpx.Client(proxy=p.url, verify=tls) as c:
            for i in range(30):
                start = time.perf_counter()
                r = c.get(f"https://{API}:{nginx.h1_port}/n{i}",
                          headers={"authorization": f"Bearer {PH}"})  # fmt: skip
                times.append(time.perf_counter() - start)
                assert r.status_code == 200
        # The first requests open the tunnel and the TLS sessions.
        assert statistics.median(times[5:]) < 0.030, times
    finally:
        assert p.stop() == 0
