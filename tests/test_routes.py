"""Routes against slow reference models over random graphs (5-60 peers).

- unicast: all-pairs BFS distances; the next hop is exactly the documented tie rule
  (parent = lowest-id neighbour one level closer to the root), and walking the per-peer
  tables from any peer reaches the destination in exactly the shortest distance;
- broadcast: every peer forwards per its own ``broadcast_next_hops``; each peer
  reachable from the source gets exactly one copy, the source and the unreachable none;
- symmetric_links against a direct reading of the definition; Routes caches and
  notices topology changes.
"""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.proto.routes import (
    Routes,
    broadcast_next_hops,
    known_links,
    symmetric_links,
    unicast_next_hops,
)
from sleeve.proto.topology import ConnRecord, PeerRecord, Topology
from tests.test_topology import pid, signed, signer

Graph = dict[bytes, set[bytes]]
PID = st.binary(min_size=8, max_size=8)


@st.composite
def graphs(draw: st.DrawFn, lo: int = 5, hi: int = 60) -> Graph:
    """Undirected graphs, often disconnected, with ids whose order is not insertion order."""
    n = draw(st.integers(lo, hi))
    ids = draw(st.lists(PID, min_size=n, max_size=n, unique=True))
    # Bulk edges from a seeded RNG (hypothesis' own lists stay too sparse to be interesting),
    # around a mean degree from fragmented to well meshed, plus a few drawn ones to shrink.
    rnd = draw(st.randoms(use_true_random=False))
    degree = draw(st.sampled_from([0.6, 1.0, 1.5, 2.5, 4.0]))
    pairs = [(rnd.randrange(n), rnd.randrange(n)) for _ in range(int(n * degree / 2))]
    pairs += draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                           max_size=5))
    g: Graph = {p: set() for p in ids}
    for i, j in pairs:
        if i != j:
            g[ids[i]].add(ids[j])
            g[ids[j]].add(ids[i])
    return g


def distances(g: Graph, root: bytes) -> dict[bytes, int]:
    d = {root: 0}
    q = deque([root])
    while q:
        u = q.popleft()
        for v in g[u]:
            if v not in d:
                d[v] = d[u] + 1
                q.append(v)
    return d


def ref_parent(g: Graph, dist: dict[bytes, int], x: bytes) -> bytes:
    return min(p for p in g[x] if dist.get(p) == dist[x] - 1)


def ref_next_hop(g: Graph, dist: dict[bytes, int], dest: bytes) -> bytes:
    x = dest
    while dist[x] > 1:
        x = ref_parent(g, dist, x)
    return x


@settings(max_examples=100, deadline=None)
@given(graphs())
def test_unicast_matches_reference(g: Graph) -> None:
    dist = {p: distances(g, p) for p in g}
    tables = {p: unicast_next_hops(p, g) for p in g}
    for me, table in tables.items():
        d = dist[me]
        assert set(table) == set(d) - {me}
        for dest, hop in table.items():
            assert hop in g[me]
            assert dist[hop][dest] == d[dest] - 1  # every hop gets one closer
            assert hop == ref_next_hop(g, d, dest)  # and it is the documented tie rule
        # walk the tables hop by hop: no loops, exactly the shortest length
        for dest in table:
            at, hops = me, 0
            while at != dest:
                at = tables[at][dest]
                hops += 1
                assert hops <= d[dest]
            assert hops == d[dest]


def _deliveries(g: Graph, source: bytes) -> dict[bytes, int]:
    got = dict.fromkeys(g, 0)
    q = deque([source])
    while q:
        at = q.popleft()
        for nb in broadcast_next_hops(at, source, g):
            assert nb in g[at]  # only over real links
            got[nb] += 1
            q.append(nb)
    return got


@settings(max_examples=80, deadline=None)
@given(graphs(), st.data())
def test_broadcast_reaches_everyone_exactly_once(g: Graph, data: st.DataObject) -> None:
    ids = sorted(g)
    sources = ids if len(ids) <= 12 else data.draw(
        st.lists(st.sampled_from(ids), min_size=6, max_size=6, unique=True))
    for s in sources:
        reach = distances(g, s)
        got = _deliveries(g, s)
        for p, n in got.items():
            assert n == (1 if p in reach and p != s else 0), (p == s, p in reach, n)


