"""The DNS record channel: merge, tombstones, expiry, peer_gone, re-assert, bounds, codec,
and convergence of 3 peers over the in-process gossip fabric (with a partition)."""

from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.dns.names import BadName, check_name, relative_name, reverse_pointer_address
from sleeve.dns.records import Records, TableFull
from sleeve.dns.wire import Key, RecordSet, State, WireError, decode, encode
from sleeve.gossip.fabric import Fabric
from sleeve.proto.gossip import GossipRefused

A, B, C = b"A" * 8, b"B" * 8, b"C" * 8
IP1, IP2 = ipaddress.ip_address("198.19.0.1"), ipaddress.ip_address("198.19.0.2")


def msg(origin: bytes, entries: list[list[object]]) -> bytes:
    return msgpack.packb([1, [[origin, entries]]], use_bin_type=True)  # type: ignore[no-any-return]


def mesh(n: int = 3, **kw: object) -> tuple[Fabric, dict[bytes, Records]]:
    f = Fabric()
    rs = {}
    for p in (A, B, C)[:n]:
        g = f.add(p)
        r = Records(p, **kw)  # type: ignore[arg-type]
        r.set_gossip(g)
        f.attach(p, r)
        rs[p] = r
    f.connect_all()
    f.run()
    return f, rs


# -- names ---------------------------------------------------------------------------------
def test_names() -> None:
    assert check_name("web.") == "web"
    assert check_name("9lives-x.prod") == "9lives-x.prod"
    for bad in ["", "-web", "web-", "we_b", "a..b", "x" * 64, "a" * 254, "é"]:
        with pytest.raises(BadName) as e:
            check_name(bad)
        assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert relative_name("WEB.sleeve.local.", "sleeve.local.") == "WEB"
    with pytest.raises(BadName):
        relative_name("sleeve.local", "sleeve.local.")
    assert reverse_pointer_address("1.0.19.198.in-addr.arpa.") == IP1
    assert reverse_pointer_address("x.0.19.198.in-addr.arpa.") is None
    v6 = ipaddress.ip_address("fd00::1")
    assert reverse_pointer_address(v6.reverse_pointer + ".") == v6


# -- local API -------------------------------------------------------------------------------
def test_add_remove_lookup_case_insensitive() -> None:
    r = Records(A)
    assert r.add("Web", "198.19.0.1", "c1", 0.0)
    assert not r.add("Web", "198.19.0.1", "c1", 0.0)  # already there
    r.add("web", "198.19.0.2", "c2", 0.0)
    r.add("web", "198.19.0.1", "c3", 0.0)  # same address, other owner: listed once
    assert r.lookup("WEB") == [IP1, IP2]
    assert r.lookup_address(IP1) == ["Web"] or r.lookup_address(IP1) == ["web"]
    assert r.remove("web", IP2, 1.0) == 1
    assert r.lookup("web") == [IP1]
    assert r.remove_owner("c1", 2.0) == 1
    assert r.lookup("web") == [IP1]  # c3 still has it
    assert r.remove("WEB", None, 3.0) == 1
    assert r.lookup("web") == [] and r.lookup_address(IP1) == []
    assert r.status()["tombstones"] == 3
    with pytest.raises(BadName):
        r.add("bad_name", IP1, "", 0.0)
    with pytest.raises(ValueError):
        r.add("ok", "not-an-ip", "", 0.0)


def test_readd_after_tombstone_bumps_version() -> None:
    r = Records(A)
    r.add("web", IP1, "c", 0.0)
    r.remove("web", None, 1.0)
    r.add("web", IP1, "c", 2.0)
    (e,) = r.entries(tombstones=True)
    assert e["version"] == 3 and not e["tombstone"]


def test_bounds_are_counted() -> None:
    r = Records(A, max_per_origin=2, max_total=3)
    r.add("a", IP1, "", 0.0)
    r.add("b", IP1, "", 0.0)
    with pytest.raises(TableFull):
        r.add("c", IP1, "", 0.0)
    r.on_gossip(B, msg(B, [["x", IP1.packed, "", 1, 0], ["y", IP1.packed, "", 1, 0],
                           ["z", IP1.packed, "", 1, 0]]), 0.0)
    assert r.drops["table_full"] == 2 and len(r.lookup("x")) == 1
    r2 = Records(A, max_name_len=5)
    r2.on_gossip(B, msg(B, [["longname", IP1.packed, "", 1, 0]]), 0.0)
    assert r2.drops["name_too_long"] == 1


