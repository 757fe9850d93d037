"""The router's parts one at a time, on fakes (sleeve.links.fake): no sockets, no handshakes.

Each part is driven through its own interface (docs/architecture.md): the link table's
duplicate rule, events and liveness; the dialler's schedule, discovery and memory; the
gossip router's fan-out, backlog merging and bounds; egress classification.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.control.connections import Connections, Identity, TargetState
from sleeve.control.dialler import BACKOFF_MAX, Dialler
from sleeve.crypto.keys import Signer
from sleeve.crypto.noise import KeyPair
from sleeve.forward.egress import Egress
from sleeve.forward.underlay import Underlay
from sleeve.gossip.router import BACKLOG_MAX, GossipRouter
from sleeve.links.fake import fake_link, sent
from sleeve.links.link import UDP_DEAD, Link
from sleeve.links.table import TCP_FALLBACK_AFTER, LinkTable
from sleeve.mesh import Mesh
from sleeve.proto.gossip import Chunks, GossipData, GossipRefused
from sleeve.proto.mactable import MacTable
from sleeve.proto.origin import OriginAuth
from sleeve.proto.stats import Counters

ME = b"\x05" * 8
LOW, HIGH = b"\x01" * 8, b"\x09" * 8


def table() -> tuple[LinkTable, list[str]]:
    t = LinkTable(ME, Counters())
    events: list[str] = []
    t.on_up(lambda lk: events.append(f"up {lk.peer.hex()[:2]} {lk.uid}"))
    t.on_down(lambda lk: events.append(f"down {lk.peer.hex()[:2]} {lk.uid}"))
    return t, events


# ---------------------------------------------------------------- link table
def test_duplicate_connections_resolve_the_same_way_on_both_ends() -> None:
    t, events = table()
    first = fake_link(HIGH, uid=7, outbound=True)
    assert t.register(first)
    # the peer restarted (new uid): the new connection replaces the stale one
    again = fake_link(HIGH, uid=8, outbound=False)
    assert t.register(again) and t.get(HIGH) is again
    assert first.writer.is_closing()
    assert events == ["up 09 7", "down 09 7", "up 09 8"]
    # simultaneous dials, same incarnation: keep the one the smaller id dialled (we are
    # 05 < 09, so ours, the outbound one), on both ends
    ours = fake_link(HIGH, uid=8, outbound=True)
    assert t.register(ours) and t.get(HIGH) is ours
    theirs = fake_link(HIGH, uid=8, outbound=False)
    assert not t.register(theirs) and t.get(HIGH) is ours
    # with a smaller peer id, the peer's dial wins
    low_out = fake_link(LOW, uid=3, outbound=True)
    assert t.register(low_out)
    low_in = fake_link(LOW, uid=3, outbound=False)
    assert t.register(low_in) and t.get(LOW) is low_in
    # a direct connection beats a relayed (hole punching) one, whatever the ids say
    relayed = fake_link(LOW, uid=3, outbound=True, mediator=HIGH)
    assert not t.register(relayed)


def test_only_the_current_link_leaving_is_an_event() -> None:
    t, events = table()
    cur = fake_link(HIGH, uid=1, outbound=True)
    t.register(cur)
    loser = fake_link(HIGH, uid=1, outbound=False)
    assert not t.register(loser)
    t.unregister(loser)  # the losing connection ends: nothing happened to the link
    assert events == ["up 09 1"] and t.get(HIGH) is cur
    assert loser.session.local_index not in t.by_index
    t.unregister(cur)
    assert events[-1] == "down 09 1" and HIGH not in t and not t.by_index


def test_liveness_says_udp_ok_once_then_udp_lost_and_falls_back_to_tcp() -> None:
    t, _ = table()
    link = fake_link(HIGH)
    t.register(link)
    t0 = link.established_at
    t.heard(link, t0 + 0.1)
    t.heard(link, t0 + 0.2)
    assert [m["t"] for m in sent(link)].count("udp_ok") == 1
    t.tick(t0 + 0.3)
    assert not link.over_tcp  # grace: the peer may not have heard us yet
    t.tick(t0 + TCP_FALLBACK_AFTER + 0.1)
    assert link.over_tcp and t.stats["tcp_fallbacks"] == 1
    t.on_control(link, {"t": "udp_ok"})
    t.tick(t0 + TCP_FALLBACK_AFTER + 0.2)
    assert not link.over_tcp and t.stats["udp_recoveries"] == 1
    t.tick(t0 + 0.2 + UDP_DEAD + 0.1)  # silence: take our "udp_ok" back
    assert any(m["t"] == "udp_lost" for m in sent(link))
    assert not link.told_ok


# ---------------------------------------------------------------- dialler
def dialler(tmp_path: pathlib.Path, peers: tuple[Target, ...] = (),
            **kw: Any) -> tuple[Dialler, LinkTable, list[Coroutine[Any, Any, None]]]:
    cfg = Config(psk=b"k" * 32, port=6783, peers=peers, state_dir=tmp_path, http=None, **kw)
    static = KeyPair.generate()
    signer = Signer.from_static(static)
    links = LinkTable(signer.peer_id, Counters())
    conns = Connections(cfg, Identity(static, signer, signer.peer_id, "me", 1), links,
                        Counters(), Counters())
    spawned: list[Coroutine[Any, Any, None]] = []
    return Dialler(cfg, conns), links, spawned


def test_dialler_dials_due_targets_once_and_backs_off(tmp_path: pathlib.Path) -> None:
    t = Target("198.18.0.2", 6783)
    d, links, spawned = dialler(tmp_path, (t,))

    async def refused(ts: TargetState) -> str:
        return "connect failed: refused"

    d.conns.dial = refused  # type: ignore[method-assign]
    d.tick(0.0, spawned.append)
    d.tick(0.1, spawned.append)  # still connecting: not again
    assert len(spawned) == 1 and d.targets[t].connecting

    async def run() -> None:
        await spawned.pop()

    asyncio.run(run())
    ts = d.targets[t]
    assert not ts.connecting and ts.last_error == "connect failed: refused"
    assert ts.next_try > 0 and ts.attempts == 1
    # attempts grow the backoff, bounded
    ts.attempts = 50
    asyncio.run(d._dial(ts))
    assert ts.next_try - time.monotonic() <= BACKOFF_MAX * 1.5
    # a peer offline for days: 1.5 ** attempts would overflow a float (OverflowError,
    # next_try never moved, the target redialled every tick)
    ts.attempts = 5000
    asyncio.run(d._dial(ts))
    assert BACKOFF_MAX / 2 - 1 <= ts.next_try - time.monotonic() <= BACKOFF_MAX * 1.5
    # a target whose peer is already linked is not dialled
    ts.peer, ts.next_try = HIGH, 0.0
    links.register(fake_link(HIGH))
    d.tick(0.0, spawned.append)
    assert not spawned


def test_dialler_discovers_forgets_and_remembers_only_given_peers(tmp_path: pathlib.Path) -> None:
    given = Target("198.18.0.2", 6783)
    d, _, _ = dialler(tmp_path, (given,))
    seen = Target("198.18.0.3", 6783)
    d.discover({HIGH}, {HIGH: {seen}, LOW: {Target("198.18.0.4", 6783)}})
    assert d.targets[seen].discovered and d.targets[seen].peer == HIGH
    assert Target("198.18.0.4", 6783) not in d.targets  # LOW only mentioned, not known
    d.save()
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert saved == {"peers": [str(given)]}
    d.discover({HIGH}, {})  # no longer listed: forgotten
    assert seen not in d.targets and given in d.targets
    with pytest.raises(ValueError):
        d.api_connect({"peer": "not a host:99999"})
    assert d.api_forget({"peer": "198.18.0.2"}) == {"forgotten": ["198.18.0.2:6783"]}


# ---------------------------------------------------------------- gossip router
class Echo:
    """A channel whose every message is new: the delta is the message itself."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def gossip(self) -> GossipData | None:
        return Chunks([b"full"])

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        if msg == b"bad":
            raise GossipRefused("bad_thing")
        self.got.append(msg)
        return Chunks([msg])

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool:
        return False

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None:
        pass

    def peer_gone(self, peer: bytes) -> None:
        pass


