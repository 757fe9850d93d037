"""The measured hop limit's review fixes (issue 24): what a member can put in a far
host, which peer may echo our probes, a stale k_min, the opener's opening, the far
NAT's distance from partial answers, and probe sockets at stop. Loopback only."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from sleeve.node import Node
from sleeve.proto.stats import Counters
from sleeve.traversal import hops, hopsock
from sleeve.traversal.hopsock import FarProbe, HopMeter
from sleeve.traversal.predict import NatKind
from tests.test_node_inproc import pair
from tests.test_traversal_retry import ME, MED, PEER, FakeLink, rig

PUBLIC = "198.18.70.11"  # our NAT's public address, as the public peers see it
PRESERVING = NatKind("preserving", None, ((PUBLIC, 6783),))


# ---- 1. the far host: address literals only, and nothing raises out of the timer
def test_far_probe_never_resolves_a_name() -> None:
    meter = HopMeter(Counters(), Counters())
    meter.k_min = 2
    listeners = []
    for t in range(1, hops.MAX_FAR + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", hops.FAR_PORT + t))
        s.setblocking(False)
        listeners.append(s)
    try:
        for host in ("localhost", "relay", "a\x00b"):
            assert meter.start_far(host, 0.0) is None
        assert meter.drops["hop_far_not_an_address"] == 3
        time.sleep(0.05)
        for s in listeners:  # "localhost" resolved would have reached these
            with pytest.raises(BlockingIOError):
                s.recv(64)
    finally:
        for s in listeners:
            s.close()


def test_a_bad_observed_host_neither_raises_nor_stalls_the_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tr, table, _, _ = rig()
    del tr.meter.start_far  # the real one
    tr.meter.k_min = 2
    link = table.links[PEER] = FakeLink(PEER, virtual=True)
    link.endpoint = link.remote_tcp = ("a\x00b", 6783)  # what a mediator could have sent
    tr.tick(10.0)
    tr.tick(10.25)
    tr.on_cand(link, {"t": "cand", "eps": [], "nat": "preserving"})
    assert tr.stats["punch_attempts"] == 1 and tr.peers[PEER].current is not None
    # any other failure of a probe is counted, never raised out of the timer
    def boom(*a: Any) -> None:
        raise TypeError("unexpected")
    monkeypatch.setattr(hopsock, "FarProbe", boom)
    assert tr.meter.start_far("198.18.40.12", 11.0) is None
    assert tr.drops["hop_far_failed"] == 1


def test_via_ep_must_be_an_address_literal() -> None:
    tr, table, _, _ = rig()
    fed: list[bytes] = []
    writer = SimpleNamespace(observed=None)
    tr.virtual[PEER] = (SimpleNamespace(feed_data=fed.append), writer, MED)  # type: ignore
    med = table.links[MED]
    for ep in (["a\x00b", 1], ["localhost", 6783], ["relay", 6783], [1, 2]):
        tr.on_via(med, {"t": "via", "from": PEER, "d": b"x", "ep": ep})  # type: ignore
    assert tr.drops["bad_via_ep"] == 4 and writer.observed is None and len(fed) == 4
    tr.on_via(med, {"t": "via", "from": PEER, "d": b"y", "ep": ["198.18.40.12", 6783]})  # type: ignore
    assert writer.observed == ("198.18.40.12", 6783) and tr.drops["bad_via_ep"] == 4


# ---- 2. the mediator: a peer that sees our public NAT address; k_min 1 is no measurement
def test_a_lan_peer_is_never_the_echo_mediator() -> None:
    meter = HopMeter(Counters(), Counters())
    socks = []
    for host in ("127.0.0.1", "127.0.0.2"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
        socks.append(s)
    lan = SimpleNamespace(peer=b"\x02" * 8, endpoint=socks[1].getsockname(),
                          endpoint_learnt=True, virtual=False, usable=True,
                          send_control=lambda m: None)
    public = SimpleNamespace(peer=b"\x07" * 8, endpoint=socks[0].getsockname(),
                             endpoint_learnt=True, virtual=False, usable=True,
                             send_control=lambda m: None)
    seen = {lan.peer: ("192.168.1.5", ("192.168.1.9", 6783)),  # our LAN address: no NAT
            public.peer: ("198.18.70.1", (PUBLIC, 6783))}
    try:
        meter.tick(0.0, lambda: PRESERVING, [lan, public], seen)
        assert meter.probe is not None and meter.probe.mediator == public.peer
        meter.close()
        meter.next_at = 0.0
        meter.tick(0.0, lambda: PRESERVING, [lan], seen)
        assert meter.probe is None and "no public peer" in meter.why
    finally:
        meter.close()
        for s in socks:
            s.close()


def test_k_min_1_is_not_a_measurement() -> None:
    meter = HopMeter(Counters(), Counters())
    meter._finish(0.0, 1, "echo from the mediator on TTL [1, 2, 3, 4]")
    assert meter.k_min is None and "no NAT between" in meter.why
    v = hops.verdict(1, "", 3, "it answered")
    assert not v.measured and v.ttl is None


# ---- 3. the opener opens with TTL k_min from the first tick (the far NAT stays silent)
class SilentFar:
    host = "198.18.40.12"
    answers: dict[int, tuple[str, int]] = {}

    def poll(self) -> None:
        pass

    def result(self, k_min: int | None) -> tuple[int | None, str]:
        return None, "no answer"

    def close(self) -> None:
        pass


def test_opener_opens_at_once_with_a_known_k_min() -> None:
    tr, table, underlay, _ = rig()
    tr.meter.k_min = 2
    tr.meter.start_far = lambda host, now: SilentFar()  # type: ignore[method-assign,assignment,return-value]
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)  # ME first, odd
    for a in (0, .25, .5, .7499, 1.0, 1.25):
        tr.tick(10.0 + a)
    att = tr.peers[PEER].current
    assert att is not None and att.plan.opener and att.verdict is not None
    opening = [ttl for ep, ttl in underlay.sent if ep == link.endpoint and ttl == 2]
    assert len(opening) == 4  # ticks at 0, .25, .5, .75: the whole OPEN_TIME


# ---- 4. the far NAT's distance
def test_silence_beyond_our_nat_is_not_adjacent() -> None:
    # 1 hop behind our NAT (k_min 2); only our NAT answers (ICMP beyond filtered); the
    # far NAT, silent, is in truth 12 hops away
    d, why = hops.far_distance({1: ("192.168.1.1", 11)}, "203.0.113.9", hops.MAX_FAR, 2)
    v = hops.verdict(2, "", d, why)
    assert d is None and not v.adjacent and v.ttl == 2 and "beyond our NAT" in why
    # a router beyond ours answered: one past it still counts
    d, _ = hops.far_distance({1: ("192.168.1.1", 11), 2: ("198.18.1.1", 11)},
                             "203.0.113.9", hops.MAX_FAR, 2)
    assert d == 3


def test_an_icmp_report_quoting_no_payload_is_matched_by_its_port() -> None:
    drops = Counters()
    far = FarProbe("127.0.0.1", 0.0, drops)  # 8 probes to closed loopback ports
    try:
        time.sleep(0.05)
        far.poll()
        assert set(far.answers) == set(range(1, hops.MAX_FAR + 1))
        far.answers.clear()
        # a report with an empty quoted payload, as a minimal-quoting router gives
        far.sock.sendto(b"", ("127.0.0.1", hops.FAR_PORT + 3))
        time.sleep(0.05)
        far.poll()
        assert far.answers == {3: ("127.0.0.1", 3)} and drops["hop_bad_icmp"] == 0
    finally:
        far.close()


# ---- 5. a k_min belongs to the NAT it was measured on
def measured(meter: HopMeter, basis: tuple[str, str] = ("preserving", PUBLIC)) -> None:
    meter._probe_basis = basis
    meter._finish(0.0, 2, "echo from the mediator on TTL [2, 3, 4]")
    assert meter.k_min == 2


def test_k_min_is_forgotten_when_the_nat_changes() -> None:
    meter = HopMeter(Counters(), Counters())
    measured(meter)
    meter.tick(5.0, lambda: PRESERVING, [], {})
    assert meter.k_min == 2  # the same NAT: kept
    meter.tick(6.5, lambda: NatKind("random", None, ((PUBLIC, 40000),)), [], {})
    assert meter.k_min is None and "random" in meter.why
    v = meter.decide(None, 0.0)
    assert v is not None and v.k_min is None  # the attempt falls back to guessing
    measured(meter)
    moved = NatKind("preserving", None, (("198.18.80.11", 6783),))
    meter.tick(8.0, lambda: moved, [], {})  # another public address: another NAT
    assert meter.k_min is None and "no public peer" in meter.why
    assert meter.stats["hop_nat_changed"] == 2


def test_a_failed_remeasurement_forgets_k_min() -> None:
    meter = HopMeter(Counters(), Counters())
    measured(meter)
    meter._finish(hops.REMEASURE, None, "no echo from the mediator")
    assert meter.k_min is None and meter.why == "no echo from the mediator"


# ---- 6. probe sockets: bounded, closed at stop and with their peer
def test_far_probes_are_capped_and_closed() -> None:
    meter = HopMeter(Counters(), Counters())
    meter.k_min = 2
    fars = [meter.start_far("127.0.0.1", 0.0) for _ in range(hops.MAX_FAR_PROBES + 1)]
    assert fars[-1] is None and meter.stats["hop_far_busy"] == 1
    live = [f for f in fars if f is not None]
    assert len(live) == hops.MAX_FAR_PROBES and all(f.open for f in live)
    meter.close()
    assert not any(f.open for f in live)


def test_a_deleted_peers_far_probe_closes() -> None:
    tr, table, _, _ = rig()
    tr.meter.k_min = 2
    table.links[PEER] = FakeLink(PEER, virtual=True)
    tr.tick(10.0)
    att = tr.peers[PEER].current
    assert att is not None
    att.far = far = FarProbe("127.0.0.1", 10.0, tr.drops)
    tr.topology = SimpleNamespace(peers=lambda: {ME, MED}, get=lambda p: None)  # type: ignore
    tr.start_attempts(11.0)
    assert PEER not in tr.peers and not far.open


def test_the_router_closes_its_probe_sockets_at_stop() -> None:
    fars: list[FarProbe] = []

    async def body(a: Node, pa: Any, b: Node, pb: Any) -> None:
        a.traversal.meter.k_min = 2
        far = a.traversal.meter.start_far("127.0.0.1", 0.0)
        assert far is not None and far.open
        fars.append(far)

    asyncio.run(pair(body))
    assert fars and not fars[0].open


# ---- 7a. the opener's verdict reaches an unmeasured crosser
class AnsweringFar(SilentFar):
    answers = {2: ("198.18.40.12", 3)}  # the far NAT itself, 2 hops away: adjacent

    def result(self, k_min: int | None) -> tuple[int | None, str]:
        return hops.far_distance(self.answers, self.host, hops.MAX_FAR, k_min)


def test_the_opener_sends_its_verdict_and_an_unmeasured_crosser_uses_it() -> None:
    tr, table, _, _ = rig()
    tr.meter.k_min = 2
    tr.meter.start_far = lambda host, now: AnsweringFar()  # type: ignore[method-assign,assignment,return-value]
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)  # we open
    tr.tick(10.0)
    att = tr.peers[PEER].current
    assert att is not None and att.plan.opener and att.verdict is not None
    assert att.verdict.adjacent and {"t": "cand", "adj": True} in link.sent
    # the crosser (session indexes 6 ^ 8: even), with nothing measured
    tr, table, _, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
    tr.tick(10.0)
    att = tr.peers[PEER].current
    assert att is not None and not att.plan.opener and att.verdict is not None
    assert not att.plan.adjacent and att.plan.first_crossing(1.5)
    for bad in ("yes", 1, None):
        tr.on_cand(link, {"t": "cand", "adj": bad})  # type: ignore[arg-type]
    assert tr.drops["bad_cand"] == 3 and not att.plan.adjacent
    tr.on_cand(link, {"t": "cand", "adj": True})  # type: ignore[arg-type]
    assert att.plan.adjacent and not att.plan.first_crossing(1.5)
    assert att.plan.step(2.0) == (False, None)
