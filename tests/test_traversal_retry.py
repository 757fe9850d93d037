"""Punching keeps trying while a peer is relayed (traversal.punch with fake links).

No sockets: the underlay records what would be sent, the links are stand-ins with
the attributes traversal reads, and time is passed in.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from sleeve.proto.stats import Counters
from sleeve.traversal import plan
from sleeve.traversal.punch import PUNCH_GRACE, Traversal

ME, PEER, MED = b"\x01" * 8, b"\x09" * 8, b"\x05" * 8


class FakeWriter:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("198.18.41.2", 40000) if name == "sockname" else default


class FakeLink:
    def __init__(self, peer: bytes, *, virtual: bool, li: int = 6, ri: int = 9) -> None:
        self.peer, self.name, self.virtual = peer, peer.hex(), virtual
        self.mediator = MED if virtual else None
        self.endpoint_learnt = not virtual
        self.usable = True
        self.endpoint = ("198.18.40.12", 6783)
        self.hello_port = 6783
        self.remote_tcp = ("198.18.40.12", 29334)
        self.session = SimpleNamespace(local_index=li, remote_index=ri,
                                       seal=lambda b: b)
        self.writer = FakeWriter()
        self.sent: list[dict[str, Any]] = []

    def send_control(self, m: dict[str, Any]) -> None:
        self.sent.append(m)

    def heartbeat_record(self, now: float) -> bytes:
        return b"hb"


class FakeTable:
    def __init__(self) -> None:
        self.links: dict[bytes, FakeLink] = {}

    def __iter__(self) -> Any:
        return iter(list(self.links.values()))

    def __contains__(self, peer: object) -> bool:
        return peer in self.links

    def get(self, peer: bytes) -> FakeLink | None:
        return self.links.get(peer)


class FakeUnderlay:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[str, int], int | None]] = []
        self.udp = SimpleNamespace(getsockname=lambda: ("0.0.0.0", 6783))
        self.udp6 = None
        self.spray: dict[Any, Any] = {}
        self.pinned: dict[Any, Any] = {}
        self.from_spray: list[tuple[Any, tuple[str, int], int | None]] = []

    def send_ttl(self, link: Any, ep: tuple[str, int], data: bytes, ttl: int | None,
                 sock: Any = None) -> None:
        self.sent.append((ep, ttl))
        if sock is not None:
            self.from_spray.append((sock, ep, ttl))

    # traversal.spray's sockets (forward.underlay), as objects
    def open_spray(self, link: Any, n: int) -> int:
        self.spray.update({object(): link for _ in range(n)})
        return n

    def spray_sockets(self, link: Any) -> list[Any]:
        return [s for s, lk in self.spray.items() if lk is link]

    def close_spray(self, link: Any) -> None:
        for s in self.spray_sockets(link):
            del self.spray[s]

    def release(self, link: Any) -> None:
        self.close_spray(link)
        self.pinned.pop(link, None)


def rig() -> tuple[Traversal, FakeTable, FakeUnderlay, list[bytes]]:
    table, underlay = FakeTable(), FakeUnderlay()
    table.links[MED] = FakeLink(MED, virtual=False)
    conn = SimpleNamespace(peer=PEER, established=True)
    records = {MED: SimpleNamespace(conns=[conn])}
    topo = SimpleNamespace(peers=lambda: {ME, PEER, MED}, get=records.get)
    tr = Traversal(ME, cast(Any, table), cast(Any, topo), cast(Any, underlay), Counters(),
                   Counters(), enabled=True, run_connection=cast(Any, None))
    started: list[bytes] = []
    # no real probe sockets here (they would send to the fake links' lab addresses
    # from the test's own namespace): the hop meter never starts; tests set k_min
    tr.meter.next_at = tr.meter.check_at = float("inf")  # a k_min set by a test stays
    tr.meter.start_far = lambda host, now: None  # type: ignore[method-assign]
    tr.spawn = lambda coro: None
    tr._start_virtual = lambda peer, med, obs, out: started.append(peer)  # type: ignore
    return tr, table, underlay, started


def test_a_failed_attempt_is_retried_after_a_quiet_backoff_with_status() -> None:
    tr, table, _, started = rig()
    tr.start_attempts(0.0)
    assert started == []  # a new peer gets PUNCH_GRACE to be dialled first
    tr.start_attempts(PUNCH_GRACE + 0.1)
    assert started == [PEER]
    t = PUNCH_GRACE + 0.5
    link = table.links[PEER] = FakeLink(PEER, virtual=True)
    tr.tick(t)
    assert tr.stats["punch_attempts"] == 1
    assert link.sent and link.sent[0]["t"] == "cand"  # our LAN endpoint, to the peer
    tr.tick(t + plan.ATTEMPT_TIME + 0.5)  # heard nothing: the attempt fails
    assert link.writer.closed and tr.stats["punch_failed"] == 1
    del table.links[PEER]
    st = tr.status(t + plan.ATTEMPT_TIME + 1)["peers"][0]
    assert st["state"] == "relayed" and st["attempts"] == 1 and st["next_attempt_by"] == "us"
    assert st["tried"][0]["result"].startswith("no datagram from the peer")
    assert plan.QUIET_MIN - 2 <= st["next_attempt_in_s"] <= plan.QUIET_MIN
    # quiet first (stale NAT entries expire), then a fresh attempt through the mediator
    end = t + plan.ATTEMPT_TIME + 0.5
    tr.start_attempts(end + plan.QUIET_MIN - 1)
    assert started == [PEER]
    tr.start_attempts(end + plan.QUIET_MIN + 0.1)
    assert started == [PEER, PEER]
    link2 = table.links[PEER] = FakeLink(PEER, virtual=True, li=7)
    tr.tick(end + plan.QUIET_MIN + 0.5)
    link2.endpoint_learnt = True  # an authenticated datagram from the peer
    tr.tick(end + plan.QUIET_MIN + 2)
    tr.tick(end + plan.QUIET_MIN + 3)
    assert tr.stats["punch_attempts"] == 2 and tr.stats["punch_successes"] == 1
    st = tr.status(end + plan.QUIET_MIN + 3)["peers"][0]
    assert st["state"] == "direct" and st["tried"][-1]["result"].startswith("direct after")


def test_the_backoff_grows_and_the_rate_stays_bounded() -> None:
    tr, table, _, started = rig()
    tr.start_attempts(0.0)  # first seen
    now, gaps = PUNCH_GRACE + 0.1, []
    for _ in range(12):
        tr.start_attempts(now)
        table.links[PEER] = FakeLink(PEER, virtual=True)
        tr.tick(now)
        now += plan.ATTEMPT_TIME + 1
        tr.tick(now)  # fails
        del table.links[PEER]
        nxt = tr.peers[PEER].next_at
        gaps.append(nxt - now)
        now = nxt + 0.1
    assert len(started) == 12
    assert gaps == sorted(gaps) and gaps[0] >= plan.QUIET_MIN - 1
    assert max(gaps) == plan.BACKOFF_MAX


def test_roles_decide_who_sends_what() -> None:
    tr, table, underlay, _ = rig()
    # our id is the smaller; with indexes 6 ^ 9 odd, the smaller id opens
    table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)
    tr.tick(10.0)
    tr.tick(10.5)
    tr.tick(12.0)
    nat = [(ep, ttl) for ep, ttl in underlay.sent if ep[0] == "198.18.40.12"]
    assert nat and all(ttl is not None for _, ttl in nat)  # the opener never crosses
    assert {ep for ep, _ in nat} == {("198.18.40.12", 6783), ("198.18.40.12", 29334)}
    tr2, table2, underlay2, _ = rig()
    table2.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)  # even: the peer opens
    tr2.tick(10.0)
    tr2.tick(10.5)
    assert underlay2.sent == []  # the crosser waits for the opener
    tr2.tick(11.5)
    # the first crossing: the announced port only (a crossing to the observed endpoint
    # would clash with an adjacent opener's datagram on our NAT)
    assert underlay2.sent == [(("198.18.40.12", 6783), None)]
    underlay2.sent.clear()
    tr2.tick(10.0 + plan.SECOND_CROSS + 0.1)
    assert {ep for ep, _ in underlay2.sent} == {("198.18.40.12", 6783), ("198.18.40.12", 29334)}
    assert all(ttl is None for _, ttl in underlay2.sent)


def test_bad_candidates_are_counted_not_raised() -> None:
    tr, table, underlay, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
    tr.tick(1.0)
    tr.on_cand(cast(Any, link), {"t": "cand", "eps": [["127.0.0.1", 1]]})
    tr.on_cand(cast(Any, link), {"t": "cand", "eps": "junk"})
    assert tr.drops["bad_cand"] == 2
    tr.on_cand(cast(Any, link), {"t": "cand", "eps": [["198.18.42.2", 6783]]})
    tr.tick(1.25)
    assert (("198.18.42.2", 6783), 2) in underlay.sent  # the LAN candidate, hop limit 2


def _virtual_rig(spawn: Any) -> tuple[Traversal, Counters, FakeLink]:
    table, underlay, drops = FakeTable(), FakeUnderlay(), Counters()
    med = table.links[MED] = FakeLink(MED, virtual=False)
    topo = SimpleNamespace(peers=lambda: {ME, PEER, MED}, get=lambda p: None)
    tr = Traversal(ME, cast(Any, table), cast(Any, topo), cast(Any, underlay), drops,
                   Counters(), enabled=True, run_connection=cast(Any, None))
    tr.spawn = spawn
    return tr, drops, med


def test_bytes_after_a_fin_are_dropped_not_raised() -> None:
    """asyncio's StreamReader asserts on data after EOF: that must never escape on_via
    (it did, out of the control connection's callback, in the 50-router lab)."""
    async def body() -> None:  # StreamReader wants a running loop (Python 3.11.2)
        coros: list[Any] = []
        tr, drops, med = _virtual_rig(coros.append)
        tr._start_virtual(PEER, cast(Any, med), None, True)
        assert PEER in tr.virtual
        tr.on_via(cast(Any, med), {"t": "via", "from": PEER, "d": b"hello"})
        tr.on_via(cast(Any, med), {"t": "via", "from": PEER, "fin": True})
        tr.on_via(cast(Any, med), {"t": "via", "from": PEER, "fin": True})  # twice: harmless
        tr.on_via(cast(Any, med), {"t": "via", "from": PEER, "d": b"late"})
        assert drops["via_after_fin"] == 1
        for c in coros:
            c.close()

    asyncio.run(body())


def test_a_stream_refused_while_shutting_down_leaves_nothing() -> None:
    def refuse(coro: Any) -> None:
        raise RuntimeError("TaskGroup shutting down")

    async def body() -> None:
        tr, drops, med = _virtual_rig(refuse)
        tr._start_virtual(PEER, cast(Any, med), None, True)
        assert PEER not in tr.virtual
        assert drops["via_refused"] == 1

    asyncio.run(body())
