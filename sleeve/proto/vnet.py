"""virtio-net header for a TAP opened with IFF_VNET_HDR, and the software fallback (sans-IO).

Every frame read from or written to the TAP carries this 10-byte prefix. It is
the legacy header (no ``num_buffers``, which only exists with mergeable rx
buffers) and little-endian, because TUNSETVNETBE is never set::

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     flags     |E|  gso_type   |      hdr_len (u16 LE)         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      gso_size (u16 LE)        |     csum_start (u16 LE)       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     csum_offset (u16 LE)      |  Ethernet frame ...
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    flags:    1 NEEDS_CSUM  L4 checksum field holds only the folded pseudo-header
                            sum (CHECKSUM_PARTIAL); sum from csum_start to the end
                            and store the result at csum_start + csum_offset
              2 DATA_VALID  checksum already verified (never taken from a peer)
    gso_type: 0 none, 1 TCPv4, 3 UDP (UFO), 4 TCPv6, 5 UDP_L4; E (0x80) = ECN/CWR
    gso_size: MSS, the TCP payload per segment
    hdr_len:  L2 + L3 + L4 header length (a hint; never trusted)

With TSO offloads on, the kernel hands us TCP super-frames of up to 64 KiB and
frames whose checksum is not finished. A peer or path that cannot take them gets
the software fallback, ``to_frames``: finish the checksum, or cut the super-frame
into MSS-sized ordinary frames with their own IP and TCP headers and checksums,
as the kernel's own GSO (tcp_gso_segment) would.

Checksums use ``int.from_bytes(data, "big") % 0xFFFF``: since 2**16 == 1 (mod
0xFFFF) that is the ones'-complement sum of the 16-bit words, computed in C, with
a nonzero sum congruent to 0 being 0xFFFF (end-around carry never yields +0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sleeve.proto.inet import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPV4_HLEN,
    IPV4_MF,
    IPV4_OFFSET_MASK,
    IPV6_HLEN,
    FrameError,
    l2_header,
)

HDR = struct.Struct("<BBHHHH")
HDR_LEN: Final = 10
ZERO_HDR: Final = bytes(HDR_LEN)

F_NEEDS_CSUM: Final = 1
F_DATA_VALID: Final = 2

GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80

MAX_FRAME: Final = 65535 + ETH_HLEN + 8  # a maximal IP packet under up to two VLAN tags
MAX_SEGMENTS: Final = 256  # 64 KiB at an MSS of 256; anything smaller is an attack

PROTO_TCP: Final = 6
TCP_HLEN: Final = 20
_CSUM_OFFSETS: Final = (6, 16)  # UDP, TCP: all NEEDS_CSUM we let into our kernel
_TCP_FIN: Final = 0x01
_TCP_PSH: Final = 0x08
_TCP_CWR: Final = 0x80
_IPV6_EXT_8: Final = frozenset({0, 43, 60})  # what ipv6_gso_segment walks: hop-by-hop, routing, dst
_MAX_EXT_HEADERS: Final = 16
_SEQ: Final = struct.Struct("!I")
_U16: Final = struct.Struct("!H")


class VnetError(ValueError):
    """A virtio-net header or super-frame we cannot use. Carries a drop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse(hdr: bytes | memoryview) -> VnetHeader:
    if len(hdr) < HDR_LEN:
        raise VnetError("bad_vnet")
    return VnetHeader(*HDR.unpack_from(hdr))


def check(h: VnetHeader, frame_len: int) -> str | None:
    """Drop reason for a header from a peer, or None if our kernel may be handed it.

    The kernel validates too (virtio_net_hdr_to_skb), but a header it rejects
    costs a write error per frame and UFO / UDP_L4 are not ours to forward;
    the checks here are the narrow set TSO and checksum offload produce.
    """
    return _check(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset,
                  frame_len)


def check_raw(hdr: bytes | memoryview, frame_len: int) -> str | None:
    """``check`` on the 10 header bytes (per-frame path: no ``VnetHeader`` built)."""
    if len(hdr) < HDR_LEN:
        return "bad_vnet"
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = HDR.unpack_from(hdr)
    return _check(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, frame_len)


