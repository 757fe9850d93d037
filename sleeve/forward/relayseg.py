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
kind 6 as unknown, so a source sends sets only to a destination that said it takes
them, in a relayed KIND_CAPS record with its own proof (sent when the source's relayed
frames reach it, at most every ``CAPS_EVERY`` s). That record crossed the relays of the
way back, so they forward relayed records of new kinds; a path whose relays do not is
never told, and keeps ordinary frames::

    KIND_CAPS payload (a relayed record: flags S, D, A)
    +--------+--------+--------+--------+
    |      capability bits (BE 32)      |   bit 0: takes relayed segment sets
    +--------+--------+--------+--------+
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final, TypeVar

from sleeve.forward import superframe
from sleeve.proto import datagram as dg
from sleeve.proto.origin import OriginAuth
from sleeve.proto.stats import Counters

KIND_CAPS: Final = 6
CAPS = struct.Struct("!I")
CAP_SETS: Final = 1  # we join relayed KIND_VNET_SEG records addressed to us
CAPS_EVERY: Final = 10.0  # s between our caps records to one peer
CAPS_TTL: Final = 35.0  # s a peer's caps are believed without a fresh record (> 3 x EVERY)
MAX_PEERS: Final = 256  # peers with caps or relayed segment sets kept at once; oldest first out
# Bytes a relayed record carries more than a direct one: two peer ids and the proof.
EXTRA: Final = 2 * dg.PEER_ID_LEN + dg.AUTH_MAC_LEN  # 40
_FLAGS: Final = dg.MAX_HOPS << dg.HOPS_SHIFT | dg.FLAG_SRC | dg.FLAG_DST | dg.FLAG_AUTH
_SEG_FLAGS_SET: Final = dg.FLAG_SRC | dg.FLAG_DST | dg.FLAG_AUTH
_BCAST_BIT: Final = dg.FLAG_BCAST
_V = TypeVar("_V")


def caps_payload(caps: int) -> bytes:
    return CAPS.pack(caps)


def parse_caps(payload: bytes | memoryview) -> int | None:
    """The capability bits, or None for a payload that is not 4 bytes."""
    return CAPS.unpack(payload)[0] if len(payload) == CAPS.size else None


def cut(raw: bytes, set_id: int, max_body: int, origin: OriginAuth, me: bytes,
        dst: bytes) -> list[bytes] | None:
    """Relayed records carrying super-frame ``raw`` (virtio header + frame) to ``dst``.

    None when it cannot go so (a piece would not fit ``max_body``, too many pieces, no
    key for ``dst`` yet): the caller cuts it into ordinary frames instead. Raises
    ``vnet.VnetError`` for a super-frame that does not parse.
    """
    recs = superframe.cut(raw, set_id, max_body - EXTRA)
    if recs is None or recs[0][2] != superframe.KIND_VNET_SEG:
        return None
    payloads = [memoryview(r)[dg.REC_LEN:] for r in recs]
    auths = origin.seal_pieces(dst, payloads)
    if auths is None:
        return None
    pack = dg.REC.pack
    kind = superframe.KIND_VNET_SEG
    ids = me + dst
    return [b"".join((pack(len(p), kind, _FLAGS), ids, a, p)) for p, a in zip(payloads, auths,
                                                                            strict=True)]


def is_relayed_segment(flags: int) -> bool:
    """A KIND_VNET_SEG record's flags as a relayed piece has them (S, D, A; no B)."""
    return flags & _SEG_FLAGS_SET == _SEG_FLAGS_SET and not flags & _BCAST_BIT


class PeerCaps:
    """What relayed peers told us they take, and when we last told them (bounded)."""

    __slots__ = ("_heard", "_told")

    def __init__(self) -> None:
        self._heard: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self._told: OrderedDict[bytes, float] = OrderedDict()

    def learn(self, peer: bytes, caps: int, now: float) -> None:
        """``peer`` proved (origin tag, fresh counter) that it takes ``caps``."""
        _put(self._heard, peer, (caps, now))

    def takes_sets(self, peer: bytes, now: float) -> bool:
        got = self._heard.get(peer)
        return got is not None and got[0] & CAP_SETS != 0 and now - got[1] < CAPS_TTL

    def due(self, peer: bytes, now: float) -> bool:
        """True (and noted) when our caps record to ``peer`` is due."""
        last = self._told.get(peer)
        if last is not None and now - last < CAPS_EVERY:
            return False
        _put(self._told, peer, now)
        return True

    def forget(self, peer: bytes) -> None:
        self._heard.pop(peer, None)
        self._told.pop(peer, None)


class RelayedSets:
    """Segment sets of relayed super-frames, one ``SegmentSets`` per proven source: set
    ids are the source's own, and sets from two sources never mix (bounded)."""

    __slots__ = ("_by_src", "drops")

    def __init__(self) -> None:
        self._by_src: OrderedDict[bytes, superframe.SegmentSets] = OrderedDict()
        self.drops: dict[str, int] = {}  # of sources dropped with their sets; the caller
        # moves these (and each SegmentSets' own) into its drop counters

    def for_source(self, src: bytes) -> superframe.SegmentSets:
        sets = self._by_src.get(src)
        if sets is None:
            if len(self._by_src) >= MAX_PEERS:
                _old, gone = self._by_src.popitem(last=False)
                self.drops["relayed_sets_evicted"] = (self.drops.get("relayed_sets_evicted", 0)
                                                      + len(gone))
                for k, v in gone.drops.items():
                    self.drops[k] = self.drops.get(k, 0) + v
            sets = self._by_src[src] = superframe.SegmentSets()
        return sets

    def items(self) -> list[tuple[bytes, superframe.SegmentSets]]:
        return list(self._by_src.items())

    def move_drops(self, sets: superframe.SegmentSets, drops: Counters) -> None:
        """Count ``sets``' drops and our own in ``drops`` (after each add or expiry)."""
        for d in (sets.drops, self.drops):
            if d:
                for k, v in d.items():
                    drops.inc(k, v)
                d.clear()

    def pending(self) -> int:
        """Sets in progress, over all sources."""
        return sum(len(s) for s in self._by_src.values())


def _put(d: OrderedDict[bytes, _V], key: bytes, value: _V) -> None:
    d[key] = value
    d.move_to_end(key)
    if len(d) > MAX_PEERS:
        d.popitem(last=False)
