"""Many allocators on the in-process gossip fabric: the harness for tests and the bench.

Ships with the code (like the fabric) so that tests, the bench and a curious user all
drive the same thing. No sockets, no clock: ``now`` advances only in ``advance``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable

from sleeve.gossip.fabric import Fabric
from sleeve.ipam.allocator import Allocator
from sleeve.ipam.consensus import Init


def peer_id(i: int) -> bytes:
    return i.to_bytes(8, "big")


class Sim:
    def __init__(self, rng_seed: int = 0, alloc_range: str = "198.19.0.0/20") -> None:
        self.fabric = Fabric()
        self.alloc_range = alloc_range
        self.rng = random.Random(rng_seed)
        self.peers: dict[bytes, Allocator] = {}
        self.now = 0.0

    def add(self, p: bytes, init: Init, connect: bool = True) -> Allocator:
        g = self.fabric.add(p)
        a = Allocator(p, init, alloc_range=self.alloc_range,
                      rng=random.Random(self.rng.getrandbits(64)))
        self.fabric.attach(p, a)
        a.attach(g, self.now)
        self.peers[p] = a
        if connect:
            for q in sorted(self.peers):
                if q != p and q in self.fabric.peers:
                    self.fabric.connect(p, q)
        return a

    def run(self) -> int:
        return self.fabric.run()

    def advance(self, dt: float) -> None:
        """Move time on and fire every allocator's timer that is due (then deliver)."""
        end = self.now + dt
        while True:
            due = [(d, p) for p, a in self.peers.items()
                   if (d := a.next_deadline()) is not None and d <= end]
            if not due:
                break
            d, _ = min(due)
            self.now = self.fabric.now = max(self.now, d)
            for _p, a in sorted(self.peers.items()):
                nd = a.next_deadline()
                if nd is not None and nd <= self.now:
                    a.tick(self.now)
            self.run()
        self.now = self.fabric.now = end

    def kill(self, p: bytes) -> Allocator:
        self.fabric.remove(p)
        return self.peers.pop(p)

    def rings_equal(self, peers: Iterable[bytes] | None = None) -> bool:
        ps = list(self.peers if peers is None else peers)
        first = self.peers[ps[0]].ring
        return all(self.peers[p].ring.entries == first.entries for p in ps[1:])

    def converge(self, max_rounds: int = 50) -> int:
        """Anti-entropy rounds (after reporting free counts) until every ring is equal."""
        for a in self.peers.values():
            if a._free_dirty:
                a._report_free()
        self.run()
        for rounds in range(max_rounds + 1):
            if self.rings_equal():
                return rounds
            self.fabric.anti_entropy()
            self.run()
        raise AssertionError(f"rings did not converge in {max_rounds} rounds")

    def allocations(self) -> dict[int, tuple[bytes, str]]:
        """Every live allocation: address -> (peer, id); raises on a duplicate address."""
        out: dict[int, tuple[bytes, str]] = {}
        for p, a in self.peers.items():
            for addr, (owner_id, _net) in a.addrs.items():
                assert addr not in out, f"address {addr} allocated by {out[addr]} and {p.hex()}"
                out[addr] = (p, owner_id)
        return out

    def claims(self) -> list[tuple[int, int, bytes]]:
        """Each live peer's own view of what it owns; raises when two peers claim one address."""
        spans = sorted((t, n, p) for p, a in self.peers.items() for t, n, _e in a.ring.owned())
        for (_t1, n1, p1), (t2, _n2, p2) in itertools.pairwise(spans):
            assert n1 <= t2, f"{p1.hex()} and {p2.hex()} both claim address {t2}"
        return spans

    def check(self, extra: Callable[[Allocator], None] | None = None) -> None:
        for a in self.peers.values():
            a.check()
            if extra is not None:
                extra(a)
        self.allocations()
        self.claims()
