"""Topology records: wire codec, merge rules against a reference model, restart, GC.

The reference for ``merge`` is the documented total order: for each other peer the
state holds the maximum record by (version, uid, canonical encoding); our own record
keeps its content and its version becomes ``max(v0, min(seen + 1, MAX_VERSION))`` over
every record about us that is not our current one. Merging is checked to be order- and
repetition-free. Records are signed by their owners (signing keys are precomputed from
fixed seeds: Ed25519 key generation and signing cost ~20 us each); forgeries are in
test_gossip_sig.py.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleeve.crypto.keys import Signer
from sleeve.proto.topology import (
    FORMAT,
    KEY_LEN,
    MAX_ADDR,
    MAX_CONNS,
    MAX_NICK,
    MAX_RECORDS,
    MAX_U64,
    MAX_VERSION,
    SIG_LEN,
    ConnRecord,
    PeerRecord,
    Topology,
    TopologyDecodeError,
    decode_records,
    encode_records,
    sign_record,
    verify_record,
)

PID = st.binary(min_size=8, max_size=8)


@functools.cache
def signer(i: int) -> Signer:
    """Peer number i's signing key (fixed seed); its peer id is ``pid(i)``."""
    return Signer(hashlib.blake2b(b"sleeve test peer %d" % i, digest_size=32).digest())


def pid(i: int) -> bytes:
    return signer(i).peer_id


SIGNERS = {signer(i).peer_id: signer(i) for i in range(48)}  # every id tests sign for
SIGNED_ID = st.sampled_from(sorted(SIGNERS))  # ids whose keys the tests hold
POOL = [pid(i) for i in range(6)]  # small: forces collisions
ME = POOL[0]
MY_UID = 1000  # the pool's records use uids 1..3, so never ours by accident


def conn(p: bytes, est: bool = True, out: bool = True) -> ConnRecord:
    return ConnRecord(p, f"198.18.0.{p[-1]}:6783", out, est)


def signed(rec: PeerRecord) -> PeerRecord:
    """``rec`` signed by the key its peer id names (one of the test signers)."""
    return sign_record(rec, SIGNERS[rec.peer])


def rec(i: int, nick: str, uid: int, version: int, conns: tuple[ConnRecord, ...] = ()
        ) -> PeerRecord:
    """Peer i's signed record."""
    return signed(PeerRecord(pid(i), nick, uid, version, conns))


def topo(i: int, nick: str, uid: int, gc_delay: float = 1.0) -> Topology:
    return Topology(signer(i), nick, uid, gc_delay=gc_delay)


@st.composite
def records(draw: st.DrawFn, ids: st.SearchStrategy[bytes] = PID, uids: Any = None,
            versions: Any = None, sign: bool = False) -> PeerRecord:
    """Records of any content; well-formed keys and signatures unless ``sign``, when the
    record is really signed by its owner (``ids`` must then be test signers' ids)."""
    peer = draw(ids)
    others = draw(st.lists(ids.filter(lambda p: p != peer), unique=True, max_size=6))
    conns = tuple(ConnRecord(p, draw(st.text(max_size=30)), draw(st.booleans()),
                             draw(st.booleans())) for p in sorted(others))
    r = PeerRecord(
        peer, draw(st.text(max_size=MAX_NICK)),
        draw(uids if uids is not None else st.integers(1, MAX_U64)),
        draw(versions if versions is not None else st.integers(0, MAX_VERSION)),
        conns)
    if sign:
        return signed(r)
    return replace(r, key=draw(st.binary(min_size=KEY_LEN, max_size=KEY_LEN)),
                   sig=draw(st.binary(min_size=SIG_LEN, max_size=SIG_LEN)))


POOL_RECORDS = records(st.sampled_from(POOL), st.integers(1, 3), st.integers(0, 4), sign=True)
# Record strategies draw a lot; on a loaded machine hypothesis would call them too slow.
LOADED = settings(suppress_health_check=[HealthCheck.too_slow])


# -- codec ---------------------------------------------------------------------------------

@LOADED
@given(st.lists(records(), max_size=5))
def test_roundtrip(recs: list[PeerRecord]) -> None:
    data = encode_records(recs)
    assert decode_records(data) == recs
    assert encode_records(decode_records(data)) == data  # one encoding per record list


