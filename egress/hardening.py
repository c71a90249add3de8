"""Keeping secret values out of reach of processes running as the same user.

``egress exec`` runs the agent as egress's own user. Without privilege, the kernel's
ptrace rules are the guard: a process that is not *dumpable* has its /proc/<pid>/environ,
/mem, /maps and friends readable only with CAP_SYS_PTRACE, and cannot be ptrace-attached,
even by its own user (Linux: prctl(PR_SET_DUMPABLE, 0); macOS: ptrace(PT_DENY_ATTACH)).
On top of that, the values of the variables egress read secrets from are overwritten in
the process's original environment block (what /proc/<pid>/environ shows) and removed from
os.environ, so that a privileged reader of that file finds no value either.

What a same-user process can still do is listed in docs/secrets.md: read the files egress
reads (a secrets file, a Vault token file), and send signals.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterable

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PT_DENY_ATTACH = 31


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def _environ_block() -> ctypes._Pointer[ctypes.c_void_p] | None:
    """The process's ``environ`` array, or None. Looked up in the global namespace first: a
    Python executable that holds its own copy of ``environ`` (Debian's python3 does, by copy
    relocation) leaves libc's symbol NULL, and reading that raised "NULL pointer access"
    at start-up in the container image."""
    candidates = []
    with contextlib.suppress(OSError):
        candidates.append(ctypes.CDLL(None))
    if (libc := _libc()) is not None:
        candidates.append(libc)
    for lib in candidates:
        try:
            block = ctypes.POINTER(ctypes.c_void_p).in_dll(lib, "environ")
        except ValueError:
            continue
        if block:  # a NULL pointer is false
            return block
    return None


def make_undumpable() -> bool:
    """Make this process unreadable through /proc and ptrace by same-user processes.
    True when the kernel took it."""
    libc = _libc()
    if libc is None:
        return False
    if sys.platform.startswith("linux"):
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 and is_undumpable()
    if sys.platform == "darwin":
        return libc.ptrace(PT_DENY_ATTACH, 0, None, 0) == 0
    return False


def is_undumpable() -> bool:
    libc = _libc()
    return bool(
        libc is not None
        and sys.platform.startswith("linux")
        and libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    )


def scrub_environ(names: Iterable[str]) -> list[str]:
    """Overwrite the values of ``names`` in the original environment block and remove
    them from os.environ. Returns the names that were present."""
    wanted = {n.encode() for n in names if n}
    scrubbed: list[str] = []
    if wanted:
        environ = _environ_block()
        i = 0
        while environ is not None and environ[i]:
            address = environ[i]
            entry = ctypes.string_at(address)
            name, sep, value = entry.partition(b"=")
            if sep and name in wanted and value:
                ctypes.memset(address + len(name) + 1, ord("*"), len(value))
                scrubbed.append(name.decode())
            i += 1
    for name in wanted:
        os.environ.pop(name.decode(), None)
    return sorted(set(scrubbed))
