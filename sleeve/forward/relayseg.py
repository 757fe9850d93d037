"""Offloaded super-frames on relayed paths: segment sets end to end, one proof per piece.

A direct link carries a TCP super-frame as a set of KIND_VNET_SEG records
(``forward.superframe``). Relayed, the same pieces used to be cut into ordinary frames
in software at the source, and every ~1400-byte frame crossed all three routers as its
own record, with its own TAP write at the destination. Here the source sends the set
itself, each piece as a relayed record with the source's end-to-end proof
(``proto.origin``: a tag under the source-destination key over the payload, here
ChaCha20-Poly1305's rather than keyed BLAKE2b's, ``crypto.origin``; its own counter in
the destination's replay window), and the destination joins the pieces into the
super-frame and writes it once::

    relayed KIND_VNET_SEG record (flags S, D, A; hop limit in the top four bits)
    +--------+--------+--------+--------+------------+------------+-------------------+
    | length (BE 16)  | kind=5 | flags  | src peer 8 | dst peer 8 | auth 24: counter  |
    +--------+--------+--------+--------+------------+------------+ 8 + tag 16        |
    | the KIND_VNET_SEG payload of ``forward.superframe`` (set id, index, count,      |
    | virtio header, the super-frame's headers, one gso_size piece of TCP payload)    |
    +---------------------------------------------------------------------------------+

Why one proof per piece, not one over the whole super-frame: every piece is checked
(tag, then replay window) before it joins a set, so nothing unproven is kept or
delivered, and a lost datagram still costs one TCP segment (the destination writes the
pieces that arrived, ``superframe.SegmentSets``) instead of the whole super-frame. The
tag covers the set id, index, count and headers, so a relay cannot splice pieces of
another set or another source into a set: sets are kept per proven source, and a set's
pieces must carry the same headers. The hashing costs the same bytes either way.

Relays pass the record on as it is (only the hop limit goes down), without parsing the
payload: one record in, one record out, and a run of them goes out in one GSO send.

Who takes them: an old router drops kind 5 with flags (``bad_offload_record``) and
kind 6 as unknown, so a source sends sets only to a destination whose KIND_CAPS record
(relayed, with its own proof) echoes a caps record of the source's that arrived through
the next hop the source uses now. Routes are chosen at each end on its own, so the way
back may cross other relays than the way there: the destination's own record proves only
the way back, the echo proves the way there (a relay that drops new kinds drops the
source's record, and nothing is echoed). A path whose relays drop new kinds is never
proven, and keeps ordinary frames; a new next hop must be proven again. Each end sends
its record when its relayed traffic flows (at most every ``CAPS_EVERY`` s), and answers
a record that asks (flag ASK: no proof of its way yet) at once (at most every
``ASK_GAP`` s)::

    KIND_CAPS payload (a relayed record: flags S, D, A)
    +--------+--------+--------+--------+
    |      capability bits (BE 32)      |   bit 0 SETS: takes relayed segment sets
    +--------+--------+--------+--------+   bit 1 ASK: answer now (no proof of my way)
    |   this record's id (BE 32, != 0)  |
    +--------+--------+--------+--------+
    |  echo: the id of the last record  |   0: none heard from you within CAPS_TTL
    |  I heard from you (BE 32)         |
    +--------+--------+--------+--------+
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, TypeVar

from sleeve.forward import superframe
from sleeve.proto import datagram as dg
from sleeve.proto import vnet
from sleeve.proto.icmp import too_big_reply
from sleeve.proto.inet import ETHERTYPE_IPV4, ETHERTYPE_IPV6, FrameError, l2_header
from sleeve.proto.origin import OriginAuth
from sleeve.proto.pmtu import overlay_mtu
from sleeve.proto.stats import Counters

KIND_CAPS: Final = 6
CAPS = struct.Struct("!III")  # bits, our record's id, the echo of theirs
CAP_SETS: Final = 1  # we join relayed KIND_VNET_SEG records addressed to us
CAP_ASK: Final = 2  # we have no proof of our way to you: answer now
CAPS_EVERY: Final = 10.0  # s between our caps records to one peer
ASK_GAP: Final = 0.05  # s between our records to one peer at least, even when asked:
# short, since an ask that comes while we are quiet waits for our next relayed frame
TOLD_KEEP: Final = 4  # our record ids (and the hop each went by) kept per peer for echoes
CAPS_TTL: Final = 35.0  # s a peer's caps are believed without a fresh record (> 3 x EVERY)
MAX_PEERS: Final = 256  # peers with caps or relayed segment sets kept at once; oldest first out
# Bytes a relayed record carries more than a direct one: two peer ids and the proof.
EXTRA: Final = 2 * dg.PEER_ID_LEN + dg.AUTH_MAC_LEN  # 40
_FLAGS: Final = dg.MAX_HOPS << dg.HOPS_SHIFT | dg.FLAG_SRC | dg.FLAG_DST | dg.FLAG_AUTH
_V = TypeVar("_V")
_IP_LEN = struct.Struct("!H")
FRAG_LEN: Final = superframe.SEG_HEAD - vnet.HDR_LEN  # set id, index, count


def relayed_mtu(datagram: int) -> int:
    """``overlay_mtu`` for a relayed frame: two peer ids, the 24-byte origin tag, and
    room for a super-frame piece's 16-byte head, so that TCP clamped to this MSS (or
    lowered to it by our ICMP too-big) can go through a relay as whole segment sets."""
    return overlay_mtu(datagram, 2) - dg.AUTH_MAC_LEN - superframe.SEG_HEAD


def parse_caps(payload: bytes | memoryview) -> tuple[int, int, int] | None:
    """(bits, record id, echo), or None for a payload that is not 12 bytes."""
    if len(payload) != CAPS.size:
        return None
    bits, rid, echo = CAPS.unpack(payload)
    return bits, rid, echo


def piece_too_big(payload: bytes | memoryview, mtu: int) -> bytes | None:
    """The ICMP too-big frame for the TCP segment a relayed piece's payload carries (its
    headers with the IP length set for this one segment, checksums completed by
    ``vnet.to_frames``), telling its sender to use at most ``mtu``; None when the piece
    does not parse or no ICMP fits (``icmp.too_big_reply``)."""
    if len(payload) < superframe.SEG_HEAD + 14:
        return None
    f = bytearray(payload[superframe.SEG_HEAD:])
    try:
        l2, ethertype = l2_header(bytes(f[:64]))  # Ethernet and VLAN tags
        if ethertype == ETHERTYPE_IPV4 and len(f) >= l2 + 20:
            _IP_LEN.pack_into(f, l2 + 2, len(f) - l2)
        elif ethertype == ETHERTYPE_IPV6 and len(f) >= l2 + 40:
            _IP_LEN.pack_into(f, l2 + 4, len(f) - l2 - 40)
        frames = vnet.to_frames(payload[FRAG_LEN:superframe.SEG_HEAD], bytes(f))
    except (vnet.VnetError, FrameError, struct.error):
        return None
    return too_big_reply(frames[0], mtu) if len(frames) == 1 else None


def cut(raw: bytes, set_id: int, max_body: int, origin: OriginAuth, me: bytes,
        dst: bytes) -> list[bytes] | None:
    """Relayed records carrying super-frame ``raw`` (virtio header + frame) to ``dst``.

    None when it cannot go so (not a super-frame, a piece would not fit ``max_body``, too
    many pieces, no key for ``dst`` yet): the caller cuts it into ordinary frames
    instead. Raises ``vnet.VnetError`` for a super-frame that does not parse. One loop
    builds each piece's payload, tags it and frames it (two copies of each piece): per
    piece, Python costs more than the tag's 1400 bytes of Poly1305.
    """
    if not raw[1]:
        return None
    got = superframe.plan(raw, max_body - EXTRA)
    if got is None:
        return None
    prefix, base, mss, count = got
    sealer = origin.piece_sealer(dst, count)
    if sealer is None:
        return None
    mac, ctr = sealer
    tag = mac.tag
    pack_rec = dg.REC.pack
    pack_head = superframe.FRAG_HEAD.pack
    kind = superframe.KIND_VNET_SEG
    ids = me + dst
    join = b"".join
    mv = memoryview(raw)
    out = []
    for i in range(count):
        payload = pack_head(set_id, i, count) + prefix + mv[base + i * mss:base + (i + 1) * mss]
        c = (ctr + i).to_bytes(8, "big")
        out.append(join((pack_rec(len(payload), kind, _FLAGS), ids, c, tag(c, payload),
                         payload)))
    return out


class PeerCaps:
    """What relayed peers proved they take, and our caps records to them (bounded).

    ``_heard``: peer -> (bits, when, the id of its record, the hop our echoed record
    went by, or None); ``_told``: peer -> (when, hop, {our record id: the hop it went by},
    the last ``TOLD_KEEP``)."""

    __slots__ = ("_heard", "_last_id", "_told")

    def __init__(self) -> None:
        self._heard: OrderedDict[bytes, tuple[int, float, int, bytes | None]] = OrderedDict()
        self._told: OrderedDict[bytes, tuple[float, bytes, dict[int, bytes]]] = OrderedDict()
        self._last_id = 0

    def learn(self, peer: bytes, bits: int, rid: int, echo: int, now: float) -> None:
        """``peer`` proved (origin tag, fresh counter) its record ``rid`` with ``bits``,
        echoing our record ``echo``: the way through that record's hop is proven."""
        told = self._told.get(peer)
        hop = told[2].get(echo) if told is not None and echo else None
        _put(self._heard, peer, (bits, now, rid, hop))

    def takes_sets(self, peer: bytes, now: float, hop: bytes) -> bool:
        """``peer`` takes sets, and echoed our record that went through ``hop``."""
        got = self._heard.get(peer)
        return (got is not None and got[0] & CAP_SETS != 0 and now - got[1] < CAPS_TTL
                and got[3] == hop)

    def quiet(self, peer: bytes, now: float) -> bool:
        """We told ``peer`` within ``ASK_GAP``: nothing to do (the cheap check first)."""
        told = self._told.get(peer)
        return told is not None and now - told[0] < ASK_GAP

    def due(self, peer: bytes, now: float, hop: bytes) -> bool:
        """Our record to ``peer`` through ``hop`` is due: ``CAPS_EVERY`` passed, or
        ``ASK_GAP`` and our next hop changed or ``peer`` asked since our last record (an
        ask that came while we were quiet is answered with the next chance)."""
        told = self._told.get(peer)
        if told is None:
            return True
        gap = now - told[0]
        if gap >= CAPS_EVERY:
            return True
        if gap < ASK_GAP:
            return False
        got = self._heard.get(peer)
        return told[1] != hop or (got is not None and got[0] & CAP_ASK != 0
                                  and got[1] >= told[0])

    def record(self, peer: bytes, hop: bytes, now: float) -> tuple[bytes, int]:
        """(our next record's payload for ``peer`` through ``hop``, its id); ``told``
        notes it once it went out."""
        got = self._heard.get(peer)
        echo = got[2] if got is not None and now - got[1] < CAPS_TTL else 0
        bits = CAP_SETS if self.takes_sets(peer, now, hop) else CAP_SETS | CAP_ASK
        rid = self._last_id % 0xFFFFFFFF + 1  # never 0: 0 echoes nothing
        return CAPS.pack(bits, rid, echo), rid

    def told(self, peer: bytes, rid: int, hop: bytes, now: float) -> None:
        self._last_id = rid
        old = self._told.get(peer)
        ids = {} if old is None else old[2]
        ids[rid] = hop
        while len(ids) > TOLD_KEEP:
            del ids[next(iter(ids))]
        _put(self._told, peer, (now, hop, ids))

    def forget(self, peers: Iterable[bytes]) -> None:
        """``peers`` left the mesh or restarted (new keys, new ids): prove them again."""
        for peer in peers:
            self._heard.pop(peer, None)
            self._told.pop(peer, None)


