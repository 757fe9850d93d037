"""Limits that protect a router from floods, checked on real nodes over loopback."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import tempfile

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.control.connections import ACCEPT_BURST, MAX_HANDSHAKES
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from tests.test_node_inproc import PSK, established, wait_for


def make(peers: tuple[Target, ...] = (), conn_limit: int = 200) -> Node:
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None,
                 conn_limit=conn_limit, discovery=False,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, MemoryPort(), static=KeyPair.generate())


def test_connection_limit_refuses_the_extra_peer() -> None:
    async def run() -> None:
        b = make(conn_limit=1)
        tasks = [asyncio.create_task(b.run())]
        await wait_for(lambda: b.udp is not None)
        a1 = make((Target("127.0.0.1", b.udp_port),))
        tasks.append(asyncio.create_task(a1.run()))
        try:
            await wait_for(lambda: established(a1) and established(b), 10)
            a2 = make((Target("127.0.0.1", b.udp_port),))
            tasks.append(asyncio.create_task(a2.run()))
            await wait_for(lambda: b.drops["conn_limit"] >= 1, 10)
            assert len(b.links) == 1 and not a2.links
        finally:
            for n in (b, a1, *([a2] if len(tasks) == 3 else [])):
                n.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(run())


def test_accept_flood_is_rate_limited_and_half_open_handshakes_are_bounded() -> None:
    async def run() -> None:
        b = make()
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None)
        socks: list[socket.socket] = []
        peak = 0
        try:
            # 150 connections that never speak: a half-open handshake flood
            for _ in range(150):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", b.udp_port))
                except BlockingIOError:
                    pass
                socks.append(s)
                await asyncio.sleep(0)
                peak = max(peak, b.conns.handshaking)
            await asyncio.sleep(0.5)
            peak = max(peak, b.conns.handshaking)
            limited = b.drops["accept_rate_limited"] + b.drops["handshake_limit"]
            assert limited >= 150 - ACCEPT_BURST - 5, b.drops.snapshot()
            assert peak <= MAX_HANDSHAKES
            for s in socks:
                s.close()
            # an honest peer still gets in once the bucket refills
            await asyncio.sleep(1.0)
            a = make((Target("127.0.0.1", b.udp_port),))
            ta = asyncio.create_task(a.run())
            try:
                await wait_for(lambda: established(a) and established(b), 15)
            finally:
                a.stop()
                await asyncio.wait_for(ta, 10)
        finally:
            for s in socks:
                s.close()
            b.stop()
            await asyncio.wait_for(tb, 10)

    asyncio.run(run())
