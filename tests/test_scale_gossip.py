"""What keeps a full mesh of many routers quiet (issue 23, bench/scale.py), unit-sized:

- a relayed topology delta skips the neighbours the record's owner lists as its links
  (the owner sent it to them itself);
- our own record: gained links are published at most once per OWN_RECORD_INTERVAL,
  lost ones at once;
- anti-entropy: about ANTI_ENTROPY_FANOUT full states per period, however many links;
- discovery candidates are computed once per topology generation;
- of two peers that discover each other, only the smaller id dials at once;
- ``GET /routes`` and the per-link control byte counters bench.scale reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from sleeve.config import Config, Target
from sleeve.control.dialler import DISCOVERED_DEFER, Dialler
from sleeve.crypto.keys import Signer
from sleeve.gossip.router import ANTI_ENTROPY_FANOUT, GossipRouter
from sleeve.gossip.topology import (
    GAIN_FANOUT,
    LOSS_HOLD,
    OWN_RECORD_INTERVAL,
    TopologyChannel,
    TopologyData,
    gain_interval,
)
from sleeve.mesh import ANTI_ENTROPY, LinkInfo, Mesh
from sleeve.node import Node
from sleeve.proto.gossip import PerNeighbour
from sleeve.proto.topology import ConnRecord, Topology, encode_records
from tests.test_node_inproc import established, pair, wait_for


def signer(i: int) -> Signer:
    return Signer(hashlib.blake2b(bytes([i]), digest_size=32).digest())


class Handle:
    """A Gossip handle that records what the channel asked to send to neighbours."""

    def __init__(self) -> None:
        self.sent: list[set[bytes]] = []

    def neighbours(self, data: Any) -> None:
        assert isinstance(data, TopologyData)
        self.sent.append(set(data.peers))


def test_relayed_record_skips_the_owners_own_links() -> None:
    a, b, c, d = (signer(i) for i in range(4))
    # B's record lists A and C as its links; D is not B's neighbour
    tb = Topology(b, "b", 2)
    rec = tb.set_local_connections([ConnRecord(a.peer_id, "198.18.0.1:6783", False, True),
                                    ConnRecord(c.peer_id, "198.18.0.3:6783", True, True)])
    assert rec is not None
    mesh = Mesh(a, "a", 1)
    ch = TopologyChannel(mesh, lambda p: (2, b.public) if p == b.peer_id else None)
    delta = ch.on_gossip(b.peer_id, encode_records([rec]), 0.0)
    assert delta is not None and isinstance(delta, PerNeighbour)
    assert delta.for_neighbour(c.peer_id) is None  # B sent it to C itself
    assert delta.for_neighbour(b.peer_id) is None  # B's own record, back to B
    to_d = delta.for_neighbour(d.peer_id)
    # as a digest entry: D pulls the record if it lacks it
    assert isinstance(to_d, TopologyData) and to_d.digest == {b.peer_id} and not to_d.peers


def test_relayed_record_skips_neighbours_linked_to_its_owner() -> None:
    """A neighbour whose own record lists the owner as an established link gets the
    owner's changes from the owner: no digest entry is relayed to it -- but for the
    first record of a restarted owner, whose earlier incarnation the link may be to."""
    a, b, e, f = signer(0), signer(1), signer(4), signer(5)
    keys = {b.peer_id: (2, b.public), e.peer_id: (5, e.public), f.peer_id: (6, f.public)}
    mesh = Mesh(a, "a", 1)
    ch = TopologyChannel(mesh, lambda p: keys.get(p))
    for s, uid, est in ((e, 5, True), (f, 6, False)):  # E is linked to B; F is dialling it
        t = Topology(s, "x", uid)
        r = t.set_local_connections([ConnRecord(b.peer_id, "198.18.0.2:6783", True, est),
                                     ConnRecord(a.peer_id, "198.18.0.1:6783", True, True)])
        assert r is not None
        ch.on_gossip(s.peer_id, encode_records([r]), 0.0)

    def publish(tb: Topology, n: int, t: float) -> PerNeighbour:
        """B's record listing A and n-1 others; what A passes on."""
        conns = [ConnRecord(a.peer_id, "198.18.0.1:6783", False, True)]
        conns += [ConnRecord(signer(20 + i).peer_id, f"198.18.0.{20 + i}:6783", True, True)
                  for i in range(n - 1)]
        rec = tb.set_local_connections(conns)
        assert rec is not None
        delta = ch.on_gossip(b.peer_id, encode_records([rec]), t)
        assert delta is not None and isinstance(delta, PerNeighbour)
        return delta

    def to(delta: PerNeighbour, n: Signer) -> set[bytes] | None:
        d = delta.for_neighbour(n.peer_id)
        return d.digest if isinstance(d, TopologyData) else None

    tb = Topology(b, "b", 2)  # B, new to A, lists only A
    for k, delta in enumerate((publish(tb, 1, 0.0), publish(tb, 2, 1.0))):
        assert to(delta, e) is None, k  # E has it from B
        assert to(delta, f) == {b.peer_id}, k
    keys[b.peer_id] = (3, b.public)  # B restarts: a new incarnation, known to A by its link
    tb = Topology(b, "b", 3)
    for n in (3, 4):  # past the old versions, as a restarted router outbids its last record
        assert tb.set_local_connections(
            [ConnRecord(signer(40 + n).peer_id, "198.18.0.40:6783", True, True)]) is not None
    first = publish(tb, 1, 2.0)
    assert to(first, e) == to(first, f) == {b.peer_id}  # E's link may be to the old B
    assert to(publish(tb, 2, 3.0), e) is None  # the next one E gets from B again