def _decodes_or_rejects(data: bytes) -> None:
    try:
        out = decode_records(data)
    except TopologyDecodeError:
        return
    # Whatever is accepted is valid: it re-encodes and decodes to the same records.
    assert decode_records(encode_records(out)) == out


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _decodes_or_rejects(data)


@LOADED
@given(st.lists(records(), min_size=1, max_size=3), st.data())
def test_mutated_messages_only_raise_decode_error(recs: list[PeerRecord],
                                                  data: st.DataObject) -> None:
    raw = bytearray(encode_records(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _decodes_or_rejects(bytes(raw[:cut]))
    _decodes_or_rejects(bytes(raw))


MSGPACK_OBJ = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), MAX_U64) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda ch: st.lists(ch, max_size=7) | st.dictionaries(st.text(max_size=3), ch, max_size=3),
    max_leaves=30)


@given(MSGPACK_OBJ, st.data())
def test_wrong_structures_only_raise_decode_error(obj: Any, data: st.DataObject) -> None:
    _decodes_or_rejects(msgpack.packb(obj, use_bin_type=True))
    # Also splice the object into a valid message at a random position.
    wire = rec(1, "a", 1, 1, (conn(pid(2)),)).to_wire()
    msg: Any = [FORMAT, [wire]]
    path = data.draw(st.sampled_from([(0,), (1,), (1, 0), *[(1, 0, i) for i in range(7)],
                                      (1, 0, 4, 0), *[(1, 0, 4, 0, i) for i in range(4)]]))
    target = msg
    for i in path[:-1]:
        target = target[i]
    target[path[-1]] = obj
    _decodes_or_rejects(msgpack.packb(msg, use_bin_type=True))


def _wire(rec: list[Any], n: int = 1) -> bytes:
    return msgpack.packb([FORMAT, [rec] * n], use_bin_type=True)  # type: ignore[no-any-return]


def n(i: int) -> bytes:
    """A plain 8-byte id (the codec does not care whose key it names)."""
    return i.to_bytes(8, "big")


def _conns(k: int) -> list[list[Any]]:
    return [[n(i + 100), "h:1", True, True] for i in range(k)]


KEY, SIG = b"k" * KEY_LEN, b"s" * SIG_LEN
GOOD = [n(1), "nick", 5, 7, _conns(2), KEY, SIG]


@pytest.mark.parametrize("field,value", [
    (0, b"\x01" * 7), (0, b"\x01" * 9), (0, "x" * 8),
    (1, "n" * (MAX_NICK + 1)), (1, b"nick"),
    (2, 0), (2, -1), (2, True), (2, 1.0),
    (3, -1), (3, False), (3, None), (3, MAX_VERSION + 1), (3, MAX_U64),
    (4, _conns(MAX_CONNS + 1)), (4, [[n(101), "h", True, True], [n(100), "h", True, True]]),
    (4, [[n(100), "h", True, True]] * 2), (4, [[n(1), "h", True, True]]),
    (4, [[n(100), "h" * (MAX_ADDR + 1), True, True]]), (4, [[n(100), "h", 1, True]]),
    (4, [[n(100), "h", True]]), (4, {"a": 1}),
    (5, b""), (5, KEY[:-1]), (5, KEY + b"k"), (5, "k" * KEY_LEN), (5, None),
    (6, b""), (6, SIG[:-1]), (6, SIG + b"s"), (6, "s" * SIG_LEN), (6, None),
])
def test_limits_and_types_rejected(field: int, value: Any) -> None:
    rec = list(GOOD)
    rec[field] = value
    with pytest.raises(TopologyDecodeError):
        decode_records(_wire(rec))


def test_record_arity_is_fixed() -> None:
    for wire in (GOOD[:6], [*GOOD, b""]):
        with pytest.raises(TopologyDecodeError):
            decode_records(_wire(wire))


def test_limits_accepted_at_the_bound() -> None:
    wire = [n(1), "n" * MAX_NICK, MAX_U64, MAX_VERSION, _conns(MAX_CONNS), KEY, SIG]
    (r,) = decode_records(_wire(wire))
    assert len(r.conns) == MAX_CONNS and r.conns[-1].addr == "h:1"
    assert r.version == MAX_VERSION == 2**62 - 1
    small = [n(1), "", 1, 0, [], KEY, SIG]
    assert len(decode_records(_wire(small, MAX_RECORDS))) == MAX_RECORDS
    with pytest.raises(TopologyDecodeError):
        decode_records(_wire(small, MAX_RECORDS + 1))


