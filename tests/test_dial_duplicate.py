"""A dial that ends as a duplicate still tells the dialler who the target is.

Of two connections between the same pair, the one dialled by the smaller id stays; the
larger id's dial to a peer it is already linked with ends "duplicate" after a full
handshake. The target used to keep no peer, so the dialler redialled it every backoff
(2 s x 1.5, up to 60 s) for as long as the link lasted: in a 50-router lab, idle routers
kept shaking hands with their initial peers and their ticker at 4 Hz (issue 23).
"""

from __future__ import annotations

import asyncio

from sleeve.config import Target
from tests.test_node_inproc import make, wait_for


def test_a_duplicate_dial_remembers_the_peer_and_is_not_repeated() -> None:
    async def body() -> None:
        x, _ = make()
        y, _ = make()
        tasks = [asyncio.create_task(n.run()) for n in (x, y)]
        try:
            await wait_for(lambda: x.udp is not None and y.udp is not None)
            small, large = sorted((x, y), key=lambda n: n.id)
            small.add_target(Target("127.0.0.1", large.udp_port))
            await wait_for(lambda: large.id in small.links and small.id in large.links)
            t = Target("127.0.0.1", small.udp_port)
            large.add_target(t)  # loses to small's connection: "duplicate"
            ts = large.dialler.targets[t]
            await wait_for(lambda: ts.last_error == "duplicate", timeout=10)
            assert ts.peer == small.id
            link = large.links[small.id]
            await asyncio.sleep(4.0)  # past the first backoff (1-3 s): no second dial
            assert ts.attempts == 1 and not ts.connecting
            assert large.links[small.id] is link
        finally:
            for n in (x, y):
                n.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(body())
