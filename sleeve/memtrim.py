"""Give freed heap memory back to the system (glibc ``malloc_trim``), now and then.

Why (issue 23, RSS per router): a router's start is a burst of large, short-lived
buffers -- a full topology state (~80 KB at 50 peers) to and from every new link, ~50
handshakes, the reads that carry them -- all freed within seconds. glibc keeps freed
heap pages mapped (the heap top only shrinks when the very top is free, and the
per-thread arenas never do on their own), so RSS stays at the burst's high-water mark.
``malloc_trim(0)`` releases every free page of every arena (``madvise(MADV_DONTNEED)``
inside the heap too, since glibc 2.8); it takes about a millisecond on a router's heap,
so running it every ``TRIM_PERIOD`` on the timer costs nothing measurable.

Not glibc (musl, macOS): nothing to call, ``trim`` returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_PERIOD = 30.0  # s between trims


def _load() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class Trimmer:
    """``tick(now)``: trim every ``period`` seconds (the first one a period after start)."""

    def __init__(self, now: float, period: float = TRIM_PERIOD) -> None:
        self._fn = _load()
        self.period = period
        self._next = now + period
        self.trims = 0  # how many ran (status)

    def tick(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.period
        return self.trim()

    def trim(self) -> bool:
        """Trim now; False where there is no ``malloc_trim``."""
        if self._fn is None:
            return False
        self._fn(0)
        self.trims += 1
        return True