@pytest.mark.parametrize("msg", [[], [FORMAT], [FORMAT + 1, []], [True, []], [FORMAT, {}],
                                 {"f": 1}, [FORMAT, [], []], [FORMAT, [[]]]])
def test_bad_envelopes_rejected(msg: Any) -> None:
    with pytest.raises(TopologyDecodeError):
        decode_records(msgpack.packb(msg, use_bin_type=True))


def test_encode_refuses_more_than_the_receiver_accepts() -> None:
    r = rec(1, "", 1, 0)
    with pytest.raises(ValueError):
        encode_records([r] * (MAX_RECORDS + 1))
    with pytest.raises(ValueError, match="not signed"):  # the receiver would refuse it
        encode_records([PeerRecord(pid(1), "", 1, 0, ())])


def test_signed_bytes_cover_everything_but_sig() -> None:
    a = PeerRecord(pid(1), "a", 1, 1, (conn(pid(2)),), KEY)
    assert a.signed_bytes() == replace(a, sig=b"x").signed_bytes()
    for b in (replace(a, nickname="b"), replace(a, uid=2), replace(a, version=2),
              replace(a, conns=()), replace(a, conns=(conn(pid(2), est=False),)),
              replace(a, conns=(conn(pid(2), out=False),)), replace(a, key=b"K" * KEY_LEN),
              replace(a, peer=pid(3))):
        assert a.signed_bytes() != b.signed_bytes()


def test_sign_and_verify_record() -> None:
    r = rec(1, "a", 1, 1, (conn(pid(2)),))
    assert r.key == signer(1).public and len(r.sig) == SIG_LEN
    assert verify_record(r) and verify_record(decode_records(encode_records([r]))[0])
    assert not verify_record(replace(r, version=2))
    assert not verify_record(PeerRecord(pid(1), "a", 1, 1, ()))  # unsigned
    with pytest.raises(ValueError):  # only the owner's key can sign
        sign_record(PeerRecord(pid(1), "a", 1, 1, ()), signer(2))


# -- merge ---------------------------------------------------------------------------------

def _key(r: PeerRecord) -> tuple[int, int, bytes]:
    return (r.version, r.uid, r.canonical())


def _reference(own: PeerRecord, recs: list[PeerRecord]) -> list[PeerRecord]:
    best: dict[bytes, PeerRecord] = {}
    version = own.version
    for r in recs:
        if r.peer == own.peer:
            if r != own:
                version = max(version, min(r.version + 1, MAX_VERSION))
        elif r.peer not in best or _key(r) > _key(best[r.peer]):
            best[r.peer] = r
    best[own.peer] = signed(replace(own, version=version))  # signatures are deterministic
    return [best[p] for p in sorted(best)]


def _fresh(conns: tuple[ConnRecord, ...]) -> Topology:
    t = topo(0, "me", MY_UID)
    t.set_local_connections(conns)
    return t


MY_CONNS = st.lists(st.sampled_from(POOL[1:]), unique=True, max_size=4).map(
    lambda ps: tuple(conn(p) for p in ps))


@settings(LOADED, max_examples=150)
@given(st.lists(POOL_RECORDS, max_size=25), MY_CONNS, st.randoms(use_true_random=False),
       st.booleans())
def test_merge_is_commutative_idempotent_and_matches_model(
        recs: list[PeerRecord], my_conns: tuple[ConnRecord, ...], rnd: random.Random,
        echo: bool) -> None:
    base = _fresh(my_conns)
    if echo:  # our own current record coming back from a neighbour must change nothing
        recs = [*recs, base.own]
    expected = _reference(base.own, recs)

    t1 = _fresh(my_conns)
    t1.merge(recs)
    assert t1.records() == expected

    # Another order, split into random batches, with random repetitions.
    t2 = _fresh(my_conns)
    stream = recs + rnd.choices(recs, k=len(recs)) if recs else []
    rnd.shuffle(stream)
    while stream:
        k = rnd.randint(1, len(stream))
        t2.merge(stream[:k])
        stream = stream[k:]
    assert t2.records() == expected
    assert t2.merge(recs) == []  # idempotent
    assert t2.records() == expected
    assert t2.merge(t2.records()) == []  # our own full state never improves our view


