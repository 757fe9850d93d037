"""The node's tick pacing (sleeve.pacing): 1 Hz only while everything is settled."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from sleeve.capture.memory import MemoryPort
from sleeve.node import Node
from sleeve.pacing import (
    DATA_QUIET,
    DATA_RATE,
    IDLE_TICK,
    TICK,
    DataWatch,
    link_settled,
    period,
)
from tests.test_node_inproc import frame, pair, wait_for

NOW = 100.0


def settled(**kw: Any) -> Any:
    attrs = dict(virtual=False, endpoint_learnt=True, usable=True, over_tcp=False,
                 confirmed=True, told_ok=True,
                 heard_at=NOW - 1, gso_ok=True, gso_next_proof=0.0,
                 pmtu=SimpleNamespace(next_deadline=NOW + 600), reasm=[], segsets=[],
                 gossip_pending={},
                 rekey=SimpleNamespace(period=0.5, next_deadline=lambda: NOW + 60))
    attrs.update(kw)
    return SimpleNamespace(**attrs)


def test_only_a_settled_link_lets_the_ticker_slow_down() -> None:
    assert link_settled(settled(), NOW, gso=True)
    assert period([settled(), settled()], NOW, gso=True, busy=False) == IDLE_TICK
    for change in (dict(virtual=True, endpoint_learnt=False), dict(usable=False),
                   dict(over_tcp=True),
                   dict(confirmed=False), dict(told_ok=False), dict(heard_at=0.0),
                   dict(pmtu=SimpleNamespace(next_deadline=NOW + 0.5)),  # probing
                   dict(gso_ok=False, gso_next_proof=NOW + 0.3),  # a GSO proof due
                   dict(reasm=[1]), dict(segsets=[1]), dict(gossip_pending={"dns": 1}),
                   dict(rekey=SimpleNamespace(period=0.5, next_deadline=lambda: NOW + 0.4))):  # CI
    # failure: rekeying every 0.5 s at 1 Hz did 11 exchanges in 10 s, not 20
        lk = settled(**change)
        assert not link_settled(lk, NOW, gso=True), change
        assert period([settled(), lk], NOW, gso=True, busy=False) == TICK, change
    for rk in (SimpleNamespace(period=None, next_deadline=lambda: None),  # only answers
               SimpleNamespace(period=120.0, next_deadline=lambda: NOW + 0.4)):  # default
        assert link_settled(settled(rekey=rk), NOW, gso=True)
    # without offload, a GSO proof is never due
    assert link_settled(settled(gso_ok=False, gso_next_proof=NOW), NOW, gso=False)
    assert period([settled()], NOW, gso=True, busy=True) == TICK  # e.g. a handshake


def test_a_settled_pair_ticks_slowly_and_traffic_speeds_it_up() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        await wait_for(lambda: a.stats["ticks_idle"] >= 2 and b.stats["ticks_idle"] >= 2,
                       timeout=20)
        assert all(lk.state == "established" for lk in a.links.values())
        mac_a, mac_b = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
        fast = b.stats["ticks"]
        # 40 frames every 0.3 s (a flow, DATA_RATE): b ticks at 4 Hz. For 3 s: the 1 Hz
        # tick may have just begun when the flow starts, so the flow is seen up to 1 s late
        # (with 1.8 s, a CI run under load saw 3 ticks).
        for _ in range(10):
            for _ in range(40):
                pa.inject(frame(mac_b, mac_a))
            await asyncio.sleep(0.3)
        assert pb.delivered
        assert b.stats["ticks"] - fast >= 4
        assert b.stats["ticks_busy_data"] >= 4  # each 4 Hz tick says why (status counters)

    asyncio.run(pair(body))


def test_a_trickle_of_frames_is_no_flow_and_a_flow_keeps_4_hz_for_data_quiet() -> None:
    """In an idle mesh of 50 each router receives 1.3-3 broadcast frames a second (hosts'
    ARP, ND, MLD), some in bursts: that must not hold it at 4 Hz. A flow does, until
    DATA_QUIET."""
    w, frames, now = DataWatch(), 0, NOW
    for k in range(60):  # a few frames a second, a burst of 50 now and then, at 1 Hz
        frames += 50 if k % 13 == 0 else 3
        now += IDLE_TICK
        assert not w.flowing(frames, now)
    frames += int(DATA_RATE)  # a flow: DATA_RATE frames within a second
    now += IDLE_TICK
    assert w.flowing(frames, now)
    t0 = now
    while now < t0 + DATA_QUIET - TICK:  # then quiet: 4 Hz until DATA_QUIET
        now += TICK
        assert w.flowing(frames, now)
    now += 2 * TICK
    assert not w.flowing(frames, now)
    # at 4 Hz (busy for another reason) two broadcasts in a quarter second are no flow:
    # the rate is counted over at least a second; DATA_RATE frames within it are
    for _ in range(40):
        frames += 2 if _ % 4 == 0 else 0
        now += TICK
        assert not w.flowing(frames, now)
    frames += int(DATA_RATE)
    now += TICK
    assert w.flowing(frames, now)


def test_a_topology_change_keeps_4_hz_for_data_quiet() -> None:
    """A mesh forming or healing converges at the 4 Hz pace it had before the trickle
    rule (its records go on at the tick); a quiet topology lets the ticker slow down."""
    w = DataWatch()
    assert w.moving(0, NOW) is False
    assert w.moving(1, NOW + 1)  # a record changed
    assert w.moving(1, NOW + 1 + DATA_QUIET - 0.01)
    assert not w.moving(1, NOW + 1 + DATA_QUIET)
