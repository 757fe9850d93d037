"""A forced routing loop: relayed frames are dropped by their hop limit, and counted.

Two nodes whose routes to a third peer point at each other (the mesh would never
compute that; the test forces it), the way a stale route could while topology gossip
is still on its way. The frame bounces, each relay takes one off its hop limit, and
at zero it is dropped as ``hop_limit`` instead of circling for ever.
"""

from __future__ import annotations

import asyncio
import time

from sleeve.capture.memory import MemoryPort
from sleeve.crypto.keys import Signer
from sleeve.node import Node
from sleeve.proto import datagram as dg
from tests.test_node_inproc import MAC_A, established, frame, pair, wait_for

_GHOST = Signer(b"\x99" * 32)  # a peer nobody has: the loop's destination
GHOST = _GHOST.peer_id
MAC_GHOST = bytes.fromhex("020000000099")


def test_a_routing_loop_ends_at_the_hop_limit_and_is_counted() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        await wait_for(lambda: established(a) and established(b))
        for n, other in ((a, b), (b, a)):
            # egress reads its routes for our own frames and, via towards(), for relays
            n.egress.routes = _Routes(n.mesh.routes, other.id)  # type: ignore[assignment]
        # A knows GHOST's key (as from a topology record), so it can seal the frame for it
        ident = a.origin._ident
        a.origin._ident = lambda p: (_GHOST.public, 1) if p == GHOST else ident(p)
        a.macs.learn_remote(MAC_GHOST, GHOST, time.monotonic())
        pa.inject(frame(MAC_GHOST, MAC_A, b"round and round"))
        await wait_for(lambda: a.drops["hop_limit"] + b.drops["hop_limit"] == 1)
        relays = a.stats["relayed_frames"] + b.stats["relayed_frames"]
        assert relays == dg.MAX_HOPS  # 15 relays, then the drop
        await asyncio.sleep(0.3)
        assert a.drops["hop_limit"] + b.drops["hop_limit"] == 1  # and nothing after
        assert not pb.delivered or all(f[:6] != MAC_GHOST for f in pb.delivered)

    asyncio.run(pair(body))


class _Routes:
    """A node's routes with the route to GHOST forced through ``via``."""

    def __init__(self, real: object, via: bytes) -> None:
        self.real = real
        self.via = via

    def next_hop(self, dest: bytes) -> bytes | None:
        if dest == GHOST:
            return self.via
        return self.real.next_hop(dest)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)