# -- merge rules -----------------------------------------------------------------------------
def test_merge_higher_version_wins_equal_version_tombstone_wins() -> None:
    r = Records(A)
    assert r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 5, 0]]), 0.0) is not None
    assert r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 4, 100]]), 0.0) is None  # older
    assert r.lookup("web") == [IP1]
    delta = r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 5, 100]]), 0.0)  # equal: tomb
    assert isinstance(delta, RecordSet) and len(delta) == 1
    assert r.lookup("web") == []
    assert r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 5, 0]]), 0.0) is None
    assert r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 6, 0]]), 0.0) is not None
    assert r.lookup("web") == [IP1]


def test_broadcast_carries_only_its_origins_records() -> None:
    r = Records(A)
    with pytest.raises(GossipRefused) as e:
        r.on_broadcast(B, msg(C, [["web", IP1.packed, "c", 1, 0]]), 0.0)
    assert e.value.reason == "foreign_origin" and r.lookup("web") == []
    assert r.on_broadcast(B, msg(B, [["web", IP1.packed, "c", 1, 0]]), 0.0)


def test_tombstones_expire_with_the_time_left() -> None:
    r = Records(A, tombstone_ttl=100.0)
    r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 2, 30]]), 10.0)  # 30 s left when sent
    assert r.status()["tombstones"] == 1
    assert r.next_deadline() == 40.0
    assert r.tick(39.0) == 0
    assert r.tick(40.0) == 1 and r.status()["records"] == 0
    r.add("mine", IP1, "", 50.0)
    r.remove("mine", None, 60.0)
    (s,) = RecordSet(dict(decode(r.gossip().encode()[0]))).entries.values()  # type: ignore[union-attr]
    assert s.tomb == 100
    assert r.tick(159.0) == 0 and r.tick(160.0) == 1


def test_peer_gone_drops_its_records_and_holds_them_down() -> None:
    r = Records(A, gone_holddown=60.0)
    r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 1, 0]]), 0.0)
    r.on_gossip(B, msg(C, [["db", IP2.packed, "c", 1, 0]]), 0.0)
    r.peer_gone(B)
    assert r.lookup("web") == [] and r.lookup("db") == [IP2]
    assert r.on_gossip(C, msg(B, [["web", IP1.packed, "c", 1, 0]]), 1.0) is None  # relayed
    assert r.drops["gone_origin"] == 1
    assert r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 1, 0]]), 2.0) is not None  # itself
    r.peer_gone(B)
    assert r.on_gossip(C, msg(B, [["web", IP1.packed, "c", 1, 0]]), 70.0) is not None  # later


def test_a_neighbours_own_records_are_believed_before_the_topology_knows_it() -> None:
    """The topology reaches a new link as a digest, its records a round trip after the
    neighbour's DNS state: that neighbour's own names must not be lost meanwhile
    (a restarted router lost its neighbours' names until the next anti-entropy)."""
    known: set[bytes] = set()
    r = Records(A, is_known_peer=known.__contains__)
    assert r.on_gossip(B, msg(B, [["web", IP1.packed, "c", 1, 0]]), 0.0) is not None
    assert r.lookup("web") == [IP1]
    # a third party's records still wait until the topology knows their origin
    assert r.on_gossip(B, msg(C, [["db", IP2.packed, "c", 1, 0]]), 0.0) is None
    assert r.drops["unknown_origin"] == 1 and r.lookup("db") == []
    known.add(C)
    assert r.on_gossip(B, msg(C, [["db", IP2.packed, "c", 1, 0]]), 1.0) is not None
    assert r.lookup("db") == [IP2]


def test_reassert_our_records_when_contradicted() -> None:
    r = Records(A)
    r.add("web", IP1, "c", 0.0)
    # a forged/stale tombstone of our live record at a higher version: we outbid it
    delta = r.on_gossip(B, msg(A, [["web", IP1.packed, "c", 7, 100]]), 1.0)
    assert isinstance(delta, RecordSet)
    assert delta.entries == {Key(A, "web", IP1.packed, "c"): State(8, 0)}
    assert r.lookup("web") == [IP1] and r.reasserted == 1
    # a live record of ours that we do not hold (a former life): we tombstone it at v+1
    delta = r.on_gossip(B, msg(A, [["old", IP2.packed, "", 20, 0]]), 2.0)
    assert isinstance(delta, RecordSet)
    (st,) = delta.entries.values()
    assert st.version == 21 and st.tomb > 0
    # an older copy of ours is no contradiction
    assert r.on_gossip(B, msg(A, [["web", IP1.packed, "c", 1, 0]]), 3.0) is None
    # and the next local change is above everything seen
    r.add("new", IP2, "", 4.0)
    assert max(e["version"] for e in r.entries(tombstones=True)) == 22


def test_unicast_refused() -> None:
    with pytest.raises(GossipRefused):
        Records(A).on_unicast(B, b"x", 0.0)