@LOADED
@given(st.lists(POOL_RECORDS, max_size=20), st.lists(POOL_RECORDS, max_size=20))
def test_delta_is_exactly_what_improved(first: list[PeerRecord],
                                        second: list[PeerRecord]) -> None:
    t = _fresh(())
    t.merge(first)
    before = {r.peer: r for r in t.records()}
    delta = t.merge(second)
    after = {r.peer: r for r in t.records()}
    assert {r.peer: r for r in delta} == {p: r for p, r in after.items() if before.get(p) != r}
    assert len({r.peer for r in delta}) == len(delta)
    assert t.merge(second) == []


def test_higher_version_then_higher_uid_wins() -> None:
    t = topo(0, "me", MY_UID)
    a = pid(2)
    v1 = rec(2, "a", 50, 1)
    assert t.merge([v1]) == [v1]
    v2 = rec(2, "a", 10, 2)  # higher version beats higher uid
    assert t.merge([v2]) == [v2]
    assert t.merge([v1]) == []
    restarted = rec(2, "a", 20, 2, (conn(pid(3)),))  # same version, higher uid
    assert t.merge([restarted]) == [restarted]
    assert t.merge([v2]) == []
    assert t.get(a) == restarted


def test_equal_version_and_uid_converges_on_one_record() -> None:
    a = rec(2, "a", 7, 3)
    b = rec(2, "b", 7, 3)  # a lying or buggy owner
    t1, t2 = topo(0, "me", MY_UID), topo(0, "me", MY_UID)
    t1.merge([a, b])
    t2.merge([b, a])
    assert t1.get(pid(2)) == t2.get(pid(2))


def test_unknown_peers_in_connection_lists_are_fine() -> None:
    t = topo(0, "me", MY_UID)
    t.set_local_connections([conn(pid(2))])
    r = rec(2, "b", 1, 1, tuple(sorted((conn(ME), conn(pid(9))), key=lambda c: c.peer)))
    assert t.merge([r]) == [r]
    assert t.peers() == {ME, pid(2)}
    assert t.reachable() == {ME, pid(2)}  # pid(9) is mentioned, not known
    assert t.gc(100.0) == []


def test_set_local_connections() -> None:
    t = topo(0, "me", MY_UID)
    assert t.own.version == 0 and verify_record(t.own)
    r = t.set_local_connections([conn(pid(3)), conn(pid(2))])
    assert r is not None and r.version == 1
    assert [c.peer for c in r.conns] == sorted([pid(2), pid(3)])
    assert verify_record(r)  # every version of our record is signed
    assert t.set_local_connections([conn(pid(2)), conn(pid(3))]) is None
    r2 = t.set_local_connections([conn(pid(2)), conn(pid(3), est=False)])
    assert r2 is not None and r2.version == 2 and t.own == r2 and t.get(ME) == r2
    with pytest.raises(ValueError):
        t.set_local_connections([conn(pid(2)), conn(pid(2), out=False)])
    with pytest.raises(ValueError):
        t.set_local_connections([conn(ME)])
    # whatever we produce, the wire accepts
    assert decode_records(encode_records(t.records())) == t.records()


# -- restart -------------------------------------------------------------------------------

def _link(a: Topology, b: Topology) -> None:
    a.set_local_connections([*a.own.conns, conn(b.me)])
    b.set_local_connections([*b.own.conns, conn(a.me, out=False)])


def test_restart_new_incarnation_overwrites_the_old_one() -> None:
    a, b = topo(1, "a", 111), topo(2, "b", 222)
    _link(a, b)
    for _ in range(5):  # the old incarnation churns its links: version climbs
        a.set_local_connections([])
        a.set_local_connections([conn(b.me)])
    b.merge(a.records())
    a.merge(b.records())
    old = b.get(a.me)
    assert old is not None and old.version == 11

    a2 = topo(1, "a", 99)  # restart: same key, new uid (lower, even), version starts over
    a2.set_local_connections([conn(b.me)])
    assert b.merge([a2.own]) == []  # version 1 loses against the old incarnation's 11
    delta = a2.merge(b.records())  # b sends its full state to the new neighbour
    assert a2.own in delta and a2.get(b.me) in delta  # b's record is new to a2, too
    assert a2.own.version == 12 and a2.own.uid == 99
    assert b.merge(delta) == [a2.own]
    assert b.get(a.me) == a2.own
    assert a2.merge(b.records()) == []  # and it stops there