def _check(flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int,
           csum_offset: int, frame_len: int) -> str | None:
    if frame_len < ETH_HLEN:
        return "short_frame"
    if flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        return "bad_vnet_flags"
    gso = gso_type & ~GSO_ECN
    if gso not in (GSO_NONE, GSO_TCPV4, GSO_TCPV6):
        return "bad_gso_type"
    if gso_type & GSO_ECN and gso == GSO_NONE:
        return "bad_gso_type"
    if flags & F_NEEDS_CSUM:
        if csum_start < ETH_HLEN or csum_start + csum_offset + 2 > frame_len:
            return "bad_csum_start"
        if csum_offset not in _CSUM_OFFSETS:
            return "bad_csum_offset"
    if gso != GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return "gso_without_csum"  # segments need a checksum finished per segment
        if gso_size == 0:
            return "bad_gso_size"
        if hdr_len > frame_len:
            return "bad_hdr_len"
        if frame_len > MAX_FRAME:
            return "oversize_gso"
    return None


def sanitized(hdr: bytes | memoryview) -> bytes:
    """The header without DATA_VALID: a peer never vouches for a checksum to our kernel."""
    if len(hdr) < HDR_LEN:
        raise VnetError("bad_vnet")
    out = bytearray(hdr[:HDR_LEN])
    out[0] &= ~F_DATA_VALID & 0xFF
    return bytes(out)


def _words(data: bytes | bytearray | memoryview) -> int:
    """An int congruent (mod 0xFFFF) to the ones'-complement sum of data's 16-bit words."""
    n = int.from_bytes(data, "big")
    return n << 8 if len(data) & 1 else n  # odd length: pad with a zero byte


def complete_csum(frame: bytes | bytearray | memoryview, csum_start: int,
                  csum_offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL checksum, as skb_checksum_help does."""
    at = csum_start + csum_offset
    if csum_start < 0 or csum_offset < 0 or at + 2 > len(frame):
        raise VnetError("bad_csum_offset")
    out = bytearray(frame)
    n = _words(memoryview(out)[csum_start:])  # the field's pseudo-header sum is summed in
    s = (n % 0xFFFF or 0xFFFF) if n else 0
    # 0 means "no checksum" for UDP over IPv4; 0xFFFF is the same value in ones' complement.
    _U16.pack_into(out, at, (0xFFFF - s) or 0xFFFF)
    return bytes(out)


def to_frames(hdr: bytes | memoryview, frame: bytes | memoryview) -> list[bytes]:
    """Ordinary frames for a path without offloads: checksum finished, super-frames cut."""
    h = parse(hdr)
    gso = h.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if h.gso_type & GSO_ECN:
            raise VnetError("bad_gso_type")
        if h.flags & F_NEEDS_CSUM:
            return [complete_csum(frame, h.csum_start, h.csum_offset)]
        return [frame if isinstance(frame, bytes) else bytes(frame)]
    if gso not in (GSO_TCPV4, GSO_TCPV6):
        raise VnetError("bad_gso_type")
    return _segment(h, gso == GSO_TCPV4, frame if isinstance(frame, bytes) else bytes(frame))


def tcp_headers(h: VnetHeader, frame: bytes | memoryview) -> int:
    """Where a TCP super-frame's payload starts (Ethernet through TCP options)."""
    if h.gso_type & ~GSO_ECN not in (GSO_TCPV4, GSO_TCPV6):
        raise VnetError("bad_gso_type")
    l4 = h.csum_start
    if h.csum_offset != 16 or l4 < ETH_HLEN or len(frame) < l4 + TCP_HLEN:
        raise VnetError("bad_csum_start")
    data = l4 + (frame[l4 + 12] >> 4) * 4
    if data < l4 + TCP_HLEN or data > len(frame):
        raise VnetError("bad_tcp_header")
    if h.gso_size == 0:
        raise VnetError("bad_gso_size")
    return data


def run_frame(h: VnetHeader, headers: bytes, payload: bytes, first: int,
              last: bool) -> tuple[bytes, bytes]:
    """(header, frame) for segments ``first``.. of a super-frame that arrived in pieces.

    ``h`` and ``headers`` are the super-frame's virtio header and its headers up to
    its payload, ``payload`` the bytes of the consecutive segments that did arrive
    (``first`` counted in gso_size units; ``last``: they include the final one). The
    frame is what the sender's kernel would have made of just those segments: sequence
    number, IP lengths, IPv4 id and checksum, FIN/PSH only at the end, CWR only at the
    start, and a CHECKSUM_PARTIAL pseudo-header sum for the new TCP length.
    """
    head = bytearray(headers)
    try:
        l3, etype = l2_header(headers)
    except FrameError as e:
        raise VnetError(e.reason) from None
    v4 = h.gso_type & ~GSO_ECN == GSO_TCPV4
    l4, mss = h.csum_start, h.gso_size
    if etype != (ETHERTYPE_IPV4 if v4 else ETHERTYPE_IPV6):
        raise VnetError("gso_type_mismatch")
    if l4 < l3 + (IPV4_HLEN if v4 else IPV6_HLEN) or len(head) < l4 + TCP_HLEN or not mss:
        raise VnetError("bad_csum_start")
    total = len(head) + len(payload)
    (seq,) = _SEQ.unpack_from(head, l4 + 4)
    _SEQ.pack_into(head, l4 + 4, (seq + first * mss) & 0xFFFFFFFF)
    if not last:
        head[l4 + 13] &= ~(_TCP_FIN | _TCP_PSH) & 0xFF
    if first:
        head[l4 + 13] &= ~_TCP_CWR & 0xFF
    if v4:
        ihl = (head[l3] & 0x0F) * 4
        if l3 + ihl > l4:
            raise VnetError("bad_ipv4_header")
        (ident,) = _U16.unpack_from(head, l3 + 4)
        _U16.pack_into(head, l3 + 2, total - l3)
        _U16.pack_into(head, l3 + 4, (ident + first) & 0xFFFF)
        _U16.pack_into(head, l3 + 10, 0)
        _U16.pack_into(head, l3 + 10,
                       0xFFFF - (_words(head[l3 : l3 + ihl]) % 0xFFFF or 0xFFFF))
        pseudo = _words(head[l3 + 12 : l3 + 20]) + PROTO_TCP
    else:
        _U16.pack_into(head, l3 + 4, total - l3 - IPV6_HLEN)
        pseudo = _words(head[l3 + 8 : l3 + 40]) + PROTO_TCP
    # the folded pseudo-header sum, as CHECKSUM_PARTIAL leaves it for the kernel
    _U16.pack_into(head, l4 + 16, (pseudo + total - l4) % 0xFFFF or 0xFFFF)
    if len(payload) <= mss:  # one segment: a plain frame with a partial checksum
        return HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, l4, 16), bytes(head) + payload
    gso = h.gso_type & ~GSO_ECN if first else h.gso_type  # ECN rides with CWR
    return HDR.pack(F_NEEDS_CSUM, gso, len(head), mss, l4, 16), bytes(head) + payload


