"""Mesh topology: signed per-peer records, their wire encoding and the gossip merge (sans-IO).

Every peer owns exactly one record: who it is and which peers it has connections to.
Only the peer itself can originate its record: records are signed with the owner's
Ed25519 key (``crypto.keys.Signer``) and the peer id is the hash of that key, so a peer
holding the network password can still only speak for itself -- it cannot invent
connections for another peer, nor replace another peer's record (a relayed record is
carried unchanged, signature included). Every peer keeps the best record it has seen for
every other peer. Gossip carries records, and a peer forwards only those that improved
its own view, so a change costs O(1) records per link instead of the full O(N) state
(Weave's mesh re-sent connection lists wholesale).

Wire encoding (msgpack, arrays not maps: no field names on the wire, fixed arity)::

    message := [ FORMAT (=2), [ record, ... ] ]                 at most 10000 records
    record  := [ peer    bin  8 bytes      the owner's peer id = crypto.keys.peer_id_of(key)
               , nick    str  <= 64 chars
               , uid     uint 1 .. 2^64-1  incarnation: random per process start
               , version uint 0 .. 2^62-1  bumped by the owner on every change
               , conns   [ conn, ... ]     at most 1024, strictly ascending by peer id
               , key     bin  32 bytes     the owner's Ed25519 public key
               , sig     bin  64 bytes     Ed25519 signature by ``key`` over signed_bytes()
               ]
    conn    := [ peer bin 8, addr str <= 262 chars, outbound bool, established bool ]

    signed_bytes := b"sleeve-peer-record-v2" | msgpack([peer, nick, uid, version, conns, key])

Conns are strictly ascending by peer (one connection per pair, none to itself), so a
record has exactly one valid form: the signature does not depend on how a relay
re-encoded the message (``signed_bytes`` re-packs the decoded fields canonically).
Anything else (wrong types or arity, bools where ints belong, maps, ext types, oversized
strings, keys or signatures of the wrong length) raises ``TopologyDecodeError``.

Versions stop at 2^62-1, far below what a uint64 holds: the owner counts up by one per
change, so an honest record never gets near, and whatever version a record about us
carries, we can outbid it (a uint64 maximum could not be outbid, see fuzz/README.md).

Verification (``verify_record``: id == hash(key), signature valid) costs ~75 us, so it
runs only for records that would change our view, after the cheap version comparison:
the per-peer winner of a message, when it beats what we hold. Records we already hold or
that lose are never verified (they change nothing and are not forwarded). If any record
that would change our view fails, ``merge`` raises ``TopologyAuthError`` before changing
anything: the whole message is refused (honest peers only relay verified records).

Merge rules (Weave mesh, with the holes filled):
- for another peer: a higher ``version`` wins; at equal version the higher ``uid`` wins
  (the owner restarted); at equal (version, uid) with different content, which only a
  buggy owner produces, the larger canonical encoding wins so that all peers still
  converge on one record whatever the order they saw them in;
- about ourselves: a validly signed record that is not our current one and not older
  than it (an earlier incarnation: same key, since the key derives from the static key)
  makes us bump our version past it and gossip our own record, which then overwrites
  the other one everywhere. Stale copies are ignored; replays of old records lose.
- records naming peers we have no record for are fine: those peers are reachable but
  unknown, and nothing routes through them until their own record arrives.

The merge is a per-peer maximum under a total order (our own version is
``max(v, min(seen + 1, MAX_VERSION))``), hence commutative and idempotent: any order, any
repetition of the same records gives the same state. (The one exception needs a record
signed by our own key that carries our uid and exactly our future content.)

Garbage collection removes peers that cannot be reached from us by following the
connection lists (every listed connection, established or not), once they have been
unreachable for ``gc_delay`` seconds: the delay lets the record of a new peer and the
records listing it arrive in separate messages without the new peer being dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

import msgpack

from sleeve.crypto.keys import SIGN_KEY_LEN, SIGNATURE_LEN, Signer, peer_id_of, verify

FORMAT: Final = 2
PEER_ID_LEN: Final = 8  # = sleeve.crypto.keys.PEER_ID_LEN
MAX_RECORDS: Final = 10000
MAX_CONNS: Final = 1024
MAX_NICK: Final = 64  # same bound as control.Hello
MAX_ADDR: Final = 262  # "[" + 253-char host + "]:65535"
KEY_LEN: Final = SIGN_KEY_LEN  # 32
SIG_LEN: Final = SIGNATURE_LEN  # 64
MAX_U64: Final = (1 << 64) - 1
MAX_VERSION: Final = (1 << 62) - 1  # leaves every version on the wire room to be outbid
GC_DELAY: Final = 1.0  # as mesh's gcInterval: GC after updates have had time to arrive
_SIGNED_LABEL: Final = b"sleeve-peer-record-v2"


class TopologyDecodeError(ValueError):
    """A topology message was malformed; drop the message (and count it)."""


class TopologyAuthError(ValueError):
    """A record that would have changed our view is not signed by the peer it names.

    Raised by ``Topology.merge`` before it changes anything: drop the whole message.
    """

    def __init__(self, peer: bytes) -> None:
        super().__init__(f"record for peer {peer.hex()} has no valid signature by its owner")
        self.peer = peer


@dataclass(frozen=True, slots=True)
class ConnRecord:
    """One connection as its owner sees it."""

    peer: bytes  # the remote peer id
    addr: str  # "host:port" we dialled (outbound) or were dialled from (inbound)
    outbound: bool
    established: bool  # handshake done and data plane up; only these carry traffic


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's self-description; only that peer creates new versions of it."""

    peer: bytes
    nickname: str
    uid: int
    version: int
    conns: tuple[ConnRecord, ...]  # strictly ascending by peer id
    key: bytes = b""  # the owner's Ed25519 public key (empty: not signed yet)
    sig: bytes = b""  # Ed25519 signature by ``key`` over signed_bytes()

    def to_wire(self) -> list[Any]:
        return [self.peer, self.nickname, self.uid, self.version,
                [[c.peer, c.addr, c.outbound, c.established] for c in self.conns],
                self.key, self.sig]

    def signed_bytes(self) -> bytes:
        """What ``sig`` covers: a label and every field but ``sig``, canonical."""
        return _SIGNED_LABEL + _pack(self.to_wire()[:6])

    def canonical(self) -> bytes:
        """The record's one encoding; orders records that tie on (version, uid)."""
        return _pack(self.to_wire())


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def sign_record(rec: PeerRecord, signer: Signer) -> PeerRecord:
    """``rec`` with the signer's key and signature (the signer must own the record)."""
    if rec.peer != signer.peer_id:
        raise ValueError("a record can only be signed by the key its peer id names")
    rec = replace(rec, key=signer.public, sig=b"")
    return replace(rec, sig=signer.sign(rec.signed_bytes()))


