"""Topology anti-entropy by digest (proto.topodigest, gossip.topology), on the gossip fabric.

A new link or an anti-entropy round sends digests (32 bytes per record), and only the
records one side lacks travel; a peer that missed an update pulls it from the next
digest it hears; a restarted peer with many new links fetches each record once; what
an answer teaches a peer goes on as digest entries, not records; malformed digests and
wants are refused with their own reasons.
"""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from sleeve.crypto.keys import Signer
from sleeve.gossip.fabric import Fabric
from sleeve.gossip.topology import WANT_TIMEOUT, TopologyChannel
from sleeve.mesh import LinkInfo, Mesh
from sleeve.proto.gossip import GossipRefused
from sleeve.proto.topodigest import (
    ANSWER_RECORDS,
    DIGEST,
    ENTRY,
    WANT,
    decode_digest,
    decode_want,
    encode_digest,
    encode_want,
    kind_of,
)
from sleeve.proto.topology import FORMAT, MAX_VERSION, TopologyDecodeError, decode_records


def signer(i: int) -> Signer:
    return Signer(hashlib.blake2b(b"digest-test" + bytes([i]), digest_size=32).digest())


class Net:
    """``n`` peers, each a Mesh + TopologyChannel on one fabric; every message is kept."""

    def __init__(self, n: int) -> None:
        self.f = Fabric()
        self.signers = [signer(i) for i in range(n)]
        self.meshes: dict[bytes, Mesh] = {}
        self.channels: dict[bytes, TopologyChannel] = {}
        self.log: list[tuple[bytes, bytes, bytes]] = []  # (src, dst, message)
        self.t = 1000.0
        for i, s in enumerate(self.signers):
            self.add(s, i + 1)

    def add(self, s: Signer, uid: int) -> bytes:
        p = s.peer_id
        mesh = Mesh(s, f"p{uid}", uid)
        ch = TopologyChannel(mesh, self._neighbour)
        ch.gossip_handle = self.f.add(p)  # type: ignore[assignment]
        self.f.attach(p, ch)
        self.meshes[p], self.channels[p] = mesh, ch
        return p

    def _neighbour(self, p: bytes) -> tuple[int, bytes] | None:
        m = self.meshes.get(p)
        return None if m is None else (m.topology.own.uid, m.topology.own.key)

    @property
    def peers(self) -> list[bytes]:
        return [s.peer_id for s in self.signers]

    def publish(self, p: bytes) -> None:
        """p's record lists its fabric neighbours; pushed to them as news."""
        nbrs = sorted(self.f.peers[p].neighbours)
        self.t += 2.0  # past OWN_RECORD_INTERVAL: gains are published too
        self.channels[p].sync_links(
            [LinkInfo(q, f"198.18.0.{self.peers.index(q) + 1}:6783", True, True)
             for q in nbrs if q in self.peers], self.t)

    def run(self) -> None:
        # record every delivered message: drain one at a time
        q = self.f.queue
        steps = 0
        while q and steps < 100_000:
            kind, src, dst, msg = q[0]
            if kind == "g":
                self.log.append((src, dst, msg))
            self.f.run(max_steps=1)
            steps += 1
        assert not q, "gossip did not settle"

    def clear(self) -> None:
        self.log.clear()

    def kinds(self, dst: bytes | None = None) -> list[int]:
        return [kind_of(m) for _s, d, m in self.log if dst is None or d == dst]

    def records_to(self, dst: bytes) -> int:
        return sum(len(decode_records(m, kind_of(m))) for _s, d, m in self.log
                   if d == dst and kind_of(m) in (FORMAT, ANSWER_RECORDS))

    def agreed(self) -> bool:
        views = [sorted((r.peer, r.version, r.uid) for r in m.topology.records())
                 for m in self.meshes.values()]
        return all(v == views[0] for v in views) and len(views[0]) == len(self.meshes)


def full_mesh(n: int) -> Net:
    net = Net(n)
    net.f.connect_all(net.peers)
    for p in net.peers:
        net.publish(p)
    net.run()
    assert net.agreed()
    net.clear()
    return net


def test_digest_and_want_round_trip() -> None:
    net = full_mesh(3)
    recs = net.meshes[net.peers[0]].topology.records()
    (d,) = encode_digest(recs, True)
    entries, answer = decode_digest(d)
    assert answer and [e[0] for e in entries] == sorted(r.peer for r in recs)
    assert all(e[1:3] == (r.version, r.uid) and e[3] == r.sig[:8]
               for e, r in zip(entries, sorted(recs, key=lambda r: r.peer), strict=True))
    assert len(d) < 8 + ENTRY.size * len(recs)  # 32 bytes a record, not the record
    (w,) = encode_want({r.peer for r in recs})
    assert decode_want(w) == {r.peer for r in recs}
    assert kind_of(d) == DIGEST and kind_of(w) == WANT


