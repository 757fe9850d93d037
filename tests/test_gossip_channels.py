"""Gossip channels on real nodes in one process (memory ports, loopback TCP/UDP, no root).

A test channel, a grow-only set of items, is registered on every node of a 5-node
chain before it starts; the router carries it over the real control connections:
gossip converges, a partition keeps each side converging on its own, healing merges
both, broadcasts and unicasts reach their peers with an authenticated origin, and the
size bound drops (and counts) an oversized message.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import tempfile
from collections.abc import AsyncIterator

import msgpack

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.gossip.router import ChannelGossip
from sleeve.node import Node
from sleeve.proto.gossip import GossipData, GossipRefused
from tests.test_node_inproc import PSK, wait_for

MAX_MSG = 4096


class Items:
    """GossipData: a set of items; merge is a union (what waits for a slow link)."""

    def __init__(self, items: set[bytes]) -> None:
        self.items = items

    def encode(self) -> list[bytes]:
        return [msgpack.packb(sorted(self.items))]

    def merge(self, other: GossipData) -> GossipData:
        assert isinstance(other, Items)
        self.items |= other.items
        return self


class SetChannel:
    """A grow-only set gossiped between peers; remembers who broadcast/unicast what."""

    def __init__(self) -> None:
        self.items: set[bytes] = set()
        self.handle: ChannelGossip | None = None
        self.broadcasts: list[tuple[bytes, bytes]] = []
        self.unicasts: list[tuple[bytes, bytes]] = []
        self.gone: list[bytes] = []

    def add(self, item: bytes) -> None:
        self.items.add(item)
        assert self.handle is not None
        self.handle.neighbours(Items({item}))

    def gossip(self) -> GossipData | None:
        return Items(set(self.items)) if self.items else None

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        try:
            got = msgpack.unpackb(msg)
        except Exception:
            raise GossipRefused("undecodable") from None
        if not isinstance(got, list) or not all(isinstance(x, bytes) for x in got):
            raise GossipRefused("undecodable")
        new = set(got) - self.items
        self.items |= new
        return Items(new) if new else None

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool:
        self.broadcasts.append((origin, msg))
        return True

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None:
        self.unicasts.append((src, msg))

    def peer_gone(self, peer: bytes) -> None:
        self.gone.append(peer)


Net = list[tuple[Node, SetChannel]]


@contextlib.asynccontextmanager
async def chain(n: int) -> AsyncIterator[Net]:
    """n nodes in a chain 0 - 1 - ... - n-1 (node i dials i-1), no discovery."""
    nodes: Net = []
    tasks = []
    try:
        for i in range(n):
            peers = (Target("127.0.0.1", nodes[i - 1][0].udp_port),) if i else ()
            cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None,
                         discovery=False,
                         state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
            node = Node(cfg, MemoryPort(), static=KeyPair.generate())
            ch = SetChannel()
            ch.handle = node.gossip.register("test", ch, max_msg=MAX_MSG)  # before start
            nodes.append((node, ch))
            tasks.append(asyncio.create_task(node.run()))
            await wait_for(lambda node=node: node.udp is not None)
        ids = {nd.id for nd, _ in nodes}
        await wait_for(lambda: all(set(nd.mesh.routes.unicast()) == ids - {nd.id}
                                   for nd, _ in nodes), 15)
        yield nodes
    finally:
        for node, _ in nodes:
            node.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


def converged(net: Net, want: set[bytes]) -> bool:
    return all(ch.items == want for _, ch in net)


def cut(left: Node, right: Node) -> None:
    """Partition: ``right`` stops dialling ``left`` and both drop their link."""
    for ts in right.targets.values():
        ts.dead = True
    for a, b in ((left, right), (right, left)):
        link = a.links.get(b.id)
        if link is not None:
            link.writer.close()


def heal(left: Node, right: Node) -> None:
    for ts in right.targets.values():
        ts.dead = False
        ts.next_try = 0.0


def test_channel_converges_survives_a_partition_and_heals() -> None:
    async def run() -> None:
        async with chain(5) as net:
            for i, (_, ch) in enumerate(net):
                ch.add(b"item-%d" % i)
            everything = {b"item-%d" % i for i in range(5)}
            await wait_for(lambda: converged(net, everything), 5)
            # partition {0, 1} | {2, 3, 4}: each side keeps gossiping within itself
            (n1, _), (n2, _) = net[1], net[2]
            cut(n1, n2)
            await wait_for(lambda: n2.id not in n1.links and n1.id not in n2.links, 5)
            net[0][1].add(b"left")
            net[4][1].add(b"right")
            await wait_for(lambda: all(b"left" in ch.items for _, ch in net[:2])
                           and all(b"right" in ch.items for _, ch in net[2:]), 5)
            await asyncio.sleep(0.5)
            assert not any(b"left" in ch.items for _, ch in net[2:])
            assert not any(b"right" in ch.items for _, ch in net[:2])
            # heal: the new link exchanges full state and the deltas spread both ways
            heal(n1, n2)
            await wait_for(lambda: converged(net, everything | {b"left", b"right"}), 10)
            stats = net[0][0].gossip.status()["test"]
            assert stats["tx_msgs"] > 0 and stats["rx_msgs"] > 0 and stats["updates"] > 0

    asyncio.run(run())


def test_broadcast_and_unicast_reach_their_peers_with_an_authenticated_origin() -> None:
    async def run() -> None:
        async with chain(5) as net:
            (a, cha), (e, che) = net[0], net[4]
            assert a.gossip.channels["test"].gossiper is cha
            # a broadcast from one end reaches every other peer once, origin = sender
            assert cha.handle is not None and che.handle is not None
            cha.handle.broadcast(b"hello all")
            await wait_for(lambda: all(ch.broadcasts for _, ch in net[1:]), 5)
            await asyncio.sleep(0.3)
            for _, ch in net[1:]:
                assert ch.broadcasts == [(a.id, b"hello all")]
            assert cha.broadcasts == []
            # a unicast crosses three relays to the far end; the reply comes back
            assert che.handle.unicast(a.id, b"ping")
            await wait_for(lambda: cha.unicasts == [(e.id, b"ping")], 5)
            assert cha.handle.unicast(e.id, b"pong")
            await wait_for(lambda: che.unicasts == [(a.id, b"pong")], 5)
            assert all(not ch.unicasts for _, ch in net[1:4])
            assert net[2][0].stats["gossip_relayed_unicasts"] >= 2
            # no route: unicast says so
            assert not cha.handle.unicast(b"\x01" * 8, b"nobody")

    asyncio.run(run())


def test_forged_replayed_and_oversized_messages_are_dropped_and_counted() -> None:
    async def run() -> None:
        async with chain(3) as net:
            (a, cha), (b, chb), (c, chc) = net
            link = b.links[a.id]
            # oversized gossip: dropped whole, counted per channel and in drops
            big = msgpack.packb([b"x" * MAX_MSG])
            b.conns.on_control(link, {"t": "g", "c": "test", "k": "g", "r": big})
            assert b.drops["gossip_test_too_large"] == 1
            assert b.gossip.status()["test"]["drops"] == {"too_large": 1}
            assert b"x" * MAX_MSG not in chb.items
            # our own oversized gossip is never sent (it would be refused)
            chb.add(b"y" * MAX_MSG)
            assert b.drops["gossip_test_tx_too_large"] >= 1
            # capture a genuine broadcast from a, then replay it: refused
            sent: list[dict[str, object]] = []
            lc = b.links[c.id]  # what b sends to c
            real = lc.send_control
            lc.send_control = lambda m: (sent.append(m), real(m))[1]  # type: ignore[method-assign]
            assert cha.handle is not None
            cha.handle.broadcast(b"once")
            await wait_for(lambda: len(chc.broadcasts) == 1, 5)
            lc.send_control = real  # type: ignore[method-assign]
            # b passed it on verbatim to c; feed that copy to b again: a replay
            fwd = [m for m in sent if m.get("k") == "b"]
            assert fwd
            b.conns.on_control(link, dict(fwd[0]))
            assert b.drops["gossip_replayed"] == 1 and len(chb.broadcasts) == 1
            # a forged origin: c's id on a message signed by a's key
            forged = {**fwd[0], "o": c.id, "u": c.uid, "n": 99}
            b.conns.on_control(link, forged)
            assert b.drops["gossip_bad_signature"] == 1
            b.conns.on_control(link, {**fwd[0], "u": a.uid + 1, "n": 100})  # old incarnation
            assert b.drops["gossip_stale_incarnation"] == 1
            assert len(chb.broadcasts) == 1
            # unknown channel gossip is dropped; garbage envelopes too
            b.conns.on_control(link, {"t": "g", "c": "nope", "k": "g", "r": b""})
            b.conns.on_control(link, {"t": "g", "c": 5, "k": "z"})
            assert b.drops["gossip_unknown_channel"] == 1
            assert b.drops["gossip_bad_envelope"] == 1

    asyncio.run(run())


def test_channel_names_are_checked_and_unique() -> None:
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", http=None,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    node = Node(cfg, MemoryPort(), static=KeyPair.generate())
    node.gossip.register("scope", SetChannel())
    for bad in ("scope", "ipam", "dns", "topology", "Bad", "", "x" * 40):
        with contextlib.suppress(ValueError):
            node.gossip.register(bad, SetChannel())
            raise AssertionError(f"{bad!r} was accepted")
