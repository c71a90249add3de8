"""Counting the most frequent keys in bounded memory: the *Space-Saving* table (Metwally,
Agrawal and El Abbadi, 2005) that ``egress review --audit`` and ``egress learn`` keep
their busiest hosts and destinations in, and the order counts are shown in.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any


def most_first(counts: Mapping[str, int]) -> dict[str, int]:
    """``counts`` ordered by count, the largest first; ties by key."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class SpaceSaving:
    """The Space-Saving top-k table (Metwally et al. 2005) over hashable keys: at most
    ``capacity`` keys; a new key replaces the one with the smallest estimate."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[Any, int] = {}
        self._heap: list[tuple[int, int, Any]] = []  # (estimate when pushed, seq, key), lazy
        self._seq = 0

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, key: Any) -> tuple[bool, Any]:
        """Count ``key``. Returns (whether it is new in the table, the key it evicted)."""
        counts = self.counts
        c = counts.get(key)
        if c is not None:
            counts[key] = c + 1
            return False, None
        heap = self._heap
        self._seq += 1
        if len(counts) < self.capacity:
            counts[key] = 1
            heapq.heappush(heap, (1, self._seq, key))
            return True, None
        while True:
            est, _, k = heap[0]
            cur = counts[k]
            if cur != est:
                heapq.heapreplace(heap, (cur, self._seq, k))
                self._seq += 1
                continue
            heapq.heappop(heap)
            break
        del counts[k]
        counts[key] = est + 1
        heapq.heappush(heap, (est + 1, self._seq, key))
        return True, k

    def top(self, n: int) -> list[Any]:
        return [k for k, _ in sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]
