"""Sliding anti-replay window over 64-bit datagram counters (RFC 6479 semantics).

Called only *after* a datagram authenticated: a forged datagram with a huge
counter must not be able to slide the window and lock the real sender out.

The window is a Python int used as a bitset: bit ``d`` set means counter
``highest - d`` was seen. Shifting a 2 Ki-bit int costs about as much as a
dict lookup, so no ring buffer of words is needed in Python.
"""

from __future__ import annotations

from typing import Final

WINDOW: Final = 2048  # counters behind the highest one that are still accepted once
MAX_COUNTER: Final = (1 << 64) - 1


class ReplayWindow:
    __slots__ = ("_bits", "_highest", "_mask", "_size")

    def __init__(self, size: int = WINDOW) -> None:
        if size < 64:
            raise ValueError("replay window must hold at least 64 counters")
        self._size = size
        self._mask = (1 << size) - 1
        self._highest = -1
        self._bits = 0

    @property
    def highest(self) -> int:
        return self._highest

    def accept(self, counter: int) -> str | None:
        """Record ``counter``; return None if fresh, else the drop reason."""
        if counter < 0 or counter > MAX_COUNTER:
            return "bad_counter"
        if counter > self._highest:
            shift = counter - self._highest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self._size else 1
            self._highest = counter
            return None
        diff = self._highest - counter
        if diff >= self._size:
            return "too_old"
        bit = 1 << diff
        if self._bits & bit:
            return "replay"
        self._bits |= bit
        return None
