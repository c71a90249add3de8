"""egress's own log format, and what it keeps quiet of mitmproxy's logging.

Its own module, without mitmproxy: every command configures logging first, and a command
that never proxies (check, review, env, redirect...) should not pay for importing
mitmproxy's proxy layers to do so.
"""

from __future__ import annotations

import asyncio
import logging


class _QuietMitmproxyLogs(logging.Filter):
    """mitmproxy logs every connection at INFO and, when upstream verification fails while
    the client keeps sending, a spurious 'mitmproxy has crashed!' traceback. The user sees
    the outcome in the audit log and the client's 502 instead. Its advice on a busy port
    names mitmproxy's flags, not egress's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False  # connections cancelled at shutdown
        if "failed to listen on" in record.getMessage():
            # It suggests `--mode regular@PORT`, a flag egress does not have; egress says
            # what to change itself (ProxyStartError: listen.port, or 0 for a free port).
            return False
        if "has crashed" in record.getMessage():
            # One line, no traceback (it can quote request bytes); the flows of that
            # connection are audited as errors when it closes (AuditLog).
            error = record.exc_info[1] if record.exc_info else None
            record.msg, record.args, record.exc_info = (
                "mitmproxy failed on a connection (%s); it was closed",
                (type(error).__name__ if error else "unknown error",),
                None,
            )
            record.exc_text = None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("egress: %(levelname)s: %(message)s"))
    handler.addFilter(_QuietMitmproxyLogs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