BAD_DIGESTS = [
    b"\x93\x03",  # truncated
    msgpack.packb([DIGEST, 0, b"x" * 31]),  # a partial entry
    msgpack.packb([DIGEST, 2, b""]),  # unknown flag
    msgpack.packb([DIGEST, 0, ENTRY.pack(b"b" * 8, 1, 1, b"t" * 8)
                   + ENTRY.pack(b"a" * 8, 1, 1, b"t" * 8)]),  # not ascending
    msgpack.packb([DIGEST, 0, ENTRY.pack(b"a" * 8, MAX_VERSION + 1, 1, b"t" * 8)]),
    msgpack.packb([DIGEST, 0, ENTRY.pack(b"a" * 8, 1, 0, b"t" * 8)]),  # uid 0
    msgpack.packb([DIGEST, "0", b""]),
]
BAD_WANTS = [msgpack.packb([WANT, b"1234567"]), msgpack.packb([WANT, [b"12345678"]]),
             msgpack.packb([WANT, b"", b""])]


@pytest.mark.parametrize("msg", BAD_DIGESTS)
def test_malformed_digest_is_refused_with_its_reason(msg: bytes) -> None:
    net = full_mesh(2)
    a, b = net.peers
    with pytest.raises(TopologyDecodeError):
        decode_digest(msg)
    with pytest.raises(GossipRefused) as e:
        net.channels[a].on_gossip(b, msg, 0.0)
    assert e.value.reason == "gossip_bad_digest"


def test_a_message_of_no_known_shape_is_undecodable() -> None:
    net = full_mesh(2)
    a, b = net.peers
    for msg in (msgpack.packb([DIGEST, 0, b"", 1]), b"", b"\x92\xff", msgpack.packb([9, []])):
        with pytest.raises(GossipRefused) as e:
            net.channels[a].on_gossip(b, msg, 0.0)
        assert e.value.reason == "gossip_undecodable"


@pytest.mark.parametrize("msg", BAD_WANTS)
def test_malformed_want_is_refused_with_its_reason(msg: bytes) -> None:
    net = full_mesh(2)
    a, b = net.peers
    with pytest.raises(GossipRefused) as e:
        net.channels[a].on_gossip(b, msg, 0.0)
    assert e.value.reason == "gossip_bad_want"


