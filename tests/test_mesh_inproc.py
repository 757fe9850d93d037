"""Meshes of nodes in one process: memory ports, real UDP/TCP on loopback, no root.

These exercise gossip, discovery, relaying and broadcast trees end to end through the
real node; the lab tests (test_lab_mesh.py) do the same across namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import tempfile
import time
from collections.abc import AsyncIterator

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from tests.test_node_inproc import BCAST, PSK, frame, wait_for


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, i])


def make(peers: tuple[Target, ...] = (), discovery: bool = True) -> tuple[Node, MemoryPort]:
    port = MemoryPort()
    cfg = Config(psk=PSK, port=0, listen="127.0.0.1", peers=peers, http=None,
                 discovery=discovery,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, port, static=KeyPair.generate()), port


@contextlib.asynccontextmanager
async def mesh(n: int, edges: list[tuple[int, int]], discovery: bool = True,
               ) -> AsyncIterator[list[tuple[Node, MemoryPort]]]:
    """Start n nodes; node i dials node j for each edge (i, j) with j < i."""
    nodes: list[tuple[Node, MemoryPort]] = []
    tasks = []
    try:
        for i in range(n):
            peers = tuple(Target("127.0.0.1", nodes[j][0].udp_port) for a, j in edges if a == i)
            node, port = make(peers, discovery)
            nodes.append((node, port))
            tasks.append(asyncio.create_task(node.run()))
            await wait_for(lambda node=node: node.udp is not None and node.port is not None)
        yield nodes
    finally:
        for node, _ in nodes:
            node.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


def usable_links(node: Node) -> set[bytes]:
    return {p for p, lk in node.links.items() if lk.usable}


def knows_all(nodes: list[tuple[Node, MemoryPort]]) -> bool:
    ids = {n.id for n, _ in nodes}
    return all(n.mesh.topology.peers() == ids for n, _ in nodes)


def same_view(nodes: list[tuple[Node, MemoryPort]]) -> bool:
    views = [n.mesh.topology.records() for n, _ in nodes]
    return all(v == views[0] for v in views)


def routes_complete(nodes: list[tuple[Node, MemoryPort]]) -> bool:
    ids = {n.id for n, _ in nodes}
    return all(set(n.mesh.routes.unicast()) == ids - {n.id} for n, _ in nodes)


def test_chain_without_discovery_relays_unicast_and_broadcasts_once() -> None:
    async def run() -> None:
        # B is 0; A (1) and C (2) only know B and must not dial each other.
        async with mesh(3, [(1, 0), (2, 0)], discovery=False) as nodes:
            (b, pb), (a, pa), (c, pc) = nodes
            await wait_for(lambda: knows_all(nodes) and routes_complete(nodes), 10)
            assert c.id not in a.links and a.id not in c.links
            assert a.mesh.routes.next_hop(c.id) == b.id
            # A's broadcast reaches B and C exactly once (B passes it down A's tree)
            pa.inject(frame(BCAST, mac(1), b"arp"))
            await wait_for(lambda: len(pb.delivered) == 1 and len(pc.delivered) == 1)
            # C answers A: C learnt A's MAC as A's (not B's) and sends it relayed via B
            pc.inject(frame(mac(1), mac(3), b"reply"))
            await wait_for(lambda: len(pa.delivered) == 1)
            assert pa.delivered[0] == frame(mac(1), mac(3), b"reply")
            assert a.macs.lookup(mac(3), time.monotonic()) == c.id
            assert c.macs.lookup(mac(1), time.monotonic()) == a.id
            assert len(pb.delivered) == 1  # the relay did not deliver C's unicast to B's port
            assert b.stats["relayed_frames"] == 1
            assert b.stats["relayed_broadcasts"] == 1
            # a burst of unicast both ways, all delivered, in order
            for i in range(50):
                pa.inject(frame(mac(3), mac(1), i.to_bytes(2, "big")))
            await wait_for(lambda: len(pc.delivered) == 51)
            assert [f[14:] for f in list(pc.delivered)[1:]] == [i.to_bytes(2, "big")
                                                          for i in range(50)]
            await asyncio.sleep(0.3)
            assert len(pb.delivered) == 1 and len(pa.delivered) == 1
            st = a.status()
            route = {r["destination"]: r for r in st["routes"]}[c.name]
            assert route["via"] == b.name and route["hops"] == 2
            assert {p["peer"] for p in st["peers"]} == {a.name, b.name, c.name}

    asyncio.run(run())


def test_discovery_connects_everyone_given_one_peer() -> None:
    async def run() -> None:
        # a chain 0-1-2-3-4: each node is told only about its predecessor
        async with mesh(5, [(i, i - 1) for i in range(1, 5)]) as nodes:
            ids = {n.id for n, _ in nodes}
            await wait_for(lambda: all(usable_links(n) == ids - {n.id} for n, _ in nodes), 15)
            await wait_for(lambda: routes_complete(nodes) and same_view(nodes), 5)
            # every broadcast reaches every other node exactly once
            for i, (_, port) in enumerate(nodes):
                port.inject(frame(BCAST, mac(i + 1), b"hello"))
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: all(len(p.delivered) >= 4 for _, p in nodes), 5)
            await asyncio.sleep(0.3)
            assert [len(p.delivered) for _, p in nodes] == [4] * 5
            # discovered targets are not remembered as the user's own peers
            assert any(t["discovered"] for n, _ in nodes for t in n.status()["targets"])
            assert all(n.drops["internal_error"] == 0 for n, _ in nodes)

    asyncio.run(run())


def test_departed_peer_is_garbage_collected_and_its_macs_forgotten() -> None:
    async def run() -> None:
        async with mesh(3, [(1, 0), (2, 0)], discovery=False) as nodes:
            (_b, _pb), (a, _pa), (c, pc) = nodes
            await wait_for(lambda: knows_all(nodes) and routes_complete(nodes), 10)
            pc.inject(frame(BCAST, mac(3), b"hi"))
            await wait_for(lambda: a.macs.lookup(mac(3), time.monotonic()) == c.id)
            c.stop()
            await wait_for(lambda: c.id not in a.mesh.topology.peers(), 10)
            assert a.macs.lookup(mac(3), time.monotonic()) is None
            assert c.id not in a.mesh.routes.unicast()

    asyncio.run(run())


def test_gossip_that_lies_about_the_sender_is_refused() -> None:
    async def run() -> None:
        async with mesh(2, [(1, 0)]) as nodes:
            (b, _), (a, _) = nodes
            await wait_for(lambda: knows_all(nodes), 10)
            from dataclasses import replace

            from sleeve.proto.topology import encode_records, sign_record

            link = b.links[a.id]
            assert link.sign_key == a.signer.public  # what a's handshake certified
            forged = sign_record(replace(a.mesh.topology.own, uid=a.uid + 1, version=99),
                                 a.signer)  # even validly signed: not its incarnation
            b.conns.on_control(link, {"t": "topo", "r": encode_records([forged])})
            assert b.drops["gossip_bad_origin"] == 1
            assert b.mesh.topology.get(a.id) != forged
            b.conns.on_control(link, {"t": "topo", "r": b"\xc1garbage"})
            assert b.drops["gossip_undecodable"] == 1

    asyncio.run(run())


def test_insider_cannot_forge_gossip_for_another_peer() -> None:
    async def run() -> None:
        # a chain a - b - c: a is the insider, c the victim, b receives the lies
        async with mesh(3, [(1, 0), (2, 0)], discovery=False) as nodes:
            (b, _), (a, _), (c, _) = nodes
            await wait_for(lambda: knows_all(nodes) and routes_complete(nodes), 10)
            from dataclasses import replace

            from sleeve.proto.topology import ConnRecord, encode_records

            genuine = b.mesh.topology.get(c.id)
            assert genuine is not None
            # c's own record with a connection to a invented in it (c's signature kept),
            # and the same re-signed by a's key
            # (far ahead of c's own version, which may still move on while this runs)
            lie = replace(genuine, version=genuine.version + 1000, conns=tuple(sorted(
                (*genuine.conns, ConnRecord(a.id, "198.18.0.66:6783", True, True)),
                key=lambda x: x.peer)))
            resigned = replace(lie, sig=a.signer.sign(lie.signed_bytes()))
            link = b.links[a.id]
            for n, forged in enumerate((lie, resigned), 1):
                b.conns.on_control(link, {"t": "topo", "r": encode_records([forged])})
                assert b.drops["gossip_bad_signature"] == n
                held = b.mesh.topology.get(c.id)
                assert held is not None and held.version < lie.version
                assert a.id not in {x.peer for x in held.conns}
            # and nothing was forwarded to c (which would have refused a record about
            # itself with a bad signature, rather than outbid it)
            await asyncio.sleep(0.2)
            assert c.drops["gossip_bad_signature"] == 0 and a.drops["gossip_bad_signature"] == 0

    asyncio.run(run())
