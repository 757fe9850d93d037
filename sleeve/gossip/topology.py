"""The topology as a gossip channel: who is in the mesh and who is linked to whom.

``Mesh`` (sleeve.mesh) holds the signed peer records and the routes; this channel
plugs it into the gossip router. Its gossip data is a *set of peers* whose records are
encoded when the message is actually sent (weaveworks/mesh's habit): merging two is a
set union, and a link that was backed up gets the newest record of each peer once.

- our own record changed (a link came, went or changed state): ``{me}`` to every link;
- a neighbour's message improved our view: the improved peers to every other link,
  except that a neighbour does not get a record whose owner lists it as a link
  (``RelayedTopology.for_neighbour``): the owner sends each new version of its record
  to all its links itself, so relaying it there only repeats it. In a full mesh of N
  that turns each record change from about N^2 messages of O(N) bytes into N (without
  it 50 routers had no full routes after 120 s: bench/results/scale/). A neighbour
  that lost the owner's message lost its link with it and gets everything again on
  the next link (and at anti-entropy);
- a new link and anti-entropy: every peer (the router asks ``gossip()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sleeve.mesh import LinkInfo, Mesh, encode_chunked
from sleeve.proto.gossip import Gossip, GossipData, GossipRefused

OWN_RECORD_INTERVAL = 1.0  # s between publications of our record for gained links

# A neighbour's (uid, Ed25519 key) as its handshake proved them; None: no such link.
Neighbour = Callable[[bytes], tuple[int, bytes] | None]


class TopologyData:
    __slots__ = ("_mesh", "peers")

    def __init__(self, mesh: Mesh, peers: set[bytes]) -> None:
        self._mesh = mesh
        self.peers = peers

    def encode(self) -> list[bytes]:
        topo = self._mesh.topology
        recs = [r for r in (topo.get(p) for p in sorted(self.peers)) if r is not None]
        return encode_chunked(recs)

    def merge(self, other: GossipData) -> GossipData:
        if isinstance(other, TopologyData):
            self.peers |= other.peers
            return self
        raise TypeError("topology gossip merges only with topology gossip")


class RelayedTopology(TopologyData):
    """A delta to pass on: each neighbour gets the records whose owners do not list it."""

    __slots__ = ()

    def for_neighbour(self, peer: bytes) -> GossipData | None:
        topo = self._mesh.topology
        need = set()
        for p in self.peers:
            r = topo.get(p)
            if r is not None and p != peer and all(c.peer != peer for c in r.conns):
                need.add(p)
        # a plain TopologyData: merged with what waits for the link, sent as it is
        return TopologyData(self._mesh, need) if need else None


class TopologyChannel:
    def __init__(self, mesh: Mesh, neighbour: Neighbour) -> None:
        self.mesh = mesh
        self._neighbour = neighbour
        self.gossip_handle: Gossip | None = None  # set once registered
        self._published: dict[bytes, bool] = {}  # peer -> established, as last published
        self._next_gain = 0.0

    def sync_links(self, links: Iterable[LinkInfo], now: float) -> None:
        """Publish our links in our record; gossip it if it changed.

        A lost link (gone, or no longer established) is published at once: the mesh
        must route around it. Gains (a new or newly established link) are published at
        most once per ``OWN_RECORD_INTERVAL``: each publication is a record of O(links)
        bytes to every link, verified and merged by every peer, and a router joining a
        mesh of N gains 2N link states within seconds. The node calls this every tick,
        so a held-back gain goes out within the interval.
        """
        links = list(links)
        cur = {li.peer: li.established for li in links}
        lost = any(est and not cur.get(p, False) for p, est in self._published.items())
        if not lost and now < self._next_gain:
            return
        if self.mesh.set_links(links) is not None:
            self._next_gain = now + OWN_RECORD_INTERVAL
            if self.gossip_handle is not None:
                self.gossip_handle.neighbours(TopologyData(self.mesh, {self.mesh.me}))
        self._published = cur

    # -- Gossiper -------------------------------------------------------------------------
    def gossip(self) -> GossipData | None:
        return TopologyData(self.mesh, self.mesh.topology.peers())

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        who = self._neighbour(src)
        if who is None:
            raise GossipRefused("gossip_undecodable", "gossip from a peer with no link")
        delta, outcome = self.mesh.merge(src, who[0], who[1], msg)
        if outcome != "ok":
            raise GossipRefused(outcome)
        if not delta:
            return None
        return RelayedTopology(self.mesh, {r.peer for r in delta})

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool:
        raise GossipRefused("not_broadcast", "the topology travels by gossip only")

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None:
        raise GossipRefused("not_unicast", "the topology travels by gossip only")

    def peer_gone(self, peer: bytes) -> None:
        pass  # the topology is where "gone" is decided (Mesh.gc)
