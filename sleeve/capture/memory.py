"""In-memory port: a fake for fast, deterministic tests (no root, no kernel).

Frames "from the host" are pushed with ``inject``; frames the router writes
towards the host are collected in ``delivered``. A socketpair provides a real
readable fd so the node's event-loop code path is the same as for a TAP.
With ``vnet=True`` it behaves like a TAP with ``IFF_VNET_HDR``: injected frames
must carry the 10-byte virtio-net header, and ``delivered`` holds header + frame.
"""

from __future__ import annotations

import collections
import socket

from sleeve.capture.base import BATCH, write_segmented
from sleeve.proto.vnet import ZERO_HDR


class MemoryPort:
    def __init__(self, name: str = "mem0", mtu: int = 1500, capacity: int = 4096,
                 vnet: bool = False) -> None:
        self.name = name
        self.vnet = vnet
        self.mtu = mtu
        self.tx_dropped = 0
        self._rx: collections.deque[bytes] = collections.deque()
        self._capacity = capacity
        self.delivered: collections.deque[bytes] = collections.deque(maxlen=capacity)
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def inject(self, frame: bytes) -> None:
        """Pretend the host sent ``frame`` into the port."""
        if len(self._rx) >= self._capacity:
            raise OverflowError("memory port receive queue full")
        self._rx.append(frame)
        try:
            self._w.send(b"\x00")
        except BlockingIOError:
            pass  # the reader is already signalled

    def read_batch(self, max_frames: int = BATCH) -> list[bytes]:
        try:
            self._r.recv(max_frames)
        except BlockingIOError:
            pass
        out: list[bytes] = []
        while self._rx and len(out) < max_frames:
            out.append(self._rx.popleft())
        if self._rx:  # more than one batch queued: keep the fd readable
            try:
                self._w.send(b"\x00")
            except BlockingIOError:
                pass
        return out

    def write(self, frame: bytes | memoryview) -> None:
        self.delivered.append(ZERO_HDR + bytes(frame) if self.vnet else bytes(frame))

    def write_vnet(self, hdr: bytes | memoryview, frame: bytes | memoryview) -> None:
        if self.vnet:
            self.delivered.append(bytes(hdr) + bytes(frame))
        else:
            write_segmented(self, hdr, frame)

    def close(self) -> None:
        self._r.close()
        self._w.close()