def test_record_of_an_earlier_incarnation_of_us_is_outbid() -> None:
    t = topo(0, "me", MY_UID)
    t.set_local_connections([conn(pid(2))])
    earlier = rec(0, "me", MY_UID, 5)  # our key and uid, other content
    assert t.merge([earlier]) == [t.own]
    assert t.own.version == 6 and t.own.conns == (conn(pid(2)),) and verify_record(t.own)
    assert t.merge([earlier]) == []
    stale = rec(0, "old", 5, 3)
    assert t.merge([stale]) == []  # older than us: it loses everywhere already


def test_outbidding_saturates_at_max_version_and_stays_idempotent() -> None:
    t = topo(0, "me", MY_UID)
    top = rec(0, "elsewhere", MY_UID + 1, MAX_VERSION)
    assert t.merge([top]) == [t.own] and t.own.version == MAX_VERSION
    # it cannot be outbid any further; merging it again changes nothing (no gossip storm)
    assert t.merge([top]) == [] and t.merge([top, top]) == []
    assert t.set_local_connections([conn(pid(2))]) is not None
    assert t.own.version == MAX_VERSION  # still a valid wire record
    assert decode_records(encode_records([t.own])) == [t.own]


# -- gossip and GC -------------------------------------------------------------------------

def _gossip(tops: dict[bytes, Topology], edges: set[frozenset[bytes]],
            fresh: set[frozenset[bytes]], pending: dict[bytes, list[PeerRecord]]) -> int:
    """Deliver deltas until quiet: full state over ``fresh`` edges, deltas onwards."""
    nbrs: dict[bytes, set[bytes]] = {p: set() for p in tops}
    for e in edges:
        x, y = tuple(e)
        nbrs[x].add(y)
        nbrs[y].add(x)
    inbox: list[tuple[bytes, bytes, list[PeerRecord]]] = []
    for e in fresh:
        x, y = tuple(e)
        inbox += [(x, y, tops[x].records()), (y, x, tops[y].records())]
    for p, recs in pending.items():
        inbox += [(p, q, recs) for q in nbrs[p]]
    rounds = 0
    while inbox:
        rounds += 1
        nxt = []
        for src, dst, recs in inbox:
            # through the wire, as the adapter would
            delta = tops[dst].merge(decode_records(encode_records(recs)))
            if delta:
                nxt += [(dst, q, delta) for q in nbrs[dst] if q != src]
        inbox = nxt
    return rounds


@st.composite
def connected_graphs(draw: st.DrawFn, lo: int = 5, hi: int = 30) -> tuple[
        list[bytes], set[frozenset[bytes]]]:
    n = draw(st.integers(lo, hi))
    ids = draw(st.lists(SIGNED_ID, min_size=n, max_size=n, unique=True))
    edges = {frozenset((ids[i], ids[draw(st.integers(0, i - 1))])) for i in range(1, n)}
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n))
    edges |= {frozenset((ids[i], ids[j])) for i, j in extra if i != j}
    return ids, edges


def _apply_links(tops: dict[bytes, Topology], edges: set[frozenset[bytes]]
                 ) -> dict[bytes, list[PeerRecord]]:
    changed = {}
    for p, t in tops.items():
        r = t.set_local_connections(conn(q) for e in edges if p in e for q in e if q != p)
        if r is not None:
            changed[p] = [r]
    return changed