def test_new_link_between_peers_that_agree_sends_digests_only() -> None:
    n = 12
    net = Net(n)
    ps = net.peers
    # a ring first, so that the chord added afterwards links two peers that already
    # hold the same state
    for i in range(n):
        net.f.connect(ps[i], ps[(i + 1) % n])
    for p in ps:
        net.publish(p)
    net.run()
    assert net.agreed()
    full = sum(len(r.canonical()) for r in net.meshes[ps[0]].topology.records())
    net.clear()
    a, b = ps[0], ps[n // 2]
    net.f.connect(a, b)  # each side sends its digest, as on a new control connection
    net.run()
    assert sorted(net.kinds()) == [DIGEST, DIGEST], net.kinds()
    sent = sum(len(m) for _s, _d, m in net.log)
    assert sent < 2 * (ENTRY.size * n + 16) < full  # not the full state (was 2 x full)


def test_a_peer_that_missed_an_update_catches_up_by_digest() -> None:
    net = full_mesh(6)
    a, b, c = net.peers[:3]
    # a drops its link to c (a loss: published at once); c hears nothing of it: every
    # link to c is blocked while the news spreads
    net.f.blocked.add(frozenset((a, c)))
    net.f.blocked.add(frozenset((b, c)))
    net.f.peers[a].neighbours.discard(c)
    net.f.peers[c].neighbours.discard(a)
    net.publish(a)
    for p in net.peers[3:]:
        net.f.blocked.add(frozenset((p, c)))
    net.run()
    new = net.meshes[a].topology.own
    assert net.meshes[c].topology.get(a) != new  # c missed it
    net.f.blocked.clear()
    net.clear()
    # anti-entropy round from b to c: b's digest shows a's newer record; c asks, b answers
    net.f._send_state(b, c)  # one anti-entropy message, as the router's tick
    net.run()
    assert net.meshes[c].topology.get(a) == new
    assert net.kinds() == [DIGEST, WANT, ANSWER_RECORDS, *net.kinds()[3:]]
    assert net.records_to(c) == 1  # only a's record travelled
    # what c learnt from the answer goes to its neighbours as digest entries, not records
    assert all(k == DIGEST for k in net.kinds()[3:])
    assert net.agreed()


def test_periodic_digest_asks_for_the_receivers_news() -> None:
    net = full_mesh(4)
    a, b, c, d = net.peers
    # b holds a newer record of d than a does (a missed it)
    net.f.blocked.add(frozenset((a, d)))
    net.f.blocked.add(frozenset((a, b)))
    net.f.blocked.add(frozenset((a, c)))
    net.f.peers[d].neighbours.discard(c)
    net.publish(d)
    net.run()
    net.f.blocked.clear()
    assert net.meshes[a].topology.get(d) != net.meshes[b].topology.get(d)
    net.clear()
    net.f.now += WANT_TIMEOUT  # the next anti-entropy round (ANSWER digests: one per window)
    net.f._send_state(a, b)  # a's digest (ANSWER): a is the one behind
    net.run()
    assert net.kinds()[:4] == [DIGEST, DIGEST, WANT, ANSWER_RECORDS], net.kinds()
    assert net.meshes[a].topology.get(d) == net.meshes[b].topology.get(d)


def test_a_restarted_peer_fetches_each_record_once_not_once_per_link() -> None:
    n = 10
    net = full_mesh(n)
    ps = net.peers
    # a new peer (a restart: new key here, same effect) links to 5 peers at once
    r = net.add(signer(99), 99)
    net.signers.append(signer(99))
    for p in ps[:5]:
        net.f.peers[r].neighbours.add(p)
        net.f.peers[p].neighbours.add(r)
    for p in ps[:5]:  # every link's digests are in flight together
        net.f._send_state(r, p)
        net.f._send_state(p, r)
    net.run()
    assert len(net.meshes[r].topology) == n + 1
    assert net.records_to(r) == n, "each record should reach the new peer once"


def test_an_unanswered_want_is_asked_of_another_neighbour_after_the_timeout() -> None:
    net = full_mesh(3)
    a, b, c = net.peers
    fresh = Mesh(signer(50), "fresh", 7)
    ch = TopologyChannel(fresh, lambda p: net._neighbour(p))
    sent: list[tuple[bytes, list[int]]] = []

    class H:
        def reply(self, peer: bytes, data: object) -> None:
            sent.append((peer, [kind_of(m) for m in data.encode()]))  # type: ignore[attr-defined]

    ch.gossip_handle = H()  # type: ignore[assignment]
    (dg,) = encode_digest(net.meshes[a].topology.records(), False)
    ch.on_gossip(a, dg, 100.0)
    ch.on_gossip(b, dg, 101.0)  # the same records, in flight from a: not asked again
    ch.on_gossip(c, dg, 100.0 + WANT_TIMEOUT)
    # a's want timed out: b, which made the identical claim first, is asked at once;
    # c's identical claim waits behind it
    assert sent == [(a, [WANT]), (b, [WANT])]


def test_a_restarted_peer_outbids_its_earlier_incarnation_seen_in_a_digest() -> None:
    net = full_mesh(3)
    a, b, c = net.peers
    old = net.meshes[a].topology.own
    assert old.version >= 1
    net.f.remove(a)
    net.add(net.signers[0], 77)  # same key, new incarnation, version 0
    net.f.connect(a, b)
    net.run()
    mine = net.meshes[a].topology.own
    assert mine.uid == 77 and mine.version > old.version  # fetched, verified, outbid
    for p in (b, c):
        assert net.meshes[p].topology.get(a) == mine


def test_a_relayed_change_travels_as_digest_entries_and_is_fetched_once() -> None:
    # o is linked to x only; x, a, b, c form a full mesh
    net = Net(5)
    o, x, a, b, c = net.peers
    for p, q in ((o, x), (x, a), (x, b), (x, c), (a, b), (a, c), (b, c)):
        net.f.connect(p, q)
    for p in net.peers:
        net.publish(p)
    net.run()
    assert net.agreed()
    net.clear()
    net.t += 2.0  # o's record changes: one more link listed (to a peer nobody knows)
    net.channels[o].sync_links([LinkInfo(x, "198.18.0.2:6783", True, True),
                                LinkInfo(b"\x00" * 8, "198.18.0.99:6783", True, True)], net.t)
    net.run()
    assert net.agreed()
    # a, b and c hear of it from x and from each other, and fetch it once each
    for p in (a, b, c):
        assert net.records_to(p) == 1, (p, net.kinds(p))
    pushed = [(s_, d) for s_, d, m in net.log if kind_of(m) == FORMAT]
    assert pushed == [(o, x)]  # only the owner pushed its record; the rest was pulled


def test_a_want_to_a_neighbour_whose_link_went_is_asked_again_at_once() -> None:
    net = full_mesh(3)
    a, b, _c = net.peers
    fresh = Mesh(signer(51), "fresh", 8)
    ch = TopologyChannel(fresh, net._neighbour)
    sent: list[bytes] = []

    class H:
        def reply(self, peer: bytes, data: object) -> None:
            sent.append(peer)

        def neighbours(self, data: object) -> None:
            pass

    ch.gossip_handle = H()  # type: ignore[assignment]
    (dg,) = encode_digest(net.meshes[a].topology.records(), False)
    ch.sync_links([LinkInfo(a, "198.18.0.1:6783", True, True),
                   LinkInfo(b, "198.18.0.2:6783", True, True)], 100.0)
    ch.on_gossip(a, dg, 100.0)
    ch.sync_links([LinkInfo(b, "198.18.0.2:6783", True, True)], 100.5)  # a's link went
    ch.on_gossip(b, dg, 101.0)  # well within WANT_TIMEOUT: asked of b at once
    assert sent == [a, b]
