"""The CA certificate file agents trust (``ca.cert_path``), held by one egress at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from egress.errors import EgressError


class CaInUse(EgressError):
    pass


@dataclass
class CaFileLock:
    """An exclusive lock on the CA certificate file itself, held for the life of the
    process: two egress processes never write one CA file (the second would replace the
    certificate the first one's clients trust). The certificate is written in place under
    the lock; nothing else appears beside it (an agent directory holds only what the agent
    needs)."""

    path: Path
    fd: int

    @classmethod
    def take(cls, cert_path: Path, config: str) -> CaFileLock:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(cert_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _flock_owner(os.fstat(fd).st_ino) or "unknown"
            os.close(fd)
            raise CaInUse(
                f"{config}: ca.cert_path: {cert_path} belongs to another running egress (pid "
                f"{owner}); writing a new CA there would break that proxy's clients. Stop it, "
                "or give this one its own ca.cert_path (egress exec never needs one: it keeps "
                "its CA private)"
            ) from None
        return cls(cert_path, fd)

    def write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fchmod(self.fd, 0o644)

    def replace(self, data: bytes) -> None:
        """Replace the certificate while clients may be reading it (a reload): a new file,
        locked before it is renamed over the old one, so that a reader sees the whole old
        file or the whole new one, and the path is never unlocked."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, data)
            os.fchmod(fd, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        old, self.fd = self.fd, fd
        os.close(old)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)  # the certificate stays: clients may still hold it


def _flock_owner(inode: int) -> str | None:
    """The pid holding a flock on ``inode``, from /proc/locks (Linux), for the message."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                return fields[4]
    return None