@settings(LOADED, max_examples=25, deadline=None)
@given(connected_graphs(), st.data())
def test_delta_gossip_converges_after_join_and_leave(
        g: tuple[list[bytes], set[frozenset[bytes]]], data: st.DataObject) -> None:
    ids, edges = g
    tops = {p: Topology(SIGNERS[p], p.hex()[:6], i + 1, gc_delay=0.0)
            for i, p in enumerate(ids)}
    _apply_links(tops, edges)
    _gossip(tops, edges, edges, {})
    want = tops[ids[0]].records()
    assert len(want) == len(ids)
    assert all(t.records() == want for t in tops.values())

    # a peer joins with links to a few existing peers
    newcomer = data.draw(SIGNED_ID.filter(lambda p: p not in tops))
    k = data.draw(st.integers(1, 3))
    fresh = {frozenset((newcomer, q)) for q in data.draw(
        st.lists(st.sampled_from(ids), min_size=k, max_size=k, unique=True))}
    tops[newcomer] = Topology(SIGNERS[newcomer], "new", 7, gc_delay=0.0)
    edges |= fresh
    _gossip(tops, edges, fresh, _apply_links(tops, edges))
    want = tops[newcomer].records()
    assert len(want) == len(ids) + 1
    assert all(t.records() == want for t in tops.values())

    # the newcomer leaves again; the rest stays connected
    gone = tops.pop(newcomer)
    edges -= fresh
    _gossip(tops, edges, set(), _apply_links(tops, edges))
    for t in tops.values():
        assert t.gc(0.0) == [newcomer]
    assert all(t.records() == tops[ids[0]].records() for t in tops.values())
    assert gone.me not in tops[ids[0]].peers()


def _chain(n: int, gc_delay: float = 1.0) -> tuple[dict[bytes, Topology], set[frozenset[bytes]]]:
    ids = [pid(i + 1) for i in range(n)]
    tops = {p: Topology(signer(i + 1), str(i), i + 1, gc_delay=gc_delay)
            for i, p in enumerate(ids)}
    edges = {frozenset((ids[i], ids[i + 1])) for i in range(n - 1)}
    _apply_links(tops, edges)
    _gossip(tops, edges, edges, {})
    return tops, edges


def test_gc_after_partition_waits_gc_delay() -> None:
    tops, edges = _chain(5)  # 1-2-3-4-5
    cut = frozenset((pid(2), pid(3)))
    edges.discard(cut)
    _gossip(tops, edges, set(), _apply_links(tops, edges))
    left, right = [pid(1), pid(2)], [pid(3), pid(4), pid(5)]
    for side, other in ((left, right), (right, left)):
        for p in side:
            t = tops[p]
            assert t.peers() == set(left + right)  # nothing removed before a gc
            assert t.gc(10.0) == []  # unreachable from now on; the clock starts
            assert t.gc(10.5) == []
            assert t.gc(11.0) == sorted(other)
            assert t.peers() == set(side)
            assert t.gc(12.0) == []


def test_gc_clock_restarts_when_a_peer_comes_back() -> None:
    tops, _ = _chain(3)
    t1 = tops[pid(1)]
    t2 = tops[pid(2)]
    saved = t2.own.conns
    t1.merge([t2.set_local_connections([conn(pid(1))])])  # type: ignore[list-item]
    assert t1.reachable() == {pid(1), pid(2)}
    assert t1.gc(0.0) == []
    t1.merge([t2.set_local_connections(saved)])  # type: ignore[list-item]
    assert t1.gc(0.9) == []  # reachable again: forgets it was ever unreachable
    t1.merge([t2.set_local_connections([conn(pid(1))])])  # type: ignore[list-item]
    assert t1.gc(1.5) == []
    assert t1.gc(2.4) == []
    assert t1.gc(2.5) == [pid(3)]


def test_departed_peer_with_stale_record_is_collected() -> None:
    # 3 left; its last record still lists 2, but 2 no longer lists 3: edges are followed
    # from the lister only, so the stale record cannot keep 3 alive.
    tops, _ = _chain(3, gc_delay=0.0)
    t1 = tops[pid(1)]
    r2 = tops[pid(2)].set_local_connections([conn(pid(1))])
    assert r2 is not None
    t1.merge([r2])
    assert t1.gc(0.0) == [pid(3)]


def test_gc_never_removes_ourselves_or_direct_neighbours() -> None:
    t = topo(0, "me", MY_UID, gc_delay=0.0)
    t.set_local_connections([conn(pid(2), est=False)])  # not even established yet
    t.merge([rec(2, "b", 1, 1), rec(3, "c", 1, 1)])
    assert t.gc(0.0) == [pid(3)]
    assert t.peers() == {ME, pid(2)}