def router() -> tuple[GossipRouter, LinkTable, Echo]:
    static = KeyPair.generate()
    signer = Signer.from_static(static)
    links = LinkTable(signer.peer_id, Counters())
    mesh = Mesh(signer, "me", 1)
    r = GossipRouter(signer.peer_id, 1, signer, links, mesh.topology,
                     lambda o, f: [], lambda p: None, Counters(), Counters())
    ch = Echo()
    r.register("echo", ch, max_msg=16)
    links.on_up(r.link_up)
    return r, links, ch


def gossip_sent(link: Link) -> list[bytes]:
    return [m["r"] for m in sent(link) if m.get("t") == "g"]


def test_router_sends_full_state_to_new_links_and_deltas_to_the_others() -> None:
    r, links, ch = router()
    a, b, c = fake_link(LOW), fake_link(HIGH), fake_link(b"\x07" * 8)
    for lk in (a, b, c):
        links.register(lk)
        assert gossip_sent(lk) == [b"full"]
    r.on_message(a, {"t": "g", "c": "echo", "k": "g", "r": b"news"})
    assert ch.got == [b"news"]
    assert gossip_sent(a) == [b"full"]  # never back to where it came from
    assert gossip_sent(b)[-1] == b"news" and gossip_sent(c)[-1] == b"news"
    r.on_message(a, {"t": "g", "c": "echo", "k": "g", "r": b"bad"})
    r.on_message(a, {"t": "g", "c": "echo", "k": "g", "r": b"x" * 17})
    assert r.status()["echo"]["drops"] == {"bad_thing": 1, "too_large": 1}
    assert r.drops["gossip_echo_bad_thing"] == 1


