"""Counters: every drop has a reason (what `status` and /metrics show)."""

from __future__ import annotations

import collections


class Counters:
    """Plain integer counters keyed by short snake_case labels.

    A Counter per owner (node, link) rather than a global registry keeps two
    nodes in one process independent.
    """

    __slots__ = ("c",)

    def __init__(self) -> None:
        self.c: collections.Counter[str] = collections.Counter()

    def inc(self, key: str, n: int = 1) -> None:
        self.c[key] += n

    def __getitem__(self, key: str) -> int:
        return self.c[key]

    def snapshot(self) -> dict[str, int]:
        return dict(self.c)