# -- codec -----------------------------------------------------------------------------------
def test_codec_round_trip_and_chunking() -> None:
    es = {Key(bytes([i % 3]) * 8, f"n{i}", IP1.packed, "x" * 64): State(i + 1, i % 2)
          for i in range(2000)}
    msgs = encode(es, max_msg=20_000)
    assert len(msgs) > 1 and all(len(m) <= 20_000 for m in msgs)
    back = dict(kv for m in msgs for kv in decode(m))
    assert back == es


@pytest.mark.parametrize("bad", [
    msgpack.packb([2, []]), msgpack.packb([1, [[b"short", []]]]),
    msgpack.packb([True, []]),
    msg(B, [["web", b"\x01\x02\x03", "", 1, 0]]), msg(B, [["we_b", IP1.packed, "", 1, 0]]),
    msg(B, [["web", IP1.packed, "", 0, 0]]), msg(B, [["web", IP1.packed, "", True, 0]]),
    msg(B, [["web", IP1.packed, "", 1, -1]]), msg(B, [["web", IP1.packed, "\x00", 1, 0]]),
    msg(B, [["web", IP1.packed, "", 1, 0], ["web", IP1.packed, "", 2, 0]]),
    msgpack.packb({"a": 1}), b"", b"\xc1",
])
def test_codec_rejects(bad: bytes) -> None:
    with pytest.raises(WireError):
        decode(bad)
    r = Records(A)
    with pytest.raises(GossipRefused):
        r.on_gossip(B, bad, 0.0)
    assert r.drops["malformed"] == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_refusal(data: bytes) -> None:
    r = Records(A)
    try:
        r.on_gossip(B, data, 0.0)
    except GossipRefused:
        pass


entry = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([IP1.packed, IP2.packed]),
                  st.integers(1, 5), st.sampled_from([0, 0, 50]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([B, C]), entry), max_size=12), st.randoms())
def test_merge_order_does_not_matter(ops: list[tuple[bytes, tuple[str, bytes, int, int]]],
                                     rnd: object) -> None:
    msgs = [msg(o, [[n, a, "", v, t]]) for o, (n, a, v, t) in ops]
    shuffled = list(msgs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    x, y = Records(A), Records(A)
    for m in msgs:
        x.on_gossip(B, m, 0.0)
    for m in shuffled:
        y.on_gossip(B, m, 0.0)
    assert x.entries(tombstones=True) == y.entries(tombstones=True)


# -- convergence over the fabric -------------------------------------------------------------
def names(rs: dict[bytes, Records], name: str) -> list[list[ipaddress._BaseAddress]]:
    return [sorted(r.lookup(name)) for r in rs.values()]  # type: ignore[type-var]


def test_three_peers_converge_through_partition_and_heal() -> None:
    f, rs = mesh()
    rs[A].add("web", IP1, "c1", 0.0)
    rs[B].add("web", IP2, "c2", 0.0)
    f.run()
    assert names(rs, "web") == [[IP1, IP2]] * 3
    f.partition([C])
    rs[A].remove("web", IP1, 1.0)  # C does not hear it
    rs[C].add("db", IP1, "c3", 1.0)  # A and B do not hear it
    f.run()
    assert names(rs, "web") == [[IP2], [IP2], [IP1, IP2]]
    assert names(rs, "db") == [[], [], [IP1]]
    f.heal()
    f.run()
    assert names(rs, "web") == [[IP2]] * 3
    assert names(rs, "db") == [[IP1]] * 3
    # a peer leaves for good: its records go everywhere, anti-entropy does not revive them
    f.remove(B)
    f.anti_entropy()
    f.run()
    assert [r.lookup("web") for r in (rs[A], rs[C])] == [[], []]
    assert f.refused == {}


def test_restarted_peer_tombstones_its_former_records() -> None:
    f, rs = mesh()
    rs[A].add("web", IP1, "c1", 0.0)
    rs[A].add("old", IP2, "c9", 0.0)
    f.run()
    # A restarts with an empty table (same peer id) and re-registers only "web"
    f.remove(A)
    g = f.add(A)
    a2 = Records(A)
    a2.set_gossip(g)
    f.attach(A, a2)
    a2.add("web", IP1, "c1", 5.0)
    for p in (B, C):  # B and C have not noticed A went: they still hold A's old records
        rs[p].on_gossip(A, rs[A].gossip().encode()[0], 5.0)  # type: ignore[union-attr]
    f.connect(A, B)
    f.connect(A, C)
    f.run()
    assert [r.lookup("old") for r in (a2, rs[B], rs[C])] == [[], [], []]
    assert [r.lookup("web") for r in (a2, rs[B], rs[C])] == [[IP1]] * 3
    assert a2.reasserted >= 1
