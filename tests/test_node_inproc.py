"""Two nodes in one process: memory ports, real UDP/TCP on loopback. Fast, no root."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from sleeve.proto import datagram as dg

PSK = b"k" * 32
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
BCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes, payload: bytes = b"hello") -> bytes:
    return dst + src + b"\x08\x00" + payload


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def make(psk: bytes | None = PSK, peers: tuple[Target, ...] = ()) -> tuple[Node, MemoryPort]:
    port = MemoryPort()
    cfg = Config(psk=psk, port=0, listen="127.0.0.1", peers=peers, http=None,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, port, static=KeyPair.generate()), port


async def pair(body: Callable[[Node, MemoryPort, Node, MemoryPort], Awaitable[None]],
               psk_a: bytes | None = PSK, psk_b: bytes | None = PSK) -> None:
    b, pb = make(psk_b)
    tb = asyncio.create_task(b.run())
    await wait_for(lambda: b.udp is not None and b.port is not None)
    a, pa = make(psk_a, (Target("127.0.0.1", b.udp_port),))
    ta = asyncio.create_task(a.run())
    try:
        await body(a, pa, b, pb)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb), 5)


def established(n: Node) -> bool:
    return any(lk.state == "established" for lk in n.links.values())


def test_frames_cross_both_ways_and_macs_are_learnt() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        await wait_for(lambda: established(a) and established(b))
        pa.inject(frame(BCAST, MAC_A, b"who-has"))
        await wait_for(lambda: len(pb.delivered) == 1)
        assert pb.delivered[0] == frame(BCAST, MAC_A, b"who-has")
        pb.inject(frame(MAC_A, MAC_B, b"is-at"))
        await wait_for(lambda: len(pa.delivered) == 1)
        assert b.macs.lookup(MAC_A, time.monotonic()) == a.id
        assert a.macs.lookup(MAC_B, time.monotonic()) == b.id
        # a frame for a MAC that lives on our own side is never sent out
        pb.inject(frame(MAC_B, bytes.fromhex("020000000003")))
        await wait_for(lambda: b.drops["local_dst"] == 1)
        assert len(pa.delivered) == 1
        # a burst is batched into fewer datagrams than frames
        sent0 = a.links[b.id].stats["tx_packets"]
        for i in range(40):
            pa.inject(frame(MAC_B, MAC_A, bytes([i]) * 100))
        await wait_for(lambda: len(pb.delivered) == 41)
        assert [f[14] for f in list(pb.delivered)[1:]] == list(range(40))
        assert a.links[b.id].stats["tx_packets"] - sent0 < 40

    asyncio.run(pair(body))


def test_unencrypted_mode_delivers_in_clear_but_authenticated() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        await wait_for(lambda: established(a) and established(b))
        pa.inject(frame(BCAST, MAC_A, b"plain-visible"))
        await wait_for(lambda: len(pb.delivered) == 1)
        # a forged datagram naming b's session, with a bad tag, is dropped
        link = b.links[a.id]
        forged = dg.encode_header(link.session.local_index, 999) + \
            dg.frame_record(frame(BCAST, MAC_A, b"forged")) + b"\x00" * 16
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(forged, ("127.0.0.1", b.udp_port))
        s.close()
        await wait_for(lambda: b.drops["auth"] == 1)
        assert len(pb.delivered) == 1

    asyncio.run(pair(body, None, None))


def test_wrong_password_delivers_nothing_and_both_sides_say_why(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        await wait_for(lambda: b.stats["conn_fail_auth_failed"] >= 1)
        await wait_for(lambda: a.stats["conn_fail_rejected"] >= 1)
        pa.inject(frame(BCAST, MAC_A))
        await asyncio.sleep(0.2)
        assert not a.links and not b.links and not pb.delivered

    with caplog.at_level("WARNING", logger="sleeve"):
        asyncio.run(pair(body, PSK, b"z" * 32))
    text = caplog.text
    assert "wrong password" in text
    assert "peer rejected the handshake" in text


def test_encryption_mismatch_is_named() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        await wait_for(lambda: b.stats["conn_fail_encryption_mismatch"] >= 1)
        assert not a.links

    asyncio.run(pair(body, None, PSK))


def test_connecting_to_self_stops_retrying() -> None:
    async def body() -> None:
        n, _ = make()
        t = asyncio.create_task(n.run())
        await wait_for(lambda: n.udp is not None)
        n.add_target(Target("127.0.0.1", n.udp_port))
        await wait_for(lambda: any(ts.dead for ts in n.targets.values()))
        n.stop()
        await asyncio.wait_for(t, 5)

    asyncio.run(body())


def test_data_falls_back_to_tcp_while_the_peer_hears_no_udp() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        assert b.udp is not None
        deaf = b.udp
        drained = 0

        def discard() -> None:  # b's UDP is "firewalled": everything it receives vanishes
            nonlocal drained
            while True:
                try:
                    deaf.recv(65535)
                    drained += 1
                except BlockingIOError:
                    return

        loop = asyncio.get_running_loop()
        loop.remove_reader(deaf.fileno())
        loop.add_reader(deaf.fileno(), discard)
        await wait_for(lambda: established(a) and established(b), 10)
        la, lb = a.links[b.id], b.links[a.id]
        assert la.over_tcp and a.link_status(la)["path"] == "tcp"
        assert not lb.over_tcp  # a hears b's UDP and said so: b keeps sending UDP
        pa.inject(frame(BCAST, MAC_A, b"over tcp"))
        await wait_for(lambda: len(pb.delivered) == 1)
        pb.inject(frame(MAC_A, MAC_B, b"over udp"))
        await wait_for(lambda: len(pa.delivered) == 1)
        assert la.stats["tx_tcp_bytes"] > 0 and lb.stats["rx_tcp_bytes"] > 0
        assert lb.stats["tx_packets"] > 0 and drained > 0
        assert a.stats["tcp_fallbacks"] == 1
        # UDP comes back: b hears a again, says so, and a returns to UDP
        loop.remove_reader(deaf.fileno())
        loop.add_reader(deaf.fileno(), b.underlay.on_readable, deaf, b.ingress)
        await wait_for(lambda: not la.over_tcp, 10)
        assert a.stats["udp_recoveries"] == 1

    asyncio.run(pair(body))
