"""Limits that protect a router from floods, checked on real nodes over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import tempfile
import time
from collections.abc import AsyncIterator

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.control.connections import ACCEPT_BURST, MAX_HANDSHAKES
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from sleeve.proto.admission import SOURCE_HANDSHAKES
from tests.test_node_inproc import PSK, established, wait_for


def make(peers: tuple[Target, ...] = (), conn_limit: int = 200) -> Node:
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None,
                 conn_limit=conn_limit, discovery=False,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, MemoryPort(), static=KeyPair.generate())


async def join(b: Node, within: float) -> None:
    """A new node (from 127.0.0.1) dials ``b`` and must be linked within ``within`` s."""
    a = make((Target("127.0.0.1", b.udp_port),))
    ta = asyncio.create_task(a.run())
    try:
        await wait_for(lambda: established(a) and established(b), within)
    finally:
        a.stop()
        await asyncio.wait_for(ta, 10)


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


@contextlib.asynccontextmanager
async def flood_target() -> AsyncIterator[tuple[Node, list[socket.socket]]]:
    """A running node and a list for the flood's sockets; all closed at the end."""
    b = make()
    tb = asyncio.create_task(b.run())
    await wait_for(lambda: b.udp is not None)
    socks: list[socket.socket] = []
    try:
        yield b, socks
    finally:
        for s in socks:
            s.close()
        b.stop()
        await asyncio.wait_for(tb, 10)


def half_open(b: Node, src: str) -> socket.socket:
    """A TCP connection from ``src`` to ``b`` that will never say a word."""
    s = socket.socket()
    s.setblocking(False)
    s.bind((src, 0))
    try:
        s.connect(("127.0.0.1", b.udp_port))
    except BlockingIOError:
        pass
    return s


def test_accept_flood_is_rate_limited_and_half_open_handshakes_are_bounded() -> None:
    async def run() -> None:
        async with flood_target() as (b, socks):
            peak = 0
            # 150 connections that never speak: a half-open handshake flood
            for _ in range(150):
                socks.append(half_open(b, "127.0.0.1"))
                await asyncio.sleep(0)
                peak = max(peak, b.conns.handshaking)
            await asyncio.sleep(0.5)
            peak = max(peak, b.conns.handshaking)
            limited = sum(b.drops[k] for k in ("accept_rate_limited", "handshake_limit",
                                               "source_rate_limited", "source_handshake_limit"))
            assert limited >= 150 - ACCEPT_BURST - 5, b.drops.snapshot()
            assert peak <= MAX_HANDSHAKES
            for s in socks:
                s.close()
            # an honest peer still gets in once the bucket refills
            await asyncio.sleep(1.0)
            await join(b, 15)

    asyncio.run(run())


def test_one_source_of_slow_handshakes_cannot_stop_another_source_joining() -> None:
    """127.0.0.2 opens connections that never finish their handshake; 127.0.0.1 joins."""
    async def run() -> None:
        async with flood_target() as (b, socks):
            for _ in range(100):  # paced inside the global rate: only the source limit helps
                socks.append(half_open(b, "127.0.0.2"))
                await asyncio.sleep(0.01)
            assert b.conns.handshaking <= SOURCE_HANDSHAKES
            assert b.drops["source_rate_limited"] + b.drops["source_handshake_limit"] > 50
            t = time.monotonic()
            await join(b, 5)  # well inside HANDSHAKE_TIMEOUT: no slot had to time out for it
            print(f"joined in {time.monotonic() - t:.2f}s during the slow-handshake flood")
            assert b.conns.handshaking <= SOURCE_HANDSHAKES  # the flood's still hold

    asyncio.run(run())
