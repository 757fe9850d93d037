"""A relay that forges sources and claims MACs, in one process (the lab repeats it).

Chain A - EVIL - C without discovery: A and C only reach each other through EVIL, a
member with the password. After A and C have talked (each learnt the other's MAC),
EVIL runs rounds of ``tests.evil.forge_round``: MAC claims under its own name, relayed
records naming A or C as source without proof or with EVIL's own tag, broadcasts in
their name signed by EVIL, source-only records. Every one is dropped and counted with
its reason at A and C, no forged frame reaches their ports, their MAC tables are
unchanged, and their traffic through EVIL keeps flowing.
"""

from __future__ import annotations

import asyncio
import time

from tests.evil import forge_round
from tests.test_mesh_inproc import knows_all, mac, mesh, routes_complete
from tests.test_node_inproc import BCAST, frame, wait_for


def test_forged_sources_and_mac_claims_are_dropped_and_counted() -> None:
    async def run() -> None:
        async with mesh(3, [(1, 0), (2, 0)], discovery=False) as nodes:
            (evil, _pe), (a, pa), (c, pc) = nodes
            await wait_for(lambda: knows_all(nodes) and routes_complete(nodes), 10)
            assert a.mesh.routes.next_hop(c.id) == evil.id
            pa.inject(frame(BCAST, mac(1), b"arp from a"))
            await wait_for(lambda: len(pc.delivered) == 1)
            pc.inject(frame(BCAST, mac(3), b"arp from c"))  # EVIL learns both MACs
            pc.inject(frame(mac(1), mac(3), b"reply from c"))
            await wait_for(lambda: len(pa.delivered) == 2 and len(pc.delivered) == 1)
            now = time.monotonic()
            assert a.macs.lookup(mac(3), now) == c.id and c.macs.lookup(mac(1), now) == a.id
            sent: dict[str, int] = {}
            for _ in range(5):
                forge_round(evil, sent)
                await asyncio.sleep(0.05)
            assert all(v > 0 for v in sent.values()), sent
            want = {"mac_takeover", "origin_unauthenticated", "origin_forged"}
            try:
                await wait_for(lambda: all(n.drops[r] > 0 for n in (a, c) for r in want), 5)
            except AssertionError:
                raise AssertionError(f"drops: A {a.drops.snapshot()} C {c.drops.snapshot()}, "
                                     f"EVIL sent {sent}") from None
            # honest traffic still flows both ways, through the forging relay
            for i in range(20):
                pa.inject(frame(mac(3), mac(1), b"a%d" % i))
                pc.inject(frame(mac(1), mac(3), b"c%d" % i))
            await wait_for(lambda: len(pc.delivered) == 21 and len(pa.delivered) == 22)
            await asyncio.sleep(0.2)
            now = time.monotonic()
            assert a.macs.lookup(mac(3), now) == c.id and c.macs.lookup(mac(1), now) == a.id
            for port in (pa, pc):
                assert not any(b"evil says" in bytes(f) for f in port.delivered)
            for n in (a, c):
                d = n.drops
                # per round, each victim gets 1 claim and 4 records under the other's name
                assert d["mac_takeover"] == sent["claim"] // 2, (d.snapshot(), sent)
                assert d["origin_unauthenticated"] == (sent["unauth"] + sent["src_only"]) // 2
                assert d["origin_forged"] == (sent["own_tag"] + sent["bcast"]) // 2
                assert d["internal_error"] == 0

    asyncio.run(run())
