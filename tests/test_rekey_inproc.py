"""Fresh-DH rekeying between two real nodes in one process (memory ports, loopback UDP
and TCP): frames keep flowing both ways across many exchanges, on one connection."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from sleeve.status.metrics import metrics_route
from tests.test_metrics_view import samples
from tests.test_node_inproc import MAC_A, MAC_B, PSK, established, frame, wait_for


def make(peers: tuple[Target, ...] = ()) -> tuple[Node, MemoryPort]:
    port = MemoryPort()
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None,
                 rekey_seconds=0.2,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, port, static=KeyPair.generate()), port


def test_frames_flow_both_ways_across_many_exchanges() -> None:
    async def run() -> None:
        b, pb = make()
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None and b.port is not None)
        a, pa = make((Target("127.0.0.1", b.udp_port),))
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: established(a) and established(b))
            la, lb = a.links[b.id], b.links[a.id]
            n = 200
            for i in range(n):  # 4 s: frames both ways every 20 ms
                pa.inject(frame(MAC_B, MAC_A, i.to_bytes(2, "big")))
                pb.inject(frame(MAC_A, MAC_B, i.to_bytes(2, "big")))
                await asyncio.sleep(0.02)
            await wait_for(lambda: len(pb.delivered) >= n and len(pa.delivered) >= n)
            assert [f[14:16] for f in pb.delivered] == [i.to_bytes(2, "big") for i in range(n)]
            assert [f[14:16] for f in pa.delivered] == [i.to_bytes(2, "big") for i in range(n)]
            assert la.rekey.exchanges >= 5 and lb.rekey.exchanges >= 5
            assert la.rekey.exchanges - lb.rekey.exchanges in (-1, 0, 1)
            assert a.links[b.id] is la and b.links[a.id] is lb  # the same connection
            for node, link in ((a, la), (b, lb)):  # what status and /metrics show
                conn = node.status()["connections"][0]
                assert conn["key_exchanges"] == link.rekey.exchanges
                assert conn["rekey"]["generation"] == link.rekey.exchanges
                got = {k[1]: v for k, v in samples(metrics_route(node.status)({})[1]).items()
                       if k[0] == "sleeve_link_key_exchanges_total"}
                assert list(got.values()) == [link.rekey.exchanges], got
            for node in (a, b):
                counters = node.stats.snapshot()
                assert counters.get("handshake_ok") == 1, counters
                assert not any(k.startswith("conn_") for k in counters), counters
                assert not node.drops.snapshot(), node.drops.snapshot()
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    asyncio.run(run())
