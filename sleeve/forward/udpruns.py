"""Runs of small UDP/IPv4 frames of one flow, written to the TAP as one USO super-frame.

At UDP 64 B the receiving router spends about two thirds of its time in one TAP
``writev`` per frame (bench/results/profile-20261205.md): the kernel's receive path runs
inside each call. A TAP with virtio headers also takes a UDP super-frame
(``VIRTIO_NET_HDR_GSO_UDP_L4``, Linux >= 4.18 through ``virtio_net_hdr_to_skb``): one
IPv4/UDP header, then the payloads of N datagrams of ``gso_size`` bytes (the last may be
shorter); the kernel cuts it into N datagrams (``__udp_gso_segment``) with their own
lengths, IP IDs and checksums. Consecutive frames of one flow that arrive in one read
of the underlay are joined that way and written once.

Only frames whose checksum is still to be done (``NEEDS_CSUM`` at the UDP checksum, as a
sender's TAP hands out locally sent UDP) are joined: for them the UDP check field holds
the pseudo-header sum, so the join recomputes that sum for the total length and nothing
the sender vouched for is rewritten. The IPv4 header must be the plain 20 bytes, no
fragment, and the frames of a run must agree on everything but the IP ID and checksum
and the payload::

    virtio header (10 bytes, little-endian)
     0        1        2-3       4-5        6-7          8-9
    +--------+--------+---------+----------+------------+-------------+
    | flags  | gso    | hdr_len | gso_size | csum_start | csum_offset |
    | NEEDS  | UDP_L4 |   42    | payload  |     34     |      6      |
    +--------+--------+---------+----------+------------+-------------+
    frame: Ethernet (14) | IPv4 (20, total length = 28 + sum of payloads,
           ID of the first frame, checksum recomputed) | UDP (8: ports, length =
           8 + sum of payloads, check = pseudo-header sum) | payload 1 | ... | payload N

The run key is Ethernet header + TOS + flags/TTL/protocol + addresses + ports.
"""

from __future__ import annotations

import logging
from typing import Final

from sleeve.capture.base import Port
from sleeve.proto import vnet
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

ETH: Final = 14
IP_END: Final = 34  # Ethernet + IPv4 without options
UDP_END: Final = 42
MAX_SEGS: Final = 64  # the kernel allows 128 (UDP_MAX_SEGMENTS); 64 bounds the copy
MAX_PAYLOAD: Final = 65535 - 28  # IPv4 total length is 16 bits
_CSUM_HDR_TAIL: Final = IP_END.to_bytes(2, "little") + (6).to_bytes(2, "little")


def run_key(hdr: bytes | memoryview, frame: bytes | memoryview) -> bytes | None:
    """The flow key of a frame that may join a run, else None.

    ``hdr`` is the frame's virtio header (NEEDS_CSUM at the UDP check, no GSO).
    """
    n = len(frame)
    if (n <= UDP_END or hdr[0] != vnet.F_NEEDS_CSUM or hdr[1] != vnet.GSO_NONE
            or hdr[6:10] != _CSUM_HDR_TAIL or frame[14] != 0x45 or frame[23] != 17
            or frame[12] != 8 or frame[13] != 0 or frame[20] & 0x3F or frame[21]):
        return None
    if (frame[16] << 8 | frame[17]) != n - ETH or (frame[38] << 8 | frame[39]) != n - IP_END:
        return None  # lengths that do not match the frame: not ours to merge
    return bytes(frame[0:16]) + bytes(frame[20:21]) + bytes(frame[22:24]) + bytes(
        frame[26:38])


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ip_csum(ip: bytes | bytearray) -> int:
    s = 0
    for i in range(0, len(ip), 2):
        s += ip[i] << 8 | ip[i + 1]
    return ~_fold(s) & 0xFFFF


def join(frames: list[bytes | memoryview]) -> tuple[bytes, bytes]:
    """(virtio header, super-frame) for a run of two or more frames (see the diagram)."""
    first = frames[0]
    seg = len(first) - UDP_END
    payload = b"".join(f[UDP_END:] for f in frames)
    ulen = 8 + len(payload)
    ip = bytearray(first[ETH:IP_END])
    ip[2:4] = (20 + ulen).to_bytes(2, "big")
    ip[10:12] = b"\x00\x00"
    ip[10:12] = _ip_csum(ip).to_bytes(2, "big")
    # NEEDS_CSUM: the check field holds the folded pseudo-header sum, not complemented.
    pseudo = (ip[12] << 8 | ip[13]) + (ip[14] << 8 | ip[15]) + (ip[16] << 8 | ip[17]) + (
        ip[18] << 8 | ip[19]) + 17 + ulen
    udp = bytes(first[IP_END:IP_END + 4]) + ulen.to_bytes(2, "big") + _fold(pseudo).to_bytes(
        2, "big")
    hdr = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, UDP_END, seg, IP_END, 6)
    return hdr, bytes(first[:ETH]) + bytes(ip) + udp + payload


class UdpRuns:
    """The run being gathered (bounded: ``MAX_SEGS`` frames, ``MAX_PAYLOAD`` bytes).
    ``add`` takes a frame or says the caller must ``take`` (write out) the run first."""

    __slots__ = ("_frames", "_hdr", "_key", "_seg", "_total")

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._hdr: bytes | memoryview = b""
        self._frames: list[bytes | memoryview] = []
        self._seg = 0  # frame length of the run; a shorter frame ends it
        self._total = 0

    def __bool__(self) -> bool:
        return bool(self._frames)

    def add(self, key: bytes, hdr: bytes | memoryview, frame: bytes | memoryview) -> bool:
        n = len(frame)
        if not self._frames:
            self._key, self._hdr, self._seg, self._total = key, hdr, n, n - UDP_END
            self._frames.append(frame)
            return True
        if (key != self._key or n > self._seg or len(self._frames) >= MAX_SEGS
                or self._total + n - UDP_END > MAX_PAYLOAD
                or len(self._frames[-1]) < self._seg):  # a short frame closed the run
            return False
        self._frames.append(frame)
        self._total += n - UDP_END
        return True

    def take(self) -> tuple[bytes | memoryview, list[bytes | memoryview]] | None:
        """The run's first header and its frames (the caller joins two or more)."""
        frames, self._frames = self._frames, []
        if not frames:
            return None
        return self._hdr, frames


def write(port: Port, hdr: bytes | memoryview, frames: list[bytes | memoryview],
          joining: bool, stats: Counters) -> bool:
    """Write a gathered run (``hdr`` is its frames' virtio header) to ``port``: joined
    into one super-frame when ``joining`` and there are several, else one by one.
    Returns whether to keep joining: False once the port took the frames but not the
    join."""
    if len(frames) > 1 and joining:
        joined_hdr, joined = join(frames)
        before = port.tx_dropped
        port.write_vnet(joined_hdr, joined)
        if port.tx_dropped == before:
            stats.inc("rx_udp_joined", len(frames))
            stats.inc("rx_udp_joined_writes")
            return True
        port.tx_dropped = before  # not lost: written again below, one by one
        for f in frames:
            port.write_vnet(hdr, f)
        if port.tx_dropped == before:
            log.warning("the TAP refused a UDP super-frame (GSO_UDP_L4): small UDP "
                        "frames are written one by one from now on")
            return False
        return True
    for f in frames:
        port.write_vnet(hdr, f)
    return joining