def _segment(h: VnetHeader, v4: bool, frame: bytes) -> list[bytes]:
    try:
        l3, etype = l2_header(frame)
    except FrameError as e:
        raise VnetError(e.reason) from None
    l4 = h.csum_start
    if v4:
        if etype != ETHERTYPE_IPV4:
            raise VnetError("gso_type_mismatch")
        if len(frame) < l3 + IPV4_HLEN:
            raise VnetError("short_ipv4")
        vihl = frame[l3]
        total, ident, frag = struct.unpack_from("!HHH", frame, l3 + 2)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < IPV4_HLEN:
            raise VnetError("bad_ipv4_header")
        if frag & (IPV4_MF | IPV4_OFFSET_MASK):
            raise VnetError("ipv4_fragment")
        if frame[l3 + 9] != PROTO_TCP:
            raise VnetError("not_tcp")
        if l4 != l3 + ihl:
            raise VnetError("bad_csum_start")
        end = l3 + total  # drops any Ethernet padding
        if not l4 + TCP_HLEN <= end <= len(frame):
            raise VnetError("bad_ipv4_length")
        # src + dst + protocol; the TCP length is added per segment
        pseudo = _words(frame[l3 + 12 : l3 + 20]) + PROTO_TCP
    else:
        if etype != ETHERTYPE_IPV6:
            raise VnetError("gso_type_mismatch")
        if len(frame) < l3 + IPV6_HLEN:
            raise VnetError("short_ipv6")
        if frame[l3] >> 4 != 6:
            raise VnetError("bad_ipv6_header")
        (plen,) = _U16.unpack_from(frame, l3 + 4)
        end = l3 + IPV6_HLEN + plen
        if plen == 0 or end > len(frame):  # 0: a jumbogram (BIG TCP), not taken from a TAP here
            raise VnetError("bad_ipv6_length")
        nxt, pos = frame[l3 + 6], l3 + IPV6_HLEN
        for _ in range(_MAX_EXT_HEADERS):
            if nxt not in _IPV6_EXT_8:
                break
            if pos + 8 > end:
                raise VnetError("short_ipv6_extension")
            nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        if nxt != PROTO_TCP:
            raise VnetError("not_tcp")
        if l4 != pos:
            raise VnetError("bad_csum_start")
        if end < l4 + TCP_HLEN:
            raise VnetError("bad_ipv6_length")
        ext = l4 - l3 - IPV6_HLEN  # extension headers stay in every segment
        pseudo = _words(frame[l3 + 8 : l3 + 40]) + PROTO_TCP
    if h.csum_offset != 16:
        raise VnetError("bad_csum_offset")
    thl = (frame[l4 + 12] >> 4) * 4
    if thl < TCP_HLEN:
        raise VnetError("bad_tcp_header")
    data = l4 + thl
    if data > end:
        raise VnetError("short_tcp")
    mss = h.gso_size
    if mss == 0:
        raise VnetError("bad_gso_size")
    count = max(1, -(-(end - data) // mss))
    if count > MAX_SEGMENTS:
        raise VnetError("too_many_segments")

    template = bytearray(frame[:data])
    (seq,) = _SEQ.unpack_from(template, l4 + 4)
    flags = template[l4 + 13]
    # Header sums with the per-segment fields zeroed; each segment adds its own values.
    template[l4 + 4 : l4 + 8] = bytes(4)
    template[l4 + 13] = 0
    template[l4 + 16 : l4 + 18] = b"\x00\x00"
    tcp_base = pseudo + _words(template[l4:])
    if v4:
        template[l3 + 2 : l3 + 6] = bytes(4)
        template[l3 + 10 : l3 + 12] = b"\x00\x00"
        ip_base = _words(template[l3 : l3 + ihl])
    # Full pieces are word-aligned (thl is a multiple of 4) and all the same size:
    # one fold at a fixed split halves the number the costly modulo has to divide.
    half = (mss >> 2) * 16
    mask = (1 << half) - 1
    # One pack per segment: every field that changes, with the bytes between them as they are.
    tcp_gap = bytes(template[l4 + 8 : l4 + 13])  # ack, data offset
    window = bytes(template[l4 + 14 : l4 + 16])
    tail = bytes(template[l4 + 18 :])  # urgent pointer, options
    if v4:
        head = bytes(template[: l3 + 2])
        mid = bytes(template[l3 + 6 : l3 + 10])  # fragment field, TTL, protocol
        addrs = bytes(template[l3 + 12 : l4 + 4])  # addresses, options, ports
        pack = struct.Struct(f"!HH{len(mid)}sH{len(addrs)}sI5sB2sH").pack
    else:
        head = bytes(template[: l3 + 4])
        addrs = bytes(template[l3 + 6 : l4 + 4])  # next header ... extension headers, ports
        pack6 = struct.Struct(f"!H{len(addrs)}sI5sB2sH").pack
    out: list[bytes] = []
    for i in range(count):
        start = data + i * mss
        stop = min(start + mss, end)
        piece = frame[start:stop]
        tcp_len = thl + stop - start
        f = flags
        if stop < end:
            f &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            f &= ~_TCP_CWR
        sq = (seq + i * mss) & 0xFFFFFFFF
        n = int.from_bytes(piece, "big")
        if stop - start == mss and not mss & 1:
            n = (n >> half) + (n & mask)
        elif (stop - start) & 1:
            n <<= 8
        n += tcp_base + tcp_len + sq + f
        # like tcp_gso_segment (csum_fold), and unlike complete_csum, 0 stays 0 for TCP
        tcsum = 0xFFFF - (n % 0xFFFF or 0xFFFF)
        if v4:
            tot, ip_id = ihl + tcp_len, (ident + i) & 0xFFFF
            ipc = 0xFFFF - ((ip_base + tot + ip_id) % 0xFFFF or 0xFFFF)
            fields = pack(tot, ip_id, mid, ipc, addrs, sq, tcp_gap, f, window, tcsum)
        else:
            fields = pack6(ext + tcp_len, addrs, sq, tcp_gap, f, window, tcsum)
        out.append(b"".join((head, fields, tail, piece)))
    return out