def verify_record(rec: PeerRecord) -> bool:
    """Whether the record's key is the one its peer id names and its signature is valid."""
    return (len(rec.key) == KEY_LEN and peer_id_of(rec.key) == rec.peer
            and verify(rec.key, rec.signed_bytes(), rec.sig))


def encode_records(records: Iterable[PeerRecord], fmt: int = FORMAT) -> bytes:
    """A records message; ``fmt`` 5 marks an answer to a want (``proto.topodigest``)."""
    recs = []
    for r in records:
        if len(r.key) != KEY_LEN or len(r.sig) != SIG_LEN:
            raise ValueError(f"record of peer {r.peer.hex()} is not signed")
        recs.append(r.to_wire())
    if len(recs) > MAX_RECORDS:
        # The adapter splits bigger states; sending one the receiver rejects helps nobody.
        raise ValueError(f"{len(recs)} records exceed the limit of {MAX_RECORDS} per message")
    return _pack([fmt, recs])


def decode_records(data: bytes, fmt: int = FORMAT) -> list[PeerRecord]:
    """Decode and validate a topology records message of kind ``fmt`` (2 pushed, 5 an
    answer to a want). Raises only TopologyDecodeError."""
    try:
        # No maps anywhere; arrays and strings bounded up front so a small message cannot
        # make the unpacker pre-allocate a huge list (it also bounds lengths by input size).
        m = msgpack.unpackb(data, raw=False, use_list=True, max_map_len=0,
                            max_array_len=MAX_RECORDS, max_str_len=4 * MAX_ADDR,
                            max_bin_len=max(SIG_LEN, KEY_LEN, PEER_ID_LEN), max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise TopologyDecodeError(f"undecodable topology message ({type(e).__name__})") \
            from None
    if not (isinstance(m, list) and len(m) == 2 and type(m[0]) is int):
        raise TopologyDecodeError("topology message is not [format, records]")
    if m[0] != fmt:
        raise TopologyDecodeError(f"topology format {m[0]} is not {fmt}")
    recs = m[1]
    if not isinstance(recs, list):
        raise TopologyDecodeError("topology records are not a list")
    if len(recs) > MAX_RECORDS:
        raise TopologyDecodeError(f"{len(recs)} records exceed {MAX_RECORDS}")
    return [_record_from_wire(r) for r in recs]


def _is_id(x: object) -> bool:
    return type(x) is bytes and len(x) == PEER_ID_LEN


def _is_u64(x: object) -> bool:
    # type() not isinstance(): msgpack booleans are Python bools, which are ints.
    return type(x) is int and 0 <= x <= MAX_U64


def _record_from_wire(r: object) -> PeerRecord:
    if not (isinstance(r, list) and len(r) == 7):
        raise TopologyDecodeError("peer record is not a 7-element array")
    peer, nick, uid, version, conns, key, sig = r
    if not _is_id(peer):
        raise TopologyDecodeError("peer id is not 8 bytes")
    if not (type(nick) is str and len(nick) <= MAX_NICK):
        raise TopologyDecodeError("nickname is not a string of at most 64 characters")
    if not (_is_u64(uid) and uid != 0):
        raise TopologyDecodeError("uid is not a non-zero 64-bit unsigned integer")
    if not (type(version) is int and 0 <= version <= MAX_VERSION):
        raise TopologyDecodeError("version is not an unsigned integer below 2^62")
    if not (type(key) is bytes and len(key) == KEY_LEN):
        raise TopologyDecodeError("key is not 32 bytes")
    if not (type(sig) is bytes and len(sig) == SIG_LEN):
        raise TopologyDecodeError("sig is not 64 bytes (an unsigned record?)")
    if not isinstance(conns, list):
        raise TopologyDecodeError("conns is not a list")
    if len(conns) > MAX_CONNS:
        raise TopologyDecodeError(f"{len(conns)} connections exceed {MAX_CONNS}")
    out: list[ConnRecord] = []
    prev = b""
    for c in conns:
        if not (isinstance(c, list) and len(c) == 4):
            raise TopologyDecodeError("connection is not a 4-element array")
        cpeer, addr, outbound, established = c
        if not _is_id(cpeer):
            raise TopologyDecodeError("connection peer id is not 8 bytes")
        if not (type(addr) is str and len(addr) <= MAX_ADDR):
            raise TopologyDecodeError("connection address is not a string of at most 262 chars")
        if type(outbound) is not bool or type(established) is not bool:
            raise TopologyDecodeError("connection flags are not booleans")
        if cpeer <= prev or cpeer == peer:
            raise TopologyDecodeError("connections are not strictly ascending, or name the owner")
        prev = cpeer
        out.append(ConnRecord(cpeer, addr, outbound, established))
    return PeerRecord(peer, nick, uid, version, tuple(out), key, sig)


def _beats(a: PeerRecord, b: PeerRecord) -> bool:
    """Whether record ``a`` replaces ``b`` (same peer). A strict total order."""
    if a.version != b.version:
        return a.version > b.version
    if a.uid != b.uid:
        return a.uid > b.uid
    return a != b and a.canonical() > b.canonical()


class Topology:
    """One peer's view of the mesh: its own record plus the best record of every other peer.

    ``generation`` increases on every change of the view, so caches (routes.Routes) can
    tell whether they are stale. ``verify`` checks records before they change the view;
    only tests and fuzzing replace it (e.g. to explore merge orders without keys).
    """

    __slots__ = ("_own", "_recs", "_signer", "_unreachable_since", "gc_delay", "generation",
                 "me", "verify")

    def __init__(self, signer: Signer, nickname: str, uid: int, *,
                 gc_delay: float = GC_DELAY,
                 verify: Callable[[PeerRecord], bool] = verify_record) -> None:
        me = signer.peer_id
        if len(me) != PEER_ID_LEN:
            raise ValueError("peer id must be 8 bytes")
        if not 0 < uid <= MAX_U64:
            raise ValueError("uid must be a non-zero 64-bit unsigned integer")
        if len(nickname) > MAX_NICK:
            raise ValueError(f"nickname longer than {MAX_NICK} characters")
        self.me = me
        self.gc_delay = gc_delay
        self.generation = 0
        self.verify = verify
        self._signer = signer
        self._own = sign_record(PeerRecord(me, nickname, uid, 0, ()), signer)
        self._recs: dict[bytes, PeerRecord] = {me: self._own}
        self._unreachable_since: dict[bytes, float] = {}

    # -- queries ----------------------------------------------------------------------------
    @property
    def own(self) -> PeerRecord:
        return self._own

    def get(self, peer: bytes) -> PeerRecord | None:
        return self._recs.get(peer)

    def records(self) -> list[PeerRecord]:
        """The full state, ours included, sorted by peer id (anti-entropy, new neighbours)."""
        return [self._recs[p] for p in sorted(self._recs)]

    def peers(self) -> set[bytes]:
        """Peers we hold a record for (ourselves included); not the ones merely mentioned."""
        return set(self._recs)

    def __len__(self) -> int:
        return len(self._recs)

    # -- our own record ---------------------------------------------------------------------
    def set_local_connections(self, conns: Iterable[ConnRecord]) -> PeerRecord | None:
        """Replace our connection list. Returns our new record to gossip, or None if unchanged."""
        cs = tuple(sorted(conns, key=lambda c: c.peer))
        for i, c in enumerate(cs):
            if len(c.peer) != PEER_ID_LEN or c.peer == self.me:
                raise ValueError("connection peer must be another peer's 8-byte id")
            if i and cs[i - 1].peer == c.peer:
                raise ValueError("two connections to the same peer (resolve duplicates first)")
            if len(c.addr) > MAX_ADDR:
                raise ValueError("connection address too long")
        if len(cs) > MAX_CONNS:
            raise ValueError(f"more than {MAX_CONNS} connections")
        if cs == self._own.conns:
            return None
        self._set_own(replace(self._own, version=min(self._own.version + 1, MAX_VERSION),
                              conns=cs))
        return self._own

    def _set_own(self, rec: PeerRecord) -> None:
        self._own = sign_record(rec, self._signer)
        self._recs[self.me] = self._own
        self.generation += 1

    # -- gossip -----------------------------------------------------------------------------
    def merge(self, records: Iterable[PeerRecord]) -> list[PeerRecord]:
        """Merge received records; return those that improved our view (to gossip on).

        Each peer appears at most once in the result, with its final record; our own
        record is included when a record about us forced a version bump. Raises
        ``TopologyAuthError``, having changed nothing, if a record that would change our
        view fails verification (only those are verified: the per-peer winner of the
        message, when it beats what we hold).
        """
        me = self.me
        own = self._own
        # 1. the best record of this message per peer (about us: other than our current
        #    one); pure comparisons, no crypto
        best: dict[bytes, PeerRecord] = {}
        for r in records:
            if r.peer == me and r == own:
                continue  # our own record echoed back: the common case
            w = best.get(r.peer)
            if w is None or _beats(r, w):
                best[r.peer] = r
        # 2. which of them would change our view
        changes: list[PeerRecord] = []
        version = own.version
        for p, w in best.items():
            if p == me:
                # An earlier incarnation of us is out there: outbid it (the cap keeps the
                # merge idempotent even at the top of the range).
                v = min(w.version + 1, MAX_VERSION)
                if v > version:
                    version = v
                    changes.append(w)
            else:
                cur = self._recs.get(p)
                if cur is None or _beats(w, cur):
                    changes.append(w)
        # 3. verify all of them before applying any: a bad one refuses the whole message
        verify = self.verify
        for w in changes:
            if not verify(w):
                raise TopologyAuthError(w.peer)
        delta: list[PeerRecord] = []
        for w in changes:
            if w.peer == me:
                self._set_own(replace(own, version=version))
                delta.append(self._own)
            else:
                self._recs[w.peer] = w
                delta.append(w)
                self.generation += 1
        return delta

    def reachable(self) -> set[bytes]:
        """Peers with a record reachable from us over any listed connection, us included.

        Edges are followed from the peer that lists them: a departed peer whose stale
        record still lists its old neighbours is not reachable once they stop listing it.
        """
        recs = self._recs
        seen = {self.me}
        stack = [self.me]
        while stack:
            rec = recs.get(stack.pop())
            if rec is None:
                continue  # mentioned but unknown: reachable, yet has no edges we know of
            for c in rec.conns:
                if c.peer not in seen:
                    seen.add(c.peer)
                    stack.append(c.peer)
        return seen & recs.keys()

    def gc(self, now: float) -> list[bytes]:
        """Drop peers unreachable for at least ``gc_delay`` seconds; return their ids."""
        unreachable = self._recs.keys() - self.reachable()
        since = self._unreachable_since
        for p in since.keys() - unreachable:
            del since[p]  # reachable again (or already gone): restart its clock next time
        removed = []
        for p in sorted(unreachable):
            if now - since.setdefault(p, now) >= self.gc_delay:
                del self._recs[p]
                del since[p]
                removed.append(p)
        if removed:
            self.generation += 1
        return removed