def test_own_record_gains_wait_losses_do_not() -> None:
    me, x, y = signer(0), signer(1), signer(2)
    mesh = Mesh(me, "me", 1)
    ch = TopologyChannel(mesh, lambda p: None)
    h = Handle()
    ch.gossip_handle = h  # type: ignore[assignment]
    lx = LinkInfo(x.peer_id, "198.18.0.2:6783", True, True)
    ly = LinkInfo(y.peer_id, "198.18.0.3:6783", True, True)
    ch.sync_links([lx], 100.0)
    assert len(h.sent) == 1  # the first change goes out at once
    ch.sync_links([lx, ly], 100.1)
    assert len(h.sent) == 1, "a gain within the interval was published at once"
    ch.sync_links([lx, ly], 100.0 + OWN_RECORD_INTERVAL)
    assert len(h.sent) == 2  # held back, then out with the next call past the interval
    assert {c.peer for c in mesh.topology.own.conns} == {x.peer_id, y.peer_id}
    ch.sync_links([ly], 100.0 + OWN_RECORD_INTERVAL + LOSS_HOLD)
    assert len(h.sent) == 3, "a lost link must be published at once"
    ch.sync_links([LinkInfo(y.peer_id, ly.addr, True, False)],
                  100.0 + OWN_RECORD_INTERVAL + 2 * LOSS_HOLD)
    assert len(h.sent) == 4, "a link no longer established must be published at once"


def _router_with_links(n: int) -> tuple[list[Signer], Mesh, TopologyChannel, Handle,
                                         list[LinkInfo]]:
    """A topology channel recording its publications, and n neighbours' link states."""
    peers = [signer(i) for i in range(1, n + 1)]
    mesh = Mesh(signer(0), "me", 1)
    ch = TopologyChannel(mesh, lambda p: None)
    h = Handle()
    ch.gossip_handle = h  # type: ignore[assignment]
    infos = [LinkInfo(s.peer_id, f"198.18.1.{i}:6783", True, True)
             for i, s in enumerate(peers, start=1)]
    return peers, mesh, ch, h, infos


def test_losses_right_after_a_publication_go_out_together() -> None:
    """Neighbours that stop together are lost one after the other: the first loss goes
    out at once, those within LOSS_HOLD of it together, at the first call past it."""
    peers, mesh, ch, h, infos = _router_with_links(10)
    ch.sync_links(infos, 100.0)
    assert len(h.sent) == 1
    t = 200.0
    ch.sync_links(infos[1:], t)
    assert len(h.sent) == 2, "the first loss waits for nothing"
    for k in range(2, 6):  # four more, 0.05 s apart
        ch.sync_links(infos[k:], t + 0.05 * k)
    assert len(h.sent) == 2
    ch.sync_links(infos[5:], t + LOSS_HOLD)
    assert len(h.sent) == 3
    assert {c.peer for c in mesh.topology.own.conns} == {s.peer_id for s in peers[5:]}


