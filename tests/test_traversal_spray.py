"""Birthday spray (traversal.spray): the numbers, the roles, the sockets (no namespaces)."""

from __future__ import annotations

import random
import socket
from typing import Any

from sleeve.forward.underlay import Underlay
from sleeve.links.fake import fake_link
from sleeve.proto.stats import Counters
from sleeve.traversal import plan, spray
from sleeve.traversal.spray import Sprayer
from tests.test_traversal_retry import MED, PEER, FakeLink, rig

NAT = "198.18.80.11"


def test_the_hit_chance_of_the_default_parameters() -> None:
    assert spray.hit_chance() > 0.999  # 128 sockets, 4096 probes, 64512 ports
    assert spray.hit_chance(0, 4096) == 0.0
    assert abs(spray.hit_chance(128, 1000) - 0.864) < 0.01
    assert spray.hit_chance(10, 100, ports=100) == 1.0


def test_roles() -> None:
    assert spray.role("random", "preserving") == "open"
    assert spray.role("random", "cone") == "open"
    assert spray.role("preserving", "random") == "probe"
    for ours, theirs in (("random", "random"), ("random", "unknown"), ("unknown", "random"),
                         ("preserving", "preserving"), ("sequential", "random")):
        assert spray.role(ours, theirs) == ""


def test_the_sprayer_sends_distinct_ports_at_a_bounded_rate() -> None:
    sp = Sprayer(NAT, random.Random(1))
    ticks = []
    while batch := sp.next():
        ticks.append(batch)
    assert all(len(b) <= spray.PER_TICK for b in ticks)
    ports = [p for b in ticks for p in b]
    assert len(ports) == len(set(ports)) == spray.PROBES == sp.sent
    assert all(spray.PORT_LO <= p <= spray.PORT_HI for p in ports)
    assert sp.probed(ports[0]) and not sp.next()


def seen_random(tr: Any, table: Any) -> None:
    """Two observers see random ports of ours: our NAT is 'random'."""
    other = table.links[b"\x06" * 8] = FakeLink(b"\x06" * 8, virtual=False)
    other.endpoint = ("198.18.80.99", 6783)
    tr.on_seen(table.links[MED], {"t": "seen", "ep": [NAT, 23001]})
    tr.on_seen(other, {"t": "seen", "ep": [NAT, 51234]})
    assert tr.nat().kind == "random"


def test_the_easy_side_sprays_a_bounded_number_of_probes() -> None:
    tr, table, underlay, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)  # index roles: crosser
    link.endpoint = link.remote_tcp = (NAT, 23001)
    tr.on_seen(table.links[MED], {"t": "seen", "ep": ["198.18.90.12", 6783]})
    assert tr.nat().kind == "preserving"  # our NAT keeps our port
    tr.on_cand(link, {"t": "cand", "eps": [], "nat": "random"})
    att = tr.peers[PEER].current
    assert att is not None and att.sprayer is not None and not att.plan.opener
    t0 = att.started
    tr.tick(t0 + 0.5)
    assert not underlay.sent  # the random side opens first
    n = 0
    for i in range(40):
        tr.tick(t0 + plan.OPEN_TIME + 0.25 * i)
        n = len([1 for (h, _), ttl in underlay.sent if h == NAT and ttl is None])
        assert n <= (spray.PER_TICK + 4) * (i + 1)  # the probes and the plan's few
    assert spray.PROBES <= n <= spray.PROBES + 40 * 4  # all probes, then only the plan's
    assert tr.stats["punch_spray_attempts"] == 1
    hit = att.sprayer._ports[7]
    link.endpoint_learnt = True
    link.endpoint = (NAT, hit)
    tr.tick(t0 + 12)
    assert tr.stats["punch_spray_successes"] == 1
    st = tr.status(t0 + 13)["peers"][0]["tried"][0]
    assert "sprayed 4096 of 4096" in st["spray"] and "sprayed port" in st["result"]


def test_the_random_side_opens_hop_limited_spray_sockets_and_closes_them() -> None:
    tr, table, underlay, _ = rig()
    seen_random(tr, table)
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
    tr.on_cand(link, {"t": "cand", "eps": [], "nat": "preserving"})
    att = tr.peers[PEER].current
    assert att is not None and att.spray_role == "open" and att.plan.opener
    assert tr.stats["punch_spray_attempts"] == 1
    t0 = att.started
    tr.tick(t0 + 0.1)
    assert len(underlay.spray) == spray.SOCKETS
    first = list(underlay.from_spray)
    assert {s for s, _, _ in first} == set(underlay.spray)
    assert all(ttl == att.plan.hops + 1 for _, _, ttl in first)  # never past our NAT's next hop
    tr.tick(t0 + 1)
    assert len(underlay.from_spray) == len(first)  # refreshed only every KEEP_EVERY
    tr.tick(t0 + spray.KEEP_EVERY + 0.2)
    assert len(underlay.from_spray) == 2 * len(first)
    tr.tick(t0 + plan.ATTEMPT_TIME + 1)  # nothing came: the attempt ends, the sockets close
    assert not underlay.spray and tr.stats["punch_failed"] == 1
    # a bad "nat" value drops the whole message
    tr.on_cand(link, {"t": "cand", "eps": [], "nat": "weird"})
    assert tr.drops["bad_cand"] == 1


def test_one_spray_at_a_time() -> None:
    tr, table, _, _ = rig()
    seen_random(tr, table)
    a = table.links[PEER] = FakeLink(PEER, virtual=True)
    tr.on_cand(a, {"t": "cand", "eps": [], "nat": "preserving"})
    other = b"\x0a" * 8
    b = table.links[other] = FakeLink(other, virtual=True)
    tr.on_cand(b, {"t": "cand", "eps": [], "nat": "preserving"})
    att_b = tr.peers[other].current
    assert att_b is not None and att_b.spray_role == ""
    assert tr.stats["punch_spray_attempts"] == spray.MAX_SPRAYS


def test_a_link_keeps_the_spray_socket_its_datagram_came_on() -> None:
    u = Underlay(Counters(), Counters(), offload=False)
    watched: list[socket.socket] = []
    u.watch = watched.append
    u.unwatch = watched.remove
    link, other = fake_link(mediator=MED), fake_link(mediator=MED)
    try:
        assert u.open_spray(link, 4) == 4 and u.open_spray(other, 2) == 2
        assert len(watched) == 6 and len(u.spray_sockets(link)) == 4
        mine = u.spray_sockets(link)[2]
        # a datagram read on another link's spray socket does not move this link
        u.rx_extra = u.spray_sockets(other)[0]
        u.pin(link)
        assert link not in u.pinned and u.drops["spray_wrong_socket"] == 1
        # the probe that hit: read on one of its sockets and authenticated (ingress pins)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x01\x01" + bytes(40), ("127.0.0.1", mine.getsockname()[1]))

        class Rx:
            def on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
                assert u.rx_extra is mine
                u.pin(link)

            def on_run(self, data: bytes, seg: int, addr: tuple[Any, ...]) -> int:
                raise AssertionError

            def after_batch(self) -> None:
                pass

        mine.settimeout(1.0)
        mine.setblocking(False)
        import select
        select.select([mine], [], [], 1.0)
        u.on_readable(mine, Rx())
        assert u.pinned[link] is mine and not u.spray_sockets(link)  # the others closed
        assert len(watched) == 3  # its kept socket and the other link's two
        link.endpoint_learnt = True
        assert u.link_socket(link) is mine  # what the link sends from
        u.release(link)
        assert mine.fileno() == -1 and len(watched) == 2
    finally:
        u.close()
    assert not watched and not u.extra
