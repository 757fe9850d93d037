"""Unicast next hops and per-source broadcast trees over a topology view (pure functions).

Links are a plain adjacency mapping ``peer -> neighbours`` so the algorithms can be
tested and benchmarked without records. Two ways to get one from a Topology:

- ``symmetric_links``: A-B only if A lists B as established *and* B lists A as
  established. Data traffic uses these: a link one end does not (yet) consider up
  would silently drop frames.
- ``known_links``: every listed connection, followed from the peer that lists it
  (Weave's "All" variant, for gossip and GC, which must reach peers whose links are
  still coming up).

Both routes come from one breadth-first search with a fixed tie rule, so every peer with
the same view computes the same trees::

    level 0 = {root}; level k+1 = unvisited neighbours of level k.
    parent(X) = the lowest peer id among X's neighbours in the previous level.

(Equivalently: each level is visited in ascending peer-id order and a peer is claimed by
the first visitor.) Hop count is the only metric, as in Weave.

Unicast: ``me`` sends to D via the level-1 ancestor of D in the tree rooted at ``me``.
Each hop is one level closer to D, so the path is a shortest path and cannot loop even
though every hop consults its own tree.

Broadcast: a frame from source S travels along the tree rooted at S; ``me`` forwards it
to its children there. With identical views every peer reachable from S gets exactly one
copy and nobody else gets any; while views differ copies can be lost or duplicated, which
the data plane's hop limit bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from sleeve.proto.topology import Topology

Links = Mapping[bytes, Collection[bytes]]


def symmetric_links(topology: Topology) -> dict[bytes, set[bytes]]:
    """Established links both ends agree on. Every known peer is a key (maybe isolated)."""
    est = {r.peer: {c.peer for c in r.conns if c.established} for r in topology.records()}
    links: dict[bytes, set[bytes]] = {p: set() for p in est}
    for p, ns in est.items():
        for q in ns:
            theirs = est.get(q)
            if theirs is not None and p in theirs:
                links[p].add(q)
    return links


def known_links(topology: Topology) -> dict[bytes, set[bytes]]:
    """Every listed connection, directed from the lister (may name peers without a record)."""
    return {r.peer: {c.peer for c in r.conns} for r in topology.records()}


def unicast_next_hops(me: bytes, links: Links) -> dict[bytes, bytes]:
    """Destination -> neighbour of ``me`` to send to, for every peer reachable from ``me``."""
    hop: dict[bytes, bytes] = {me: me}
    level = [me]
    while level:
        nxt: list[bytes] = []
        for u in level:  # ascending: the lowest id in this level claims a peer first
            via = hop[u]
            for v in links.get(u, ()):
                if v not in hop:
                    hop[v] = v if u == me else via
                    nxt.append(v)
        nxt.sort()
        level = nxt
    del hop[me]
    return hop


def broadcast_next_hops(me: bytes, source: bytes, links: Links) -> list[bytes]:
    """Neighbours (ascending) to which ``me`` forwards a broadcast that ``source`` started.

    Runs the source's search only until ``me`` is visited: the peers ``me`` discovers then
    are its children. Empty if ``me`` is not reachable from ``source``.
    """
    reached = {source}
    level = [source]
    while level:
        nxt: list[bytes] = []
        for u in level:
            new = []
            for v in links.get(u, ()):
                if v not in reached:
                    reached.add(v)
                    new.append(v)
            if u == me:
                return sorted(new)
            nxt += new
        nxt.sort()
        level = nxt
    return []


class Routes:
    """Lazily computed, cached routes of one peer over a Topology.

    The links, the unicast table and each source's broadcast hops are computed on first
    use and kept until ``invalidate()`` or until the topology's generation changes, so a
    burst of broadcasts from one source costs one search.
    """

    __slots__ = ("_bcast", "_gen", "_links", "_links_of", "_topology", "_unicast")

    def __init__(self, topology: Topology,
                 links: Callable[[Topology], Links] = symmetric_links) -> None:
        self._topology = topology
        self._links_of = links
        self._gen = -1
        self._links: Links = {}
        self._unicast: dict[bytes, bytes] | None = None
        self._bcast: dict[bytes, list[bytes]] = {}

    def invalidate(self) -> None:
        self._gen = -1

    def _fresh(self) -> None:
        gen = self._topology.generation
        if gen != self._gen:
            self._links = self._links_of(self._topology)
            self._unicast = None
            self._bcast.clear()
            self._gen = gen

    @property
    def links(self) -> Links:
        self._fresh()
        return self._links

    def unicast(self) -> dict[bytes, bytes]:
        self._fresh()
        if self._unicast is None:
            self._unicast = unicast_next_hops(self._topology.me, self._links)
        return self._unicast

    def next_hop(self, dest: bytes) -> bytes | None:
        return self.unicast().get(dest)

    def broadcast(self, source: bytes) -> list[bytes]:
        self._fresh()
        hops = self._bcast.get(source)
        if hops is None:
            hops = self._bcast[source] = broadcast_next_hops(self._topology.me, source,
                                                             self._links)
        return hops
