"""One read's relayed records, handled in runs (``Ingress.on_run``, issue 23).

Nearly every datagram of a relayed bulk flow carries one relayed record with its
source's proof (``forward.relayseg``)::

    relayed unicast record, alone in its body (flags S, D, A; hop limit in the top nibble)
    +--------+--------+--------+--------+------------+------------+-------------------+
    | length (BE 16)  |  kind  | flags  | src peer 8 | dst peer 8 | auth 24: counter  |
    +--------+--------+--------+--------+------------+------------+ 8 + tag 16        |
    | payload (length bytes): a frame, a KIND_VNET_SEG piece or a KIND_CAPS record    |
    +---------------------------------------------------------------------------------+

A relay passes a record for another peer on from these bytes (hop limit - 1, one copy),
with the next hop looked up once per destination and the counters added once per read.
A destination gathers the pieces of relayed super-frames addressed to it while they
come from one source over one link, then proves them together (``OriginAuth.check_pieces``:
the piece MAC, then the source's replay window, the source's keys looked up once) and
joins the proven ones to that source's sets. Nothing of a piece is kept or written before
its proof; a run ends at the first datagram of another kind, source or link, so frames
keep their order. Per datagram that is a few byte compares and one list append instead
of a chain of calls: the relayed path's per-datagram Python is what made both its ends
cost about twice a direct link's per byte (``bench/results/issue23/relay4-notes.md``).

Within one read nothing else runs, so what a run looked up holds for the whole read.
Records this does not take (other kinds, a piece from the sending hop itself or from
us) go to ``Ingress.on_body``, which counts what needs counting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sleeve.forward import relayseg
from sleeve.forward.egress import Egress
from sleeve.forward.superframe import KIND_VNET_SEG
from sleeve.links.link import Link
from sleeve.proto import datagram as dg
from sleeve.proto.origin import OriginAuth
from sleeve.proto.stats import Counters

# Records a relay passes on unopened when their destination is another peer.
RELAYABLE: Final = frozenset((dg.KIND_FRAME, KIND_VNET_SEG, relayseg.KIND_CAPS))
HOP: Final = 1 << dg.HOPS_SHIFT
# A relayed unicast record with its source's proof: flags S, D, A and not B (low nibble).
_SDA: Final = dg.FLAG_SRC | dg.FLAG_DST | dg.FLAG_AUTH
_IDS: Final = dg.REC_LEN + 2 * dg.PEER_ID_LEN  # where the auth begins: 20
HEAD: Final = _IDS + dg.AUTH_MAC_LEN  # 44

JoinProven = Callable[[Link, bytes, list[memoryview], float], None]


def one_relayed(body: bytes) -> bool:
    """``body`` is one relayed unicast record with its proof and a payload, nothing more."""
    n = len(body)
    return n > HEAD and body[3] & 0x0F == _SDA and (body[0] << 8 | body[1]) + HEAD == n


class RelayedRun:
    """What one read's relayed records (each alone in a body, ``one_relayed``) come to;
    ``begin`` a read, ``take`` each, ``join`` before anything else of the read, ``end``
    after the read. One is made per ``Ingress`` and begun afresh for each read."""

    __slots__ = ("_drops", "_dst", "_egress", "_join_proven", "_me", "_origin", "_relayed",
                 "_segments", "_stats", "_via", "link", "pieces", "src")

    def __init__(self, me: bytes, egress: Egress, origin: OriginAuth, drops: Counters,
                 stats: Counters, join_proven: JoinProven) -> None:
        self._me = me
        self._egress = egress
        self._origin = origin
        self._drops = drops
        self._stats = stats
        self._join_proven = join_proven
        self._dst = b""
        self._via: Link | None = None
        self._relayed = self._segments = 0
        self.pieces: list[bytes] = []  # gathered, not yet proven: from ``src`` by ``link``
        self.src = b""
        self.link: Link | None = None

    def begin(self) -> None:
        """A new read: the next hops looked up in the last one may have changed since."""
        self._dst, self._via = b"", None
        self._relayed = self._segments = 0
        self.pieces = []
        self.link = None

    def take(self, link: Link, body: bytes, now: float) -> bool:
        """Pass ``body`` on, or gather it as a piece for us; False to leave it to
        ``Ingress.on_body`` (what is neither, counted there)."""
        kind = body[2]
        dst = body[12:20]  # the source's id comes first, then the destination's
        if dst != self._me:
            if kind not in RELAYABLE:
                return False
            flags = body[3]
            if flags < HOP:
                self._drops.inc("hop_limit")
                return True
            if dst != self._dst:
                self._dst, self._via = dst, self._egress.towards(dst)
            via = self._via
            if via is None:
                self._drops.inc("no_route")
                return True
            self._egress.queue(via, bytes((body[0], body[1], kind, flags - HOP))
                               + memoryview(body)[dg.REC_LEN:])
            if kind != relayseg.KIND_CAPS:
                self._relayed += 1  # a super-frame's piece counts as one frame
                if kind == KIND_VNET_SEG:
                    self._segments += 1
            return True
        src = body[4:12]
        if kind != KIND_VNET_SEG or src == link.peer or src == self._me:
            return False
        if self.pieces and (src != self.src or link is not self.link):
            self.join(now)
        self.pieces.append(body)
        self.src, self.link = src, link
        return True

    def join(self, now: float) -> None:
        """Prove the gathered pieces; join those that pass, count the others."""
        pieces, self.pieces = self.pieces, []
        link = self.link
        if not pieces or link is None:
            return
        good, bad = self._origin.check_pieces(self.src, pieces, _IDS)
        for reason in bad:
            self._drops.inc(reason)
        if good:
            self._join_proven(link, self.src, good, now)

    def end(self, now: float) -> None:
        """The read is over: join what is gathered, count what was passed on."""
        if self.pieces:
            self.join(now)
        if self._relayed:
            self._stats.inc("relayed_frames", self._relayed)
            if self._segments:
                self._stats.inc("relayed_segments", self._segments)
            self._relayed = self._segments = 0
