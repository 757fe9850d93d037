"""The IPAM ring CRDT and its codec: operations, merge laws, hostile input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.ipam import wire
from sleeve.ipam.ring import Entry, Ring, RingConflict, join, subdivide

A, B, C = (bytes([i]) * 8 for i in (1, 2, 3))
START, END = 1000, 1256  # a /24-sized ring (reserved: 1000 and 1255)


def no_allocs(lo: int, hi: int) -> bool:
    return False


def seeded(me: bytes, seeds: tuple[bytes, ...] = (A, B)) -> Ring:
    r = Ring(START, END, me)
    r.claim_for(seeds)
    r.check()
    return r


def merge(dst: Ring, src: Ring, has: object = no_allocs) -> list[Entry]:
    changed, _ = dst.merge(src.start, src.end, src.seeds, list(src.entries.values()), has)  # type: ignore[arg-type]
    dst.check()
    return changed


def test_subdivide_halves_among_sorted_peers() -> None:
    assert subdivide(0, 256, [A, B, C]) == [(0, A), (128, B), (192, C)]
    r = seeded(A, (C, A, B))
    assert r.seeds == (A, B, C)
    assert [(t, e.owner, e.free) for t, e in r.entries.items()] == [
        (1000, A, 127), (1128, B, 64), (1192, C, 63)]  # the range's first and last are reserved


def test_every_seed_builds_the_same_ring() -> None:
    assert seeded(A).entries == seeded(B).entries == seeded(C).entries


def test_grant_whole_split_and_carve() -> None:
    r = seeded(A)  # A owns [1000, 1128)
    whole = seeded(A)
    assert [e.owner for e in whole.grant(1000, 1128, C, whole.usable)] == [C]
    split = r.grant(1064, 1128, C, r.usable)
    assert [(e.token, e.owner, e.version) for e in split] == [(1000, A, 2), (1064, C, 1)]
    carve = r.grant(1010, 1020, B, r.usable)
    assert [(e.token, e.owner) for e in carve] == [(1000, A), (1010, B), (1020, A)]
    r.check()
    assert r.owner_of(1009) == A and r.owner_of(1015) == B and r.owner_of(1025) == A
    with pytest.raises(ValueError):
        r.grant(1010, 1015, C, lambda lo, hi: 0)  # not ours any more


def test_merge_higher_version_wins_and_grant_reaches_new_owner() -> None:
    a, c = seeded(A), seeded(C)
    a.grant(1064, 1128, C, a.usable)
    assert {e.token for e in merge(c, a)} == {1000, 1064}
    assert c.owner_of(1100) == C and c.entries == a.entries
    assert merge(c, a) == []  # idempotent


def test_tie_rule_same_version_different_owner_is_deterministic() -> None:
    # weave#3632: two hosts ran rmpeer for the same dead peer A: same version, two owners
    b, c = seeded(B), seeded(C)
    b.takeover(A)
    c.takeover(A)
    b2, c2 = seeded(B), seeded(C)
    merge(b2, b)
    merge(b2, c)
    merge(c2, c)
    merge(c2, b)
    assert b2.entries == c2.entries and b2.owner_of(1000) == C  # larger owner id wins the tie
    with pytest.raises(RingConflict) as e:  # the loser holds an address there: refused
        merge(b, c, lambda lo, hi: lo <= 1001 < hi)
    assert e.value.reason == "would_lose_allocations"
    merge(b, c)  # without allocations it gives way (Weave's repair)
    assert b.owner_of(1000) == C


def test_foreign_token_inside_our_range_refused_when_we_hold_addresses() -> None:
    a, b = seeded(A), seeded(B)
    forged = Entry(1050, B, 1, 10)
    with pytest.raises(RingConflict):
        a.merge(START, END, a.seeds, [forged], lambda lo, hi: lo <= 1060 < hi)
    assert 1050 not in a.entries
    del b


def test_old_copy_of_our_entry_is_reimposed() -> None:
    a = seeded(A)
    a.set_free(1000, 100)
    a.set_free(1000, 90)  # version 3
    stale = Entry(1000, A, 5, 127)  # we restarted from an old file; others saw v5
    changed, reimposed = a.merge(START, END, a.seeds, [stale], no_allocs)
    assert reimposed == [Entry(1000, A, 6, 90)] and changed == reimposed


def test_different_seeds_or_range_refused() -> None:
    a = seeded(A, (A, B))
    other = seeded(C, (C,))
    with pytest.raises(RingConflict) as e:
        merge(a, other)
    assert e.value.reason == "different_seeds"
    with pytest.raises(RingConflict) as e:
        a.merge(START, END + 256, a.seeds, [], no_allocs)
    assert e.value.reason == "different_range"


def test_unseeded_ring_adopts_seeds() -> None:
    r = Ring(START, END, C)
    merge(r, seeded(A))
    assert r.seeds == (A, B) and r.owner_of(1200) == B


def test_free_beyond_size_refused() -> None:
    a = seeded(A)
    with pytest.raises(RingConflict):
        a.merge(START, END, a.seeds, [Entry(1128, B, 9, 128)], no_allocs)


# -- merge laws on random histories ---------------------------------------------------
entries_st = st.lists(
    st.builds(Entry, st.integers(START, END - 1), st.sampled_from([A, B, C]),
              st.integers(0, 5), st.integers(0, 3)),
    max_size=12,
)


@given(entries_st, entries_st, entries_st)
@settings(max_examples=200, deadline=None)
def test_join_is_commutative_associative_idempotent(x: list[Entry], y: list[Entry],
                                                     z: list[Entry]) -> None:
    jx = join({}, x)
    assert join(jx, y) == join(join({}, y), x)
    assert join(join(jx, y), z) == join(jx, join(join({}, y), z).values())
    assert join(jx, jx.values()) == jx


# -- codec ----------------------------------------------------------------------------
def test_ring_roundtrip_and_size() -> None:
    r = seeded(A, (A, B, C))
    r.grant(1010, 1020, B, r.usable)
    (msg,) = wire.encode_ring(START, END, r.seeds, list(r.entries.values()))
    tag, body = wire.split(msg)
    m = wire.parse_ring(body)
    assert tag == wire.RING and m.entries == tuple(r.entries[t] for t in r.tokens)
    assert len(msg) < 130  # 5 entries, 3 peers: compact
    (delta,) = wire.encode_ring(START, END, r.seeds, [r.entries[1000]], full=False)
    d = wire.parse_ring(wire.split(delta)[1])
    assert len(delta) < 40 and d.seeds == () and d.digest == wire.seeds_digest(r.seeds)


def test_chunks_are_valid_partial_rings() -> None:
    es = [Entry(START + i, A, 1, 0) for i in range(250)]
    msgs = wire.encode_ring(START, END, (A,), es)
    assert len(msgs) == 1
    wire.CHUNK_ENTRIES, saved = 100, wire.CHUNK_ENTRIES
    try:
        msgs = wire.encode_ring(START, END, (A,), es)
    finally:
        wire.CHUNK_ENTRIES = saved
    got = [e for m in msgs for e in wire.parse_ring(wire.split(m)[1]).entries]
    assert len(msgs) == 3 and got == es


def _body(start: int = START, end: int = END, seeds: object = None, peers: object = None,
          flat: object = None, digest: bytes | None = None) -> bytes:
    ss = [A] if seeds is None else seeds
    if digest is None:
        digest = wire.seeds_digest(sorted(ss))  # type: ignore[arg-type]
    return bytes([wire.RING]) + msgpack.packb(
        [start, end, digest, ss, [A] if peers is None else peers,
         [0, 0, 1, 5] if flat is None else flat], use_bin_type=True)


@pytest.mark.parametrize("msg,reason", [
    (b"", "bad_size"),
    (b"\x10", "bad_size"),
    (b"\x10\xc1", "bad_msgpack"),
    (b"\x10" + msgpack.packb({"a": 1}), "bad_msgpack"),
    (_body(start=END), "bad_range"),
    (_body(end=(1 << 32) + 5), "bad_range"),
    (_body(seeds=[B, A]), "bad_seeds"),
    (_body(seeds=[b"short"], digest=b"\0" * 8), "bad_seeds"),
    (_body(digest=b"\0" * 8), "bad_seeds"),  # seeds that do not match the digest
    (_body(digest=b"short"), "bad_digest"),
    (_body(flat=[0, 0, 1]), "bad_entries"),
    (_body(flat=[0, 0, 1, 5, 0, 0, 1, 5]), "bad_token"),  # repeated token
    (_body(flat=[300, 0, 1, 5]), "bad_token"),  # outside the range
    (_body(flat=[0, 0, 1, 5, -3, 0, 1, 5]), "bad_token"),  # not sorted
    (_body(flat=[0, 7, 1, 5]), "bad_peer_index"),
    (_body(flat=[0, 0, -1, 5]), "bad_version"),
    (_body(flat=[0, 0, 1 << 63, 5]), "bad_version"),
    (_body(flat=[0, 0, 1, 257]), "bad_free"),
    (_body(flat=[0, 0, "x", 5]), "bad_msgpack"),  # no strings on this channel
])
def test_hostile_ring_refused(msg: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as e:
        _tag, body = wire.split(msg)
        wire.parse_ring(body)
    assert e.value.reason == reason


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    for parse in (wire.parse_ring, wire.parse_paxos, wire.parse_req, wire.parse_denied,
                  wire.parse_grant):
        try:
            _tag, body = wire.split(data)
            parse(body)
        except wire.WireError:
            pass


@given(st.recursive(st.none() | st.booleans() | st.integers(-5, 1 << 33) | st.binary(max_size=9),
                    lambda c: st.lists(c, max_size=6), max_leaves=40))
@settings(max_examples=500, deadline=None)
def test_structured_garbage_refused_cleanly(obj: object) -> None:
    data = b"\x10" + msgpack.packb([obj] * 2 if not isinstance(obj, list) else obj,
                                   use_bin_type=True)
    for parse in (wire.parse_ring, wire.parse_paxos, wire.parse_req, wire.parse_grant):
        try:
            parse(wire.split(data)[1])
        except wire.WireError:
            pass


def test_paxos_roundtrip_and_bad_claim() -> None:
    claims = {A: wire.Claims((2, B), (1, A), (A, B)), B: wire.Claims((2, B), (0, b""), ())}
    m = wire.parse_paxos(wire.split(wire.encode_paxos(3, claims))[1])
    assert m.quorum == 3 and m.claims == claims
    bad = bytes([wire.PAXOS]) + msgpack.packb([3, [A], [[0, 1, 0, 2, 0, [0]]]])
    with pytest.raises(wire.WireError):  # accepted above promised
        wire.parse_paxos(wire.split(bad)[1])
