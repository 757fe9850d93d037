"""ICMP "fragmentation needed" / ICMPv6 "packet too big" for frames the overlay cannot carry.

When a guest sends a packet that may not be fragmented (IPv4 with DF, or any
IPv6) and it does not fit the link, we answer as the next-hop router would,
so the guest's PMTU discovery shrinks its packets instead of retrying into a
black hole. The reply is a whole Ethernet frame to inject back into the
port: MACs swapped, VLAN tags kept, source IP = the original destination
(the guest's stack matches the quoted packet, not the sender).

ICMPv4 type 3 code 4 (RFC 792, RFC 1191), in IPv4 from the original dst::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |   Type = 3    |   Code = 4    |           Checksum            |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        unused = 0             |         Next-Hop MTU          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      original IP header (with options) + first 8 data bytes   |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

ICMPv6 type 2 (RFC 4443 3.2); the checksum covers the pseudo header
(src, dst, upper-layer length, next header 58)::

    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |   Type = 2    |   Code = 0    |           Checksum            |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                             MTU                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |    as much of the invoking packet as fits in 1280 bytes       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

No reply (None) for: group (multicast/broadcast) MACs, non-unicast IP source
or destination, ICMP error messages (RFC 1122 3.2.2, RFC 4443 2.4), non-first
fragments, packets that fit, IPv4 without DF (fragment those instead),
malformed frames, an IPv6 ``mtu`` below 1280 (hosts clamp it to 1280 anyway,
RFC 8201 4) or an IPv4 ``mtu`` below 68.

``mtu`` is the largest IP packet an untagged frame may carry over the link;
VLAN tags come out of it, since the overlay limits whole frames.
"""

from __future__ import annotations

import struct
from typing import Final

from sleeve.proto.inet import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPV4,
    IPV4_DF,
    IPV4_HLEN,
    IPV4_MIN_MTU,
    IPV6,
    IPV6_HLEN,
    IPV6_MIN_MTU,
    PROTO_ICMP,
    PROTO_ICMPV6,
    FrameError,
    checksum,
    ipv4_unicast,
    ipv6_unicast,
    is_group_mac,
    l2_header,
    parse_ipv4,
    parse_ipv6,
)

ICMP4_ERRORS: Final = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time, param
ICMP4_UNREACH: Final = 3
ICMP4_FRAG_NEEDED: Final = 4
ICMP6_PACKET_TOO_BIG: Final = 2
ICMP6_ERROR_MAX: Final = 127  # types 0..127 are errors, 128..255 informational
REPLY_TTL: Final = 64
_ICMP4 = struct.Struct("!BBHHH")
_ICMP6 = struct.Struct("!BBHI")


def too_big_reply(frame: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
    """The Ethernet frame telling the sender of ``frame`` to use at most ``mtu``, or None."""
    try:
        return _reply(bytes(frame), mtu)
    except FrameError:
        return None


def _reply(frame: bytes, mtu: int) -> bytes | None:
    l2len, ethertype = l2_header(frame)
    if is_group_mac(frame[0:6]) or is_group_mac(frame[6:12]):
        return None
    eth = frame[6:12] + frame[0:6] + frame[12:l2len]
    limit = mtu - (l2len - ETH_HLEN)
    if ethertype == ETHERTYPE_IPV4:
        body = _icmp4(frame, l2len, limit)
    elif ethertype == ETHERTYPE_IPV6:
        body = _icmp6(frame, l2len, limit)
    else:
        return None
    return None if body is None else eth + body


def _icmp4(frame: bytes, off: int, limit: int) -> bytes | None:
    ip = parse_ipv4(frame, off)
    if limit < IPV4_MIN_MTU or len(ip.packet) <= limit or not ip.df or ip.offset:
        return None
    if not (ipv4_unicast(ip.src) and ipv4_unicast(ip.dst)):
        return None
    if ip.proto == PROTO_ICMP:
        if not ip.payload:
            raise FrameError("short_icmp")
        if ip.payload[0] in ICMP4_ERRORS:
            return None
    quote = ip.packet[: ip.hlen + 8]
    icmp = bytearray(_ICMP4.pack(ICMP4_UNREACH, ICMP4_FRAG_NEEDED, 0, 0, min(limit, 0xFFFF)))
    icmp += quote
    struct.pack_into("!H", icmp, 2, checksum(bytes(icmp)))
    # DF with id 0: an atomic datagram needs no unique id (RFC 6864).
    hdr = bytearray(IPV4.pack(0x45, 0, IPV4_HLEN + len(icmp), 0, IPV4_DF, REPLY_TTL,
                              PROTO_ICMP, 0, ip.dst, ip.src))
    struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
    return bytes(hdr + icmp)


def _icmp6(frame: bytes, off: int, limit: int) -> bytes | None:
    ip = parse_ipv6(frame, off)
    if limit < IPV6_MIN_MTU or len(ip.packet) <= limit or not ip.first:
        return None
    if not (ipv6_unicast(ip.src) and ipv6_unicast(ip.dst)):
        return None
    if ip.proto == PROTO_ICMPV6:
        if ip.upper >= len(ip.packet):
            raise FrameError("short_icmpv6")
        if ip.packet[ip.upper] <= ICMP6_ERROR_MAX:
            return None
    quote = ip.packet[: IPV6_MIN_MTU - IPV6_HLEN - _ICMP6.size]
    icmp = bytearray(_ICMP6.pack(ICMP6_PACKET_TOO_BIG, 0, 0, limit)) + quote
    pseudo = ip.dst + ip.src + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    struct.pack_into("!H", icmp, 2, checksum(pseudo + bytes(icmp)))
    hdr = IPV6.pack(6 << 28, len(icmp), PROTO_ICMPV6, REPLY_TTL, ip.dst, ip.src)
    return hdr + bytes(icmp)


def is_too_big(frame: bytes | memoryview) -> bool:
    """``frame`` is an ICMP "fragmentation needed" or ICMPv6 "packet too big" message
    (as ``too_big_reply`` makes them: the relay that could not carry a frame answers with
    the far host's MAC and IP, so that the sender's stack matches it to the flow)."""
    try:
        b = bytes(frame[:ETH_HLEN + 8 + IPV6_HLEN])
        l2len, ethertype = l2_header(b)
    except FrameError:
        return False
    if ethertype == ETHERTYPE_IPV4:
        if len(b) < l2len + IPV4_HLEN or b[l2len + 9] != PROTO_ICMP:
            return False
        at = l2len + (b[l2len] & 0x0F) * 4
        return b[at:at + 2] == bytes((ICMP4_UNREACH, ICMP4_FRAG_NEEDED))
    if ethertype == ETHERTYPE_IPV6:
        return len(b) > l2len + IPV6_HLEN and b[l2len + 6] == PROTO_ICMPV6 \
            and b[l2len + IPV6_HLEN] == ICMP6_PACKET_TOO_BIG
    return False