def test_a_backed_up_link_gets_one_merged_message_later() -> None:
    r, links, _ = router()
    a, slow = fake_link(LOW), fake_link(HIGH)
    links.register(a)
    links.register(slow)
    slow.writer.transport.backlog = BACKLOG_MAX  # type: ignore[attr-defined]
    for i in range(3):
        r.on_message(a, {"t": "g", "c": "echo", "k": "g", "r": b"n%d" % i})
    assert gossip_sent(slow) == [b"full"]  # nothing more while backed up
    slow.writer.transport.backlog = 0  # type: ignore[attr-defined]
    r.tick(0.0)  # not yet anti-entropy time for the link: just the flush
    assert gossip_sent(slow)[1:] == [b"n0", b"n1", b"n2"]
    assert not slow.gossip_pending


# ---------------------------------------------------------------- egress
def test_egress_classifies_frames_by_destination_mac() -> None:
    drops, stats = Counters(), Counters()
    links = LinkTable(ME, stats)
    macs = MacTable()
    signer = Signer.from_static(KeyPair.generate())
    mesh = Mesh(signer, "me", 1)
    sends: list[tuple[bytes, list[bytes]]] = []

    class FakeUnderlay(Underlay):
        def send(self, link: Link, body: bytes) -> None:
            sends.append((link.peer, [body]))

        def send_many(self, link: Link, bodies: list[bytes]) -> None:
            sends.append((link.peer, bodies))

    eg = Egress(ME, links, mesh.routes, macs, FakeUnderlay(drops, stats, False), drops, stats,
                OriginAuth(signer, 1, lambda _p: None))
    port = MemoryPort()
    eg.port = port
    peer = fake_link(HIGH)
    peer.usable = True
    links.register(peer)
    local, remote = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    macs.learn_remote(remote, HIGH, 0.0)
    port.inject(remote + local + b"\x08\x00" + b"to the peer")
    port.inject(local + bytes.fromhex("020000000003") + b"\x08\x00" + b"stays here")
    port.inject(b"\x01\x80\xc2\x00\x00\x00" + local + b"\x08\x00" + b"stp")
    port.inject(b"short")
    eg.on_port_readable()
    assert [p for p, _ in sends] == [HIGH]
    assert b"to the peer" in sends[0][1][0]
    assert drops.snapshot() == {"local_dst": 1, "stp": 1, "runt": 1}
