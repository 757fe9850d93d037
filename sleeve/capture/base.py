"""The one interface every L2 port backend implements.

A port is a non-blocking file descriptor the event loop watches. On each
readiness event the node calls ``read_batch`` once: it drains at most
``max_frames`` frames without blocking, so one busy port cannot starve the
UDP side. Returned frames are ``bytes`` the caller owns (it may keep them).
``write`` injects one frame; a full device queue drops the frame and counts
it rather than blocking the loop.

A port with ``vnet`` set (a TAP opened with ``IFF_VNET_HDR`` and TSO) returns every
frame from ``read_batch`` led by its 10-byte virtio-net header
(``sleeve.proto.vnet``), and ``write_vnet`` takes a header and a frame, e.g. a TCP
super-frame, in one call. A port without it segments such a frame in software
(``write_segmented``) so the node can call ``write_vnet`` on any port.
"""

from __future__ import annotations

from typing import Protocol

BATCH = 64  # frames per readiness event: bounds latency added to the other fds


class Port(Protocol):
    name: str
    mtu: int
    tx_dropped: int
    vnet: bool

    def fileno(self) -> int: ...

    def read_batch(self, max_frames: int = BATCH) -> list[bytes]: ...

    def write(self, frame: bytes | memoryview) -> None: ...

    def write_vnet(self, hdr: bytes | memoryview, frame: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class PortError(Exception):
    """Local misuse or a missing capability (no /dev/net/tun, no such interface)."""


def write_segmented(port: Port, hdr: bytes | memoryview, frame: bytes | memoryview) -> None:
    """``write_vnet`` for a port without offloads: ordinary frames, checksums completed.

    The caller has checked the header (``vnet.check``), so a VnetError here means a
    frame we cannot cut (not IPv4/IPv6 TCP); it is dropped and counted like a full queue.
    """
    from sleeve.proto.vnet import VnetError, to_frames

    try:
        frames = to_frames(hdr, frame)
    except VnetError:
        port.tx_dropped += 1
        return
    for f in frames:
        port.write(f)
