"""TCP MSS clamping of SYN and SYN-ACK frames (sans-IO), like tinc's ``ClampMSS``.

Why: a host that drops ICMP (hardened hosts, many containers) never hears the
router's "fragmentation needed" / "packet too big", so TCP across a path smaller than
the overlay MTU stalls. Lowering the MSS option in the handshake makes both ends send
segments that fit, with no ICMP needed. Only an MSS option already present is lowered
(never raised, never added: without one a host assumes 536 / 1220, which fit).

What is parsed: an untagged Ethernet II frame carrying IPv4 (any IHL, first fragment)
or IPv6 (TCP as the first next header; extension headers and VLAN tags are left
alone), TCP with SYN set::

    Ethernet      IPv4 (IHL x 4 bytes)        TCP
    +----------+  +--+--+----+----+---+--+  +----+----+-----+-----+-----+----+---+---+--------
    | dst src  |  |VL|  | len| id |frg|..|  |sprt|dprt| seq | ack |off  |flag|win|sum| options
    | 6+6 type |  |45|  |    |    |   |p6|  |    |    |     |     |<<4  |SYN |   |   | kind 2,
    +----------+  +--+--+----+----+---+--+  +----+----+-----+-----+-----+----+---+---+ len 4,
      12: 0800    14    proto at 14+9         flags at tcp+13         mss BE16
      12: 86DD    IPv6: next header at 14+6, TCP at 14+40

The checksum is fixed incrementally (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), so
the cost does not depend on the segment size. A frame whose checksum is left to the
receiver (virtio ``NEEDS_CSUM``: the field holds only the pseudo-header sum) must not
be adjusted: the completion sums the new option bytes itself (``fix_csum=False``).

The hot path reads a couple of bytes first (``maybe_syn``, inlined by the callers) and
calls ``clamp`` only for frames that may be SYNs.
"""

from __future__ import annotations

from typing import Final

ETH_LEN: Final = 14
IP4_TCP_HEADERS: Final = 40  # MSS = MTU - 20 (IPv4) - 20 (TCP), options excluded (RFC 879)
IP6_TCP_HEADERS: Final = 60
MIN_MSS: Final = 536  # never clamp below what IPv4 hosts must accept anyway (RFC 1122)
MIN_MSS6: Final = 1220  # IPv6: 1280 minimum MTU - 60

_SYN: Final = 0x02
_OPT_MSS: Final = 2
_OPT_END: Final = 0
_OPT_NOP: Final = 1


def maybe_syn(f: bytes | bytearray | memoryview) -> bool:
    """A cheap pre-filter: False for nearly every frame that is not a TCP SYN.

    IPv4 without options and IPv6 read the TCP flags byte directly; IPv4 with options
    passes to ``clamp``, which checks properly. The callers inline this expression.
    """
    n = len(f)
    if n < 58:  # Ethernet + IPv4 + TCP + an MSS option
        return False
    b = f[ETH_LEN]
    if b == 0x45:
        return bool(f[47] & _SYN) and f[23] == 6
    if b >> 4 == 6:
        return n >= 78 and f[20] == 6 and bool(f[67] & _SYN)
    return 0x45 < b < 0x50


def clamp(f: bytes | bytearray | memoryview, mtu: int, fix_csum: bool = True,
          ) -> bytes | None:
    """``f`` with its SYN's MSS option lowered to fit ``mtu``-byte IP packets, or None.

    None when nothing changes: not an untagged IPv4/IPv6 TCP SYN, no MSS option, the
    option already small enough, or a malformed header (never an exception: the frame
    is passed on untouched and the receiver judges it). ``mtu`` is the IP packet size
    the path carries: ``proto.pmtu.overlay_mtu`` of the link's datagram size (sleeve's
    header, tag and record framing, a relayed record's peer ids and the Ethernet header
    taken off). The result never goes below the protocol minimum.
    """
    n = len(f)
    if n < 58 or f[12] not in (0x08, 0x86):
        return None
    et = f[12] << 8 | f[13]
    if et == 0x0800:
        ihl = (f[14] & 0x0F) * 4
        if f[14] >> 4 != 4 or ihl < 20 or f[23] != 6 or (f[20] & 0x1F) | f[21]:
            return None  # not IPv4 TCP, or not the first fragment
        tcp = ETH_LEN + ihl
        want = max(MIN_MSS, mtu - IP4_TCP_HEADERS)
    elif et == 0x86DD:
        if f[14] >> 4 != 6 or f[20] != 6:
            return None
        tcp = ETH_LEN + 40
        want = max(MIN_MSS6, mtu - IP6_TCP_HEADERS)
    else:
        return None
    if n < tcp + 20 or not f[tcp + 13] & _SYN:
        return None
    end = tcp + (f[tcp + 12] >> 4) * 4
    if end > n or end < tcp + 20:
        return None
    off = tcp + 20
    while off < end:
        kind = f[off]
        if kind == _OPT_END:
            return None
        if kind == _OPT_NOP:
            off += 1
            continue
        if off + 1 >= end:
            return None
        size = f[off + 1]
        if size < 2 or off + size > end:
            return None
        if kind == _OPT_MSS:
            if size != 4:
                return None
            old = f[off + 2] << 8 | f[off + 3]
            if old <= want:
                return None
            out = bytearray(f)
            out[off + 2] = want >> 8
            out[off + 3] = want & 0xFF
            if fix_csum:
                _adjust_checksum(out, tcp + 16, old, want, (off - tcp) & 1)
            return bytes(out)
        off += size
    return None


def _adjust_checksum(buf: bytearray, at: int, old: int, new: int, odd: int) -> None:
    """RFC 1624 incremental update of the 16-bit checksum at ``at`` for one changed word.

    ``odd``: the changed 16-bit value starts at an odd offset from the TCP header, so
    in the checksum's word alignment its bytes are swapped.
    """
    if odd:
        old = (old >> 8 | old << 8) & 0xFFFF
        new = (new >> 8 | new << 8) & 0xFFFF
    hc = buf[at] << 8 | buf[at + 1]
    s = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    hc = ~s & 0xFFFF
    buf[at] = hc >> 8
    buf[at + 1] = hc & 0xFF
