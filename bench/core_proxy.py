"""The floor: a bare mitmproxy Master with only Core, Proxyserver, NextLayer and TlsConfig.

    python bench/core_proxy.py --port P --confdir DIR --trusted-ca CA.pem

Anything built on mitmproxy pays at least this per request. It verifies the upstream
against ``--trusted-ca`` and streams bodies over ``--stream`` (default 1m) like egress.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--confdir", required=True)
    ap.add_argument("--trusted-ca", required=True)
    ap.add_argument("--stream", default="1m")
    a = ap.parse_args()
    opts = options.Options()
    master = Master(opts)
    master.addons.add(
        core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig()
    )
    opts.update(
        listen_host="127.0.0.1",
        listen_port=a.port,
        confdir=a.confdir,
        ssl_verify_upstream_trusted_ca=a.trusted_ca,
        stream_large_bodies=a.stream,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


if __name__ == "__main__":
    asyncio.run(main())