@settings(max_examples=40, deadline=None)
@given(graphs(hi=30))
def test_broadcast_hops_are_children_in_the_source_tree(g: Graph) -> None:
    for s in sorted(g)[:5]:
        dist = distances(g, s)
        for me in g:
            want = sorted(x for x in g if x != s and x in dist and dist[x] == dist.get(me, -2) + 1
                          and ref_parent(g, dist, x) == me)
            assert broadcast_next_hops(me, s, g) == want


def test_tie_rule_example() -> None:
    #   a - c - d      two shortest paths a->d; c < b, so both a and d use c
    #    \     /
    #      b --
    a, b, c, d = (bytes([x]) * 8 for x in (1, 3, 2, 4))
    g: Graph = {a: {b, c}, b: {a, d}, c: {a, d}, d: {b, c}}
    assert unicast_next_hops(a, g) == {b: b, c: c, d: c}
    assert unicast_next_hops(d, g) == {b: b, c: c, a: c}
    assert broadcast_next_hops(a, a, g) == [c, b]  # ascending ids, not insertion order
    assert broadcast_next_hops(c, a, g) == [d]
    assert broadcast_next_hops(b, a, g) == []
    assert broadcast_next_hops(d, a, g) == []


def test_unknown_source_or_isolated_peer() -> None:
    a, b, z = bytes([1]) * 8, bytes([2]) * 8, bytes([9]) * 8
    g: Graph = {a: {b}, b: {a}, z: set()}
    assert unicast_next_hops(z, g) == {}
    assert unicast_next_hops(a, g) == {b: b}
    assert broadcast_next_hops(a, z, g) == []
    assert broadcast_next_hops(z, a, g) == []
    assert broadcast_next_hops(a, bytes(8), g) == []


# -- over a Topology -----------------------------------------------------------------------

CONN = st.tuples(st.booleans(), st.booleans())  # (listed, established)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.data())
def test_symmetric_links_match_definition(n: int, data: st.DataObject) -> None:
    ids = [pid(i + 1) for i in range(n)]
    me = ids[0]
    t = Topology(signer(1), "me", 1)
    lists: dict[bytes, dict[bytes, bool]] = {}
    recs = []
    for p in ids:
        listed = {q: data.draw(st.booleans()) for q in ids
                  if q != p and data.draw(st.booleans())}
        lists[p] = listed
        conns = tuple(ConnRecord(q, "h:1", True, e) for q, e in sorted(listed.items()))
        if p == me:
            t.set_local_connections(conns)
        elif data.draw(st.integers(0, 5)):  # sometimes we lack a peer's record
            recs.append(signed(PeerRecord(p, "x", 1, 1, conns)))
    t.merge(recs)
    known = t.peers()
    links = symmetric_links(t)
    assert set(links) == known
    for p in known:
        want = {q for q in known if lists[p].get(q) and lists[q].get(p)}
        assert links[p] == want
    assert known_links(t) == {p: set(lists[p]) for p in known}


def _conns(*peers: bytes) -> tuple[ConnRecord, ...]:
    return tuple(ConnRecord(q, "h:1", True, True) for q in sorted(peers))


def test_routes_cache_follows_topology_changes() -> None:
    a, b, c = (pid(x) for x in (1, 2, 3))
    t = Topology(signer(1), "a", 1)
    t.set_local_connections(_conns(b))
    t.merge([signed(PeerRecord(b, "b", 1, 1, _conns(a, c))),
             signed(PeerRecord(c, "c", 1, 1, _conns(b)))])
    r = Routes(t)
    assert r.unicast() == {b: b, c: b}
    assert r.unicast() is r.unicast()  # cached
    assert r.broadcast(c) == []
    assert r.broadcast(a) == [b]
    assert r.broadcast(a) is r.broadcast(a)
    # c drops the link: the routes notice through the topology's generation
    t.merge([signed(PeerRecord(c, "c", 1, 2, ()))])
    assert r.next_hop(c) is None and r.unicast() == {b: b}
    assert r.links[b] == {a}
    # gossip variant: all listed links, directed
    g = Routes(t, known_links)
    assert g.unicast() == {b: b, c: b}
    before = r.unicast()
    r.invalidate()
    assert r.unicast() == before and r.unicast() is not before
