"""Shared state for the canary audit (a plain module, so that pytest's conftest and the test
modules see one copy)."""

from __future__ import annotations

from pathlib import Path

# Every secret value any test hands to a proxy: the canaries searched for at the end.
CANARIES: set[str] = set()
# Every output a proxy wrote during the session (stdout, stderr, audit log).
OUTPUTS: list[Path] = []
