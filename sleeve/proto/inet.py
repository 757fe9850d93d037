"""Ethernet, IPv4 and IPv6 header parsing for the oversize-frame path (sans-IO).

Only what fragmentation and ICMP synthesis need; the hot path never calls
this. Every parser checks lengths before reading and raises ``FrameError``
(never IndexError or struct.error), because frames come from guests.

Ethernet, optionally with up to two 802.1Q / 802.1ad tags (kept as they are)::

    +--------+--------+--------------------------------------+--------+---------
    | dst 6  | src 6  | [TPID 0x8100|0x88a8 2, TCI 2] x 0..2 | type 2 | payload
    +--------+--------+--------------------------------------+--------+---------

IPv4 (RFC 791)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |      TOS      |         Total Length          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        Identification         |R|D|M|   Fragment Offset (x8)  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      TTL      |   Protocol    |        Header Checksum        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                        Source Address                         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                     Destination Address                       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      Options (IHL*4 - 20 bytes): type (copy bit 7), len, data |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

IPv6 (RFC 8200), then extension headers until the upper-layer header::

    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version| Traffic Class |           Flow Label                  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |         Payload Length        |  Next Header  |   Hop Limit   |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                  Source Address (16 bytes)                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |               Destination Address (16 bytes)                  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

ETH_HLEN: Final = 14
ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
VLAN_TPIDS: Final = (0x8100, 0x88A8)
MAX_VLAN_TAGS: Final = 2

IPV4 = struct.Struct("!BBHHHBBH4s4s")
IPV4_HLEN: Final = IPV4.size  # 20
IPV4_DF: Final = 0x4000
IPV4_MF: Final = 0x2000
IPV4_OFFSET_MASK: Final = 0x1FFF
IPV6 = struct.Struct("!IHBB16s16s")
IPV6_HLEN: Final = IPV6.size  # 40
IPV4_MIN_MTU: Final = 68  # RFC 791: a 60-byte header + 8 data bytes pass unfragmented
IPV6_MIN_MTU: Final = 1280  # RFC 8200 5

PROTO_ICMP: Final = 1
PROTO_ICMPV6: Final = 58
_IPV6_EXT_8: Final = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT: Final = 44
_IPV6_AH: Final = 51
_MAX_EXT_HEADERS: Final = 16  # a chain this long is an attack, not a packet


class FrameError(ValueError):
    """A frame that does not parse. Carries a drop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum; 0 when computed over data holding a valid checksum."""
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def l2_header(frame: bytes) -> tuple[int, int]:
    """Return (Ethernet header length including VLAN tags, inner ethertype)."""
    if len(frame) < ETH_HLEN:
        raise FrameError("short_ethernet")
    off = 12
    (etype,) = struct.unpack_from("!H", frame, off)
    for _ in range(MAX_VLAN_TAGS):
        if etype not in VLAN_TPIDS:
            break
        off += 4
        if len(frame) < off + 2:
            raise FrameError("short_vlan")
        (etype,) = struct.unpack_from("!H", frame, off)
    return off + 2, int(etype)


def is_group_mac(mac: bytes) -> bool:
    """Multicast or broadcast: the I/G bit of the first octet."""
    return bool(mac[0] & 1)


def ipv4_unicast(addr: bytes) -> bool:
    """A host address an ICMP error may come from or go to (RFC 1812 4.3.2.7)."""
    # 0/8 "this network", 127/8 loopback, 224/4 multicast, 240/4 reserved + broadcast
    return addr[0] not in (0, 127) and addr[0] < 224


def ipv6_unicast(addr: bytes) -> bool:
    return addr[0] != 0xFF and addr not in (bytes(16), bytes(15) + b"\x01")


@dataclass(frozen=True, slots=True)
class Ipv4:
    packet: bytes  # header + payload, without Ethernet padding
    hlen: int
    frag: int  # flags and fragment offset, as on the wire
    proto: int
    src: bytes
    dst: bytes

    @property
    def header(self) -> bytes:
        return self.packet[: self.hlen]

    @property
    def payload(self) -> bytes:
        return self.packet[self.hlen :]

    @property
    def df(self) -> bool:
        return bool(self.frag & IPV4_DF)

    @property
    def offset(self) -> int:
        """Fragment offset in 8-byte units."""
        return self.frag & IPV4_OFFSET_MASK


def parse_ipv4(frame: bytes, off: int) -> Ipv4:
    if len(frame) < off + IPV4_HLEN:
        raise FrameError("short_ipv4")
    vihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = IPV4.unpack_from(frame, off)
    hlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or hlen < IPV4_HLEN:
        raise FrameError("bad_ipv4_header")
    if not hlen <= total <= len(frame) - off:
        raise FrameError("bad_ipv4_length")
    packet = frame[off : off + total]
    # A router drops a corrupted header silently (RFC 1812 5.2.2); so do we.
    if checksum(packet[:hlen]):
        raise FrameError("bad_ipv4_checksum")
    return Ipv4(packet, hlen, frag, proto, src, dst)


@dataclass(frozen=True, slots=True)
class Ipv6:
    packet: bytes  # header + payload, without Ethernet padding
    src: bytes
    dst: bytes
    proto: int  # the upper-layer protocol, or the header where the walk had to stop
    upper: int  # offset of that header in ``packet``
    first: bool  # False for a non-first fragment (no upper-layer header to see)


def parse_ipv6(frame: bytes, off: int) -> Ipv6:
    if len(frame) < off + IPV6_HLEN:
        raise FrameError("short_ipv6")
    vtf, plen, nxt, _hops, src, dst = IPV6.unpack_from(frame, off)
    if vtf >> 28 != 6:
        raise FrameError("bad_ipv6_header")
    if plen == 0 or plen > len(frame) - off - IPV6_HLEN:  # 0: jumbogram, never on a TAP
        raise FrameError("bad_ipv6_length")
    packet = frame[off : off + IPV6_HLEN + plen]
    pos = IPV6_HLEN
    first = True
    for _ in range(_MAX_EXT_HEADERS):
        if nxt not in _IPV6_EXT_8 and nxt not in (_IPV6_FRAGMENT, _IPV6_AH):
            return Ipv6(packet, src, dst, nxt, pos, first)
        if len(packet) < pos + 8:  # every extension header is at least 8 bytes
            raise FrameError("short_ipv6_extension")
        if nxt == _IPV6_FRAGMENT:
            (frag,) = struct.unpack_from("!H", packet, pos + 2)
            if frag >> 3:
                first = False
            size = 8
        elif nxt == _IPV6_AH:
            size = (packet[pos + 1] + 2) * 4
        else:
            size = (packet[pos + 1] + 1) * 8
        nxt = packet[pos]
        pos += size
        if pos > len(packet):
            raise FrameError("short_ipv6_extension")
        if not first:
            return Ipv6(packet, src, dst, nxt, pos, first)
    raise FrameError("ipv6_extension_chain")
