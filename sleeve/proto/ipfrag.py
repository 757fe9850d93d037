"""Userspace IPv4 fragmentation of a captured frame too big for the overlay (sans-IO).

A guest may send IPv4 without DF in frames larger than the link's path MTU
allows; a router on a real wire would fragment them, so we do (RFC 791 3.2)
and the destination's stack reassembles. Each fragment is a whole Ethernet
frame with the original Ethernet header (VLAN tags included)::

    original    | eth | IP hdr + all options | data 0 .. n-1                                |
    fragment 1  | eth | IP hdr + all options | data 0 .. k-1        |  MF=1, offset = o
    fragment 2  | eth | IP hdr + copied opts | data k .. 2k'-1      |  MF=1, offset = o + k/8
    last        | eth | IP hdr + copied opts | data .. n-1 |           MF = original MF

Every fragment but the last carries a multiple of 8 data bytes (offsets count
8-byte units); ``o`` is the original offset, so fragments of fragments stay
consistent. Only options with the copy flag (type bit 7) are repeated after
the first fragment, padded with End-of-Options to a multiple of 4. TTL and
identification are kept (we bridge, we do not route); the header checksum is
recomputed.

``mtu`` is the largest IP packet an untagged frame may carry over the link;
VLAN tags come out of it, since the overlay limits whole frames.
"""

from __future__ import annotations

import struct
from typing import Final

from sleeve.proto.inet import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    IPV4_HLEN,
    IPV4_MF,
    IPV4_MIN_MTU,
    IPV4_OFFSET_MASK,
    FrameError,
    checksum,
    l2_header,
    parse_ipv4,
)

_RESERVED_FLAG: Final = 0x8000


def fragment_ipv4(frame: bytes | bytearray | memoryview, mtu: int) -> list[bytes] | None:
    """Split an IPv4 frame into frames whose IP packets fit ``mtu`` bytes.

    Returns the frame (without Ethernet padding) alone when it already fits,
    None when it may not or cannot be split: not IPv4, DF set, malformed or
    a bad header checksum, ``mtu`` below 68.
    """
    if mtu < IPV4_MIN_MTU:
        return None
    try:
        return _fragment(bytes(frame), mtu)
    except FrameError:
        return None


def _fragment(frame: bytes, mtu: int) -> list[bytes] | None:
    l2len, ethertype = l2_header(frame)
    if ethertype != ETHERTYPE_IPV4:
        return None
    ip = parse_ipv4(frame, l2len)
    eth = frame[:l2len]
    limit = mtu - (l2len - ETH_HLEN)
    if len(ip.packet) <= limit:
        return [eth + ip.packet]
    if ip.df:
        return None
    first = ip.header
    later = first[:IPV4_HLEN] + _copied_options(first[IPV4_HLEN:])
    later = bytes([0x40 | len(later) // 4]) + later[1:]
    if limit - len(first) < 8:
        return None  # tags plus a long header leave no room for 8 data bytes
    data = ip.payload
    keep = ip.frag & _RESERVED_FLAG
    out: list[bytes] = []
    head = first
    pos = 0
    while pos < len(data):
        room = limit - len(head)
        if pos + room < len(data):
            room &= ~7  # only the last fragment may end off an 8-byte boundary
        chunk = data[pos : pos + room]
        end = pos + len(chunk)
        more = end < len(data) or bool(ip.frag & IPV4_MF)
        units = ip.offset + pos // 8
        if units > IPV4_OFFSET_MASK:
            return None
        frag = keep | (IPV4_MF if more else 0) | units
        hdr = bytearray(head)
        struct.pack_into("!H", hdr, 2, len(head) + len(chunk))
        struct.pack_into("!H", hdr, 6, frag)
        struct.pack_into("!H", hdr, 10, 0)
        struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
        out.append(eth + bytes(hdr) + chunk)
        pos = end
        head = later
    return out


def _copied_options(opts: bytes) -> bytes:
    """The options a non-first fragment repeats, padded to 32-bit words."""
    out = bytearray()
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:  # End of Option List
            break
        if kind == 1:  # No Operation: padding, not copied
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2 or i + opts[i + 1] > len(opts):
            raise FrameError("bad_ipv4_option")
        n = opts[i + 1]
        if kind & 0x80:
            out += opts[i : i + n]
        i += n
    out += bytes(-len(out) % 4)
    return bytes(out)

