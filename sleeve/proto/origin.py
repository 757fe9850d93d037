"""Who originated a relayed or broadcast record: proofs made and checked (sans-IO).

The source of a record that reached us through another peer is believed only when the
source itself proved it (``crypto.origin`` has the keys and the why): a tag under the
source-destination key for relayed unicast, the source's signature for broadcasts. Keys
come from the peers' *verified* topology records (``ident``: peer -> its Ed25519 key and
incarnation uid), so a relay cannot make up a key for a peer id either.

Order on receive, as everywhere: authenticate, then replay-check (a forged record with a
huge counter must not slide the window), then the caller may learn from it.

Bounded: one ``_Pair`` per peer we exchanged relayed records with (keys, one counter
window for its unicast records to us, one for its broadcasts), at most ``max_peers``
(the topology's own bound); the oldest is dropped beyond that. A pair lives on when its
peer leaves the topology, so that a partition that heals cannot replay the old records
into a fresh window; it is replaced when the peer's key or incarnation changes.

Sending uses one counter per process for all destinations (and one for broadcasts):
with keys bound to both incarnations, a (key, counter) pair is never reused, and a
receiver's window only sees its share of the counters, ascending with gaps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sleeve.crypto import origin as oc
from sleeve.crypto.keys import Signer
from sleeve.proto import datagram as dg
from sleeve.proto.replay import ReplayWindow

MAX_PEERS: Final = 10000  # = proto.topology.MAX_RECORDS
WINDOW: Final = 4096  # counters are shared by all destinations: a little more slack

Ident = Callable[[bytes], "tuple[bytes, int] | None"]


class _Pair:
    __slots__ = ("bwin", "key", "piece_rx", "piece_tx", "rx", "tx", "uid", "win")

    def __init__(self, key: bytes, uid: int, tx: bytes, rx: bytes) -> None:
        self.key = key  # the peer's Ed25519 public key
        self.uid = uid  # its incarnation
        self.tx = tx  # our records to it
        self.rx = rx  # its records to us
        self.win: ReplayWindow | None = None  # made on first use
        self.bwin: ReplayWindow | None = None
        self.piece_tx: oc.PieceMac | None = None  # made on first use too
        self.piece_rx: oc.PieceMac | None = None


class OriginAuth:
    """Makes and checks the ``auth`` field of relayed and broadcast records."""

    __slots__ = ("_bcast_counter", "_counter", "_ident", "_pairs", "_signer", "_uid",
                 "max_peers", "me")

    def __init__(self, signer: Signer, uid: int, ident: Ident,
                 max_peers: int = MAX_PEERS) -> None:
        self._signer = signer
        self.me = signer.peer_id
        self._uid = uid
        self._ident = ident
        self._pairs: dict[bytes, _Pair] = {}
        self._counter = 0
        self._bcast_counter = 0
        self.max_peers = max_peers

    def _pair(self, peer: bytes) -> _Pair | str:
        ident = self._ident(peer)
        if ident is None:
            return "origin_unknown_peer"
        key, uid = ident
        p = self._pairs.get(peer)
        if p is not None and p.key == key and p.uid == uid:
            return p
        try:
            tx = oc.relay_key(self._signer, self.me, self._uid, peer, uid, key)
            rx = oc.relay_key(self._signer, peer, uid, self.me, self._uid, key)
        except ValueError:
            return "origin_bad_key"
        p = _Pair(key, uid, tx, rx)
        self._pairs.pop(peer, None)
        if len(self._pairs) >= self.max_peers:
            del self._pairs[next(iter(self._pairs))]  # the least recently (re)keyed
        self._pairs[peer] = p
        return p

    def forget_keys(self) -> None:
        """Drop every pair (tests: what a router without memory of earlier ones sees)."""
        self._pairs.clear()

    # ------------------------------------------------------------------ sending
    def seal(self, dst: bytes, kind: int, payload: bytes | memoryview) -> bytes | None:
        """The 24-byte auth of our record to ``dst``, or None if we have no key for it."""
        p = self._pair(dst)
        if isinstance(p, str):
            return None
        self._counter += 1
        ctr = self._counter.to_bytes(8, "big")
        return ctr + oc.relay_tag(p.tx, ctr, kind, payload)

    def piece_sealer(self, dst: bytes, n: int) -> tuple[oc.PieceMac, int] | None:
        """(the piece MAC to ``dst``, the first of ``n`` counters reserved for ``n``
        relayed super-frame pieces, ``crypto.origin``), or None if we have no key for
        ``dst``. One call per super-frame: the caller tags its pieces in one loop."""
        p = self._pair(dst)
        if isinstance(p, str):
            return None
        mac = p.piece_tx = p.piece_tx or oc.PieceMac(p.tx)
        first = self._counter + 1
        self._counter += n
        return mac, first

    def sign(self, kind: int, payload: bytes | memoryview) -> bytes:
        """The 72-byte auth of our broadcast record."""
        self._bcast_counter += 1
        ctr = self._bcast_counter.to_bytes(8, "big")
        return ctr + oc.sign_bcast(self._signer, self._uid, ctr, kind, payload)

    # ------------------------------------------------------------------ receiving
    def note_direct_broadcast(self, src: bytes, rec: dg.Record) -> None:
        """A signed broadcast that came straight from ``src`` (its link vouches for it):
        enter its counter in ``src``'s broadcast window, so that a member cannot later
        replay it to us as relayed. Never drops: the window may still hold an earlier
        incarnation's counters until the topology tells us of the new one."""
        auth = rec.auth
        if auth is None or not rec.bcast:
            return
        p = self._pair(src)
        if isinstance(p, str):
            return
        win = p.bwin = p.bwin or ReplayWindow(WINDOW)
        win.accept(int.from_bytes(auth[:dg.COUNTER_LEN], "big"))

    def check(self, src: bytes, rec: dg.Record) -> str | None:
        """None if ``src`` made ``rec`` for us (unicast) or for all (broadcast), and it is
        fresh; else the drop reason. ``rec`` came through another peer than ``src``."""
        auth = rec.auth
        if auth is None:
            return "origin_unauthenticated"
        p = self._pair(src)
        if isinstance(p, str):
            return p
        ctr = auth[:dg.COUNTER_LEN]
        if rec.bcast:
            if not oc.verify_bcast(p.key, src, p.uid, ctr, rec.kind, rec.payload,
                                   auth[dg.COUNTER_LEN:]):
                return "origin_forged"
            win = p.bwin = p.bwin or ReplayWindow(WINDOW)
        else:
            if rec.dst != self.me:
                return "origin_not_for_us"
            return self._check_tag(p, ctr, rec.kind, rec.payload, auth[dg.COUNTER_LEN:])
        bad = win.accept(int.from_bytes(ctr, "big"))
        return None if bad is None else f"origin_{bad}"

    def check_piece(self, src: bytes, auth: bytes | memoryview,
                    payload: bytes | memoryview) -> str | None:
        """``check`` for a relayed super-frame piece addressed to us (the caller read the
        destination: us) from its fields: the piece MAC, then the unicast window."""
        if len(auth) != dg.AUTH_MAC_LEN:
            return "origin_unauthenticated"
        p = self._pair(src)
        if isinstance(p, str):
            return p
        mac = p.piece_rx = p.piece_rx or oc.PieceMac(p.rx)
        ctr = bytes(auth[:dg.COUNTER_LEN])
        if not mac.ok(ctr, payload, auth[dg.COUNTER_LEN:]):
            return "origin_forged"
        return self._fresh(p, ctr)

    def check_pieces(self, src: bytes, bodies: list[bytes], at: int,
                     ) -> tuple[list[memoryview], list[str]]:
        """``check_piece`` for a run of relayed pieces from ``src`` to us, in order, with
        ``src``'s pair looked up once: each body holds the 24-byte auth at ``at`` and the
        payload after it (the caller checked that they are longer). (The payloads proven
        and fresh, as views; the drop reasons.)"""
        p = self._pair(src)
        if isinstance(p, str):
            return [], [p] * len(bodies)
        ok_ = (p.piece_rx or self._piece_rx(p)).ok
        accept = (p.win or self._window(p)).accept
        at_tag = at + dg.COUNTER_LEN
        at_payload = at_tag + dg.AUTH_MAC_LEN - dg.COUNTER_LEN
        good: list[memoryview] = []
        bad: list[str] = []
        for body in bodies:
            mv = memoryview(body)
            ctr = body[at:at_tag]
            payload = mv[at_payload:]
            if not ok_(ctr, payload, mv[at_tag:at_payload]):
                bad.append("origin_forged")
                continue
            late = accept(int.from_bytes(ctr, "big"))  # only once proven (proto.replay)
            if late is None:
                good.append(payload)
            else:
                bad.append(f"origin_{late}")
        return good, bad

    @staticmethod
    def _piece_rx(p: _Pair) -> oc.PieceMac:
        p.piece_rx = mac = oc.PieceMac(p.rx)
        return mac

    @staticmethod
    def _window(p: _Pair) -> ReplayWindow:
        p.win = win = ReplayWindow(WINDOW)
        return win

    @staticmethod
    def _fresh(p: _Pair, ctr: bytes) -> str | None:
        win = p.win = p.win or ReplayWindow(WINDOW)
        bad = win.accept(int.from_bytes(ctr, "big"))
        return None if bad is None else f"origin_{bad}"

    @staticmethod
    def _check_tag(p: _Pair, ctr: bytes, kind: int, payload: bytes | memoryview,
                   tag: bytes | memoryview) -> str | None:
        if not oc.tag_ok(p.rx, ctr, kind, payload, tag):
            return "origin_forged"
        return OriginAuth._fresh(p, ctr)