def test_gains_wait_longer_on_a_router_with_many_links() -> None:
    """Past GAIN_FANOUT links the interval grows with them (a 49-link router: 3 s)."""
    assert gain_interval(1) == gain_interval(GAIN_FANOUT) == OWN_RECORD_INTERVAL
    assert gain_interval(49) == OWN_RECORD_INTERVAL * 49 / GAIN_FANOUT
    _, _, ch, h, infos = _router_with_links(49)
    ch.sync_links(infos[:48], 100.0)
    assert len(h.sent) == 1
    ch.sync_links(infos, 100.0 + 2 * OWN_RECORD_INTERVAL)
    assert len(h.sent) == 1, "a gain 2 s after a publication by a 48-link router"
    ch.sync_links(infos, 100.0 + gain_interval(48))
    assert len(h.sent) == 2
    ch.sync_links(infos[1:], 100.0 + gain_interval(48) + LOSS_HOLD)
    assert len(h.sent) == 3, "a lost link must be published at once, whatever the links"


def test_anti_entropy_period_is_stretched_past_fanout_links() -> None:
    def period(n_links: int) -> float:
        r = GossipRouter(b"\x01" * 8, 1, signer(1), [object()] * n_links,  # type: ignore[arg-type]
                         Topology(signer(1), "x", 1), lambda s, e: [], lambda d: None,
                         SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
        return r.anti_entropy_period()

    assert period(1) == ANTI_ENTROPY
    assert period(ANTI_ENTROPY_FANOUT) == ANTI_ENTROPY
    # 49 links: each gets a full state ~49/8 times less often, the router sends ~8 a period
    assert 49 / period(49) * ANTI_ENTROPY == ANTI_ENTROPY_FANOUT


def test_candidates_are_cached_until_the_topology_changes() -> None:
    me, x, y = signer(0), signer(1), signer(2)
    mesh = Mesh(me, "me", 1)
    tx = Topology(x, "x", 5)
    rec = tx.set_local_connections([ConnRecord(y.peer_id, "198.18.0.3:6783", True, True)])
    assert rec is not None
    first = mesh.candidates(6783)
    assert first == {} and mesh.candidates(6783) is first
    mesh.topology.merge([rec])
    now = mesh.candidates(6783)
    assert now is not first and now == {y.peer_id: {Target("198.18.0.3", 6783)}}
    assert mesh.candidates(6783) is now


def test_only_the_smaller_id_dials_a_discovered_peer_at_once() -> None:
    lo, hi = b"\x01" * 8, b"\xff" * 8
    cfg = Config(psk=b"k" * 32, port=6783,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))

    def targets(me: bytes, peer: bytes) -> float:
        conns = SimpleNamespace(ident=SimpleNamespace(me=me), links={})
        d = Dialler(cfg, conns)  # type: ignore[arg-type]
        d.discover({peer}, {peer: {Target("198.18.0.9", 6783)}})
        (ts,) = d.targets.values()
        assert ts.discovered and ts.peer == peer
        return ts.next_try - time.monotonic()

    assert targets(lo, hi) <= 0  # the smaller dials now
    wait = targets(hi, lo)
    assert DISCOVERED_DEFER * 0.9 <= wait <= 1.5 * DISCOVERED_DEFER


def test_routes_view_and_control_byte_counters_on_two_nodes() -> None:
    async def body(a: Node, _pa: object, b: Node, _pb: object) -> None:
        await wait_for(lambda: established(a) and established(b))
        await wait_for(lambda: any(r["usable"] for r in a.routes_view()["routes"]))
        v = a.routes_view()
        assert v["name"] == a.name and v["peers"] == 2 and v["established"] == 1
        assert [r["destination"] for r in v["routes"]] == [b.name]
        (c,) = a.status()["connections"]
        assert c["counters"]["control_tx_msgs"] >= 1  # at least the topology gossip
        assert c["counters"]["control_tx_bytes"] > c["counters"]["control_tx_msgs"]

    asyncio.run(pair(body))
