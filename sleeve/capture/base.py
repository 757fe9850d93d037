"""The one interface every L2 port backend implements.

A port is a non-blocking file descriptor the event loop watches. On each
readiness event the node calls ``read_batch`` once: it drains at most
``max_frames`` frames without blocking, so one busy port cannot starve the
UDP side. Returned frames are ``bytes`` the caller owns (it may keep them).
``write`` injects one frame; a full device queue drops the frame and counts
it rather than blocking the loop.
"""

from __future__ import annotations

from typing import Protocol

BATCH = 64  # frames per readiness event: bounds latency added to the other fds


class Port(Protocol):
    name: str
    mtu: int
    tx_dropped: int

    def fileno(self) -> int: ...

    def read_batch(self, max_frames: int = BATCH) -> list[bytes]: ...

    def write(self, frame: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class PortError(Exception):
    """Local misuse or a missing capability (no /dev/net/tun, no such interface)."""
