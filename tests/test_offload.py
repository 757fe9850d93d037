"""UDP GSO on send and GRO on receive (issue 9), with two nodes on loopback, no root."""

from __future__ import annotations

import asyncio
import errno
import pathlib
import socket
import tempfile
from typing import Any

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from tests.test_node_inproc import MAC_A, MAC_B, PSK, established, frame, wait_for


def make(offload: bool, peers: tuple[Target, ...] = (), vnet: bool = False,
         ) -> tuple[Node, MemoryPort]:
    """A node on loopback; ``vnet``: its port behaves like a TAP with IFF_VNET_HDR."""
    port = MemoryPort(capacity=8192, vnet=vnet)
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None, offload=offload,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, port, static=KeyPair.generate()), port


async def pair(body: Any, offload: bool) -> None:
    b, pb = make(offload)
    tb = asyncio.create_task(b.run())
    await wait_for(lambda: b.udp is not None and b.port is not None)
    a, pa = make(offload, (Target("127.0.0.1", b.udp_port),))
    ta = asyncio.create_task(a.run())
    try:
        await wait_for(lambda: established(a) and established(b))
        if offload:  # GSO only once a GSO run of probes got an ack over the path
            await wait_for(lambda: a.links[b.id].gso_ok, 15)
        await body(a, pa, b, pb)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb), 5)


def burst(pa: MemoryPort, sizes: list[int]) -> list[bytes]:
    frames = [frame(MAC_B, MAC_A, bytes([i % 256]) * (n - 14)) for i, n in enumerate(sizes)]
    for f in frames:
        pa.inject(f)
    return frames


# full frames, full frames with small ones between them (runs end with a short segment),
# and more than one GSO send's worth
SIZES = {
    "full": [1400] * 40,
    "mixed": [1400, 1400, 1400, 90, 1400, 1400, 60, 60, 1400] * 6,
    "many": [1400] * 64 * 3,
}


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
@pytest.mark.parametrize("shape", list(SIZES))
def test_bursts_arrive_whole_and_in_order(offload: bool, shape: str) -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        la, lb = a.links[b.id], b.links[a.id]
        tx0, rx0 = la.stats["tx_packets"], lb.stats["rx_packets"]
        sent = burst(pa, SIZES[shape])
        await wait_for(lambda: len(pb.delivered) == len(sent))
        assert list(pb.delivered) == sent
        await wait_for(lambda: lb.stats["rx_packets"] - rx0 >= la.stats["tx_packets"] - tx0)
        assert lb.stats["rx_packets"] - rx0 == la.stats["tx_packets"] - tx0
        if offload:
            assert la.stats["tx_gso_sends"] > 0
            assert b.stats["rx_gro_reads"] > 0  # loopback hands GSO runs over unsplit
        else:
            assert la.stats["tx_gso_sends"] == 0 and b.stats["rx_gro_reads"] == 0
        assert b.drops.snapshot() == {} or set(b.drops.snapshot()) <= {"unknown_session"}

    asyncio.run(pair(body, offload))


class _NoGso:
    """A UDP socket whose kernel refuses UDP_SEGMENT (as without checksum offload)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.gso_calls = 0

    def sendto(self, data: bytes, addr: Any) -> int:
        return self.real.sendto(data, addr)

    def sendmsg(self, *args: Any) -> int:
        self.gso_calls += 1
        raise OSError(errno.EIO, "Input/output error")

    def getsockname(self) -> Any:  # the router reads its UDP port (traversal's NAT class)
        return self.real.getsockname()


def test_refused_gso_falls_back_to_one_send_per_datagram_and_is_remembered() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        assert a.udp is not None
        fake = _NoGso(a.udp)
        a.underlay.udp = fake  # type: ignore[assignment]
        try:
            sent = burst(pa, [1400] * 20)
            await wait_for(lambda: len(pb.delivered) == 20)
            assert list(pb.delivered) == sent
            assert fake.gso_calls == 1 and fake in a.underlay.gso_off
            sent = burst(pa, [1400] * 20)
            await wait_for(lambda: len(pb.delivered) == 40)
            assert list(pb.delivered)[20:] == sent
            assert fake.gso_calls == 1  # not asked again
        finally:
            a.underlay.udp = fake.real

    asyncio.run(pair(body, True))


class _DropsGsoRuns(_NoGso):
    """A path that silently drops GSO super-packets (a length-matching firewall on a veth)."""

    def sendmsg(self, buffers: list[bytes], *args: Any) -> int:
        self.gso_calls += 1
        return sum(len(b) for b in buffers)


def test_gso_is_used_only_on_a_path_where_a_gso_run_of_probes_got_through() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        assert a.udp is not None
        link = a.links[b.id]
        assert link.gso_ok and link.stats["gso_proven"] == 1
        fake = _DropsGsoRuns(a.udp)
        a.underlay.udp = fake  # type: ignore[assignment]
        try:
            link.gso_path = None  # as if the path changed: GSO off until proven again
            await wait_for(lambda: fake.gso_calls >= 1)  # the proof, silently dropped
            await asyncio.sleep(0.6)
            assert not link.gso_ok
            sent = burst(pa, [1400] * 30)
            await wait_for(lambda: len(pb.delivered) == 30)  # one send per datagram
            assert list(pb.delivered) == sent
            assert fake.gso_calls == 1  # only the proof went as a GSO run
        finally:
            a.underlay.udp = fake.real
        await wait_for(lambda: link.gso_ok, 10)  # the retry over the real socket proves it

    asyncio.run(pair(body, True))