class RelayedSets:
    """Segment sets of relayed super-frames, one ``SegmentSets`` per proven source: set
    ids are the source's own, and sets from two sources never mix (bounded; the least
    recently used source goes first, with what arrived of its sets written out)."""

    __slots__ = ("_by_src", "drops", "evicted")

    def __init__(self) -> None:
        self._by_src: OrderedDict[bytes, superframe.SegmentSets] = OrderedDict()
        self.drops: dict[str, int] = {}  # of sources dropped with their sets; the caller
        # moves these (and each SegmentSets' own) into its drop counters
        self.evicted: list[tuple[bytes, superframe.Write]] = []  # to write: (src, write)

    def for_source(self, src: bytes, now: float) -> superframe.SegmentSets:
        sets = self._by_src.get(src)
        if sets is not None:
            self._by_src.move_to_end(src)
            return sets
        if len(self._by_src) >= MAX_PEERS:
            old, gone = self._by_src.popitem(last=False)
            n = len(gone)
            if n:
                self.drops["relayed_sets_evicted"] = self.drops.get("relayed_sets_evicted",
                                                                    0) + n
            self.evicted += [(old, w) for w in gone.expire(now, 0.0)]
            for k, v in gone.drops.items():
                self.drops[k] = self.drops.get(k, 0) + v
        sets = self._by_src[src] = superframe.SegmentSets()
        return sets

    def expire(self, now: float, drops: Counters,
               ) -> tuple[list[tuple[bytes, superframe.Write]], bool]:
        """(what to write: sets left incomplete, and evicted sources' sets; True while
        some are still pending), drops counted in ``drops``. A source with no set under
        way is let go (a straggler of its last set then waits in a set of its own)."""
        out = self.take_evicted()
        pending = False
        for src, sets in list(self._by_src.items()):
            if sets:
                out += [(src, w) for w in sets.expire(now)]
            self.move_drops(sets, drops)
            if sets:
                pending = True
            else:
                del self._by_src[src]
        return out, pending

    def take_evicted(self) -> list[tuple[bytes, superframe.Write]]:
        """What arrived of evicted sources' sets, to write (once)."""
        out, self.evicted = self.evicted, []
        return out

    def items(self) -> list[tuple[bytes, superframe.SegmentSets]]:
        return list(self._by_src.items())

    def move_drops(self, sets: superframe.SegmentSets, drops: Counters) -> None:
        """Count ``sets``' drops and our own in ``drops`` (after each add or expiry)."""
        for d in (sets.drops, self.drops):
            if d:
                for k, v in d.items():
                    drops.inc(k, v)
                d.clear()


def _put(d: OrderedDict[bytes, _V], key: bytes, value: _V) -> None:
    d[key] = value
    d.move_to_end(key)
    if len(d) > MAX_PEERS:
        d.popitem(last=False)
