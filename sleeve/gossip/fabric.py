"""An in-process gossip fabric: many peers' channels wired together, no sockets, no clock.

The fake that ships with the gossip contract (``sleeve.proto.gossip``): IPAM, DNS and
the test channels run on it with hundreds of peers in one process, with partitions,
and with every byte counted. Delivery is a FIFO queue drained by ``run()``; links are
undirected; a partition is a set of blocked peer pairs. Broadcasts reach every peer
reachable from the origin (each once), unicasts reach the destination when it is
reachable; this models what the real router guarantees, not how it routes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from sleeve.proto.gossip import GossipData, Gossiper, GossipRefused, PerNeighbour

MAX_STEPS = 10_000_000  # run() never loops for ever, whatever a channel does


@dataclass
class _Peer:
    peer: bytes
    gossiper: Gossiper | None = None
    neighbours: set[bytes] = field(default_factory=set)


class FabricGossip:
    """The ``Gossip`` handle one peer's channel gets from the fabric."""

    def __init__(self, fabric: Fabric, peer: bytes) -> None:
        self._f = fabric
        self._me = peer

    def unicast(self, dst: bytes, msg: bytes) -> bool:
        if dst not in self._f.reachable(self._me):
            return False
        self._f.queue.append(("u", self._me, dst, msg))
        return True

    def broadcast(self, msg: bytes) -> None:
        for p in sorted(self._f.reachable(self._me) - {self._me}):
            self._f.queue.append(("b", self._me, p, msg))

    def neighbours(self, data: GossipData) -> None:
        self._f.to_neighbours(self._me, data, exclude=None)

    def reply(self, peer: bytes, data: GossipData) -> None:
        if peer in self._f.peers[self._me].neighbours and self._f.up(self._me, peer):
            for m in data.encode():
                self._f.queue.append(("g", self._me, peer, m))


class Fabric:
    def __init__(self) -> None:
        self.peers: dict[bytes, _Peer] = {}
        self.blocked: set[frozenset[bytes]] = set()
        self.queue: collections.deque[tuple[str, bytes, bytes, bytes]] = collections.deque()
        self.now = 0.0
        self.bytes_sent = 0
        self.msgs_sent = 0
        self.refused: collections.Counter[str] = collections.Counter()

    # -- building -----------------------------------------------------------------------
    def add(self, peer: bytes) -> FabricGossip:
        """A peer with no channel yet; attach one with ``attach`` (register before start)."""
        self.peers.setdefault(peer, _Peer(peer))
        return FabricGossip(self, peer)

    def attach(self, peer: bytes, gossiper: Gossiper) -> None:
        self.peers[peer].gossiper = gossiper

    def connect(self, a: bytes, b: bytes) -> None:
        """A link between a and b; like a new control connection, each sends its full state."""
        self.peers[a].neighbours.add(b)
        self.peers[b].neighbours.add(a)
        for x, y in ((a, b), (b, a)):
            self._send_state(x, y)

    def connect_all(self, peers: Iterable[bytes] | None = None) -> None:
        ps = sorted(self.peers if peers is None else peers)
        for i, a in enumerate(ps):
            for b in ps[i + 1:]:
                if b not in self.peers[a].neighbours:
                    self.connect(a, b)

    def remove(self, peer: bytes) -> None:
        """The peer is gone for good (its process died); the others are told peer_gone."""
        p = self.peers.pop(peer)
        for n in p.neighbours:
            if n in self.peers:
                self.peers[n].neighbours.discard(peer)
        for q in self.peers.values():
            if q.gossiper is not None:
                q.gossiper.peer_gone(peer)

    # -- partitions ----------------------------------------------------------------------
    def partition(self, side: Iterable[bytes]) -> None:
        s = set(side)
        for a in s:
            for b in self.peers:
                if b not in s:
                    self.blocked.add(frozenset((a, b)))

    def heal(self) -> None:
        """Lift every partition; links that come back exchange full state, as reconnects do."""
        was, self.blocked = self.blocked, set()
        for pair in was:
            a, b = tuple(pair)
            if a in self.peers and b in self.peers and b in self.peers[a].neighbours:
                self._send_state(a, b)
                self._send_state(b, a)

    def up(self, a: bytes, b: bytes) -> bool:
        return frozenset((a, b)) not in self.blocked

    def reachable(self, start: bytes) -> set[bytes]:
        seen = {start}
        todo = [start]
        while todo:
            p = todo.pop()
            for n in self.peers[p].neighbours:
                if n not in seen and self.up(p, n):
                    seen.add(n)
                    todo.append(n)
        return seen

    # -- delivery ------------------------------------------------------------------------
    def to_neighbours(self, src: bytes, data: GossipData, exclude: bytes | None) -> None:
        per = data if isinstance(data, PerNeighbour) else None  # as the router does
        msgs = data.encode() if per is None else []
        for n in sorted(self.peers[src].neighbours):
            if n != exclude and self.up(src, n):
                if per is not None:
                    d = per.for_neighbour(n)
                    msgs = [] if d is None else d.encode()
                for m in msgs:
                    self.queue.append(("g", src, n, m))

    def anti_entropy(self) -> None:
        """Every peer sends its complete state to every neighbour (one periodic round)."""
        for p in sorted(self.peers):
            for n in sorted(self.peers[p].neighbours):
                if self.up(p, n):
                    self._send_state(p, n)

    def _send_state(self, src: bytes, dst: bytes) -> None:
        g = self.peers[src].gossiper
        data = None if g is None else g.gossip()
        if data is not None and self.up(src, dst):
            for m in data.encode():
                self.queue.append(("g", src, dst, m))

    def run(self, max_steps: int = MAX_STEPS) -> int:
        """Deliver until the queue is empty; returns the number of messages delivered."""
        n = 0
        while self.queue and n < max_steps:
            kind, src, dst, msg = self.queue.popleft()
            n += 1
            target = self.peers.get(dst)
            if target is None or target.gossiper is None:
                continue
            if kind == "g" and not self.up(src, dst):
                continue  # cut while in flight
            self.msgs_sent += 1
            self.bytes_sent += len(msg)
            try:
                if kind == "g":
                    delta = target.gossiper.on_gossip(src, msg, self.now)
                    if delta is not None:
                        self.to_neighbours(dst, delta, exclude=src)
                elif kind == "b":
                    target.gossiper.on_broadcast(src, msg, self.now)
                else:
                    target.gossiper.on_unicast(src, msg, self.now)
            except GossipRefused as e:
                self.refused[e.reason] += 1
        return n
