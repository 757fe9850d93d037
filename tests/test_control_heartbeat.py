"""Control heartbeats on a connection the kernel watches (proto.liveness.control_heartbeat,
links.table, control.connections.kernel_keepalive).

Idle, with UDP heard both ways, a control connection with kernel keepalive carries no
heartbeat messages (issue 23: 49 of them each way per 5 s woke an idle router); a side
without UDP sends them marked "need" and the peer answers in kind; a connection with
neither UDP nor TCP for CONTROL_SILENCE is closed, as the read timeout did.
"""

from __future__ import annotations

import asyncio
import itertools
import socket

from sleeve.control.connections import _on_heartbeat, kernel_keepalive
from sleeve.links.fake import FakeWriter, fake_link, sent
from sleeve.links.table import TCP_HEARTBEAT, LinkTable
from sleeve.proto.liveness import (
    ANSWER_NEED,
    CONTROL_SILENCE,
    DEAD_AFTER,
    HB_GRACE,
    control_heartbeat,
)
from sleeve.proto.stats import Counters
from sleeve.traversal.relay import RelayWriter

ME = b"\x05" * 8


def beat(now: float, **kw: object) -> tuple[bool, bool]:
    base: dict[str, object] = dict(kernel_keepalive=True, heard_at=now - 1, confirmed=True,
                                   over_tcp=False, asked_at=0.0)
    base.update(kw)
    b = control_heartbeat(now, **base)  # type: ignore[arg-type]
    return b.send, b.need


def test_udp_both_ways_and_a_watched_connection_need_no_control_heartbeat() -> None:
    assert beat(100.0) == (False, False)
    # without the kernel watching (a relayed control stream, a socket that refused the
    # options): every one, as before, and marked "need": a watched peer with UDP both
    # ways sends none unless asked, and our read timeout needs its messages
    assert beat(100.0, kernel_keepalive=False) == (True, True)
    # no UDP from the peer, the peer does not hear ours, or data over TCP: needed
    for kw in ({"heard_at": 100 - HB_GRACE}, {"confirmed": False}, {"over_tcp": True},
               {"heard_at": 0.0}):
        assert beat(100.0, **kw) == (True, True), kw
    # the peer asked: answered in kind for ANSWER_NEED
    assert beat(100.0, asked_at=100 - ANSWER_NEED + 0.1) == (True, False)
    assert beat(100.0, asked_at=100 - ANSWER_NEED) == (False, False)


def settled(link_peer: bytes = b"\x09" * 8, now: float = 100.0):  # type: ignore[no-untyped-def]
    t = LinkTable(ME, Counters())
    lk = fake_link(link_peer)
    lk.confirmed = lk.told_ok = lk.tcp_keepalive = True
    lk.heard_at = lk.tcp_heard_at = now
    t.register(lk)
    return t, lk


def test_the_table_sends_control_heartbeats_only_when_needed_and_closes_a_silent_link() -> None:
    t, lk = settled()
    for s in range(0, 12):  # UDP heard every second: nothing on the control connection
        lk.heard_at = 100.0 + s
        t.tick(100.0 + s)
    assert [m for m in sent(lk) if m["t"] == "hb"] == []
    # UDP stops: after HB_GRACE the table asks over TCP, every TCP_HEARTBEAT
    for s in range(12, 12 + int(HB_GRACE) + 1):
        t.tick(100.0 + s)
    hbs = [m for m in sent(lk) if m["t"] == "hb"]
    assert hbs == [{"t": "hb", "n": 1}]
    # nothing at all from the peer for CONTROL_SILENCE: closed (abort: a hung peer
    # would never take close()'s flush), once
    w = lk.writer
    assert isinstance(w, FakeWriter)
    t.tick(111.0 + CONTROL_SILENCE - 0.01)
    assert not w.transport.aborted
    t.tick(111.0 + CONTROL_SILENCE)
    assert w.transport.aborted and lk.silenced and t.stats["control_silent"] == 1
    t.tick(112.0 + CONTROL_SILENCE)
    assert t.stats["control_silent"] == 1


def test_a_link_without_kernel_keepalive_keeps_its_heartbeats_and_its_read_timeout() -> None:
    t, lk = settled()
    lk.tcp_keepalive = False
    for s in range(0, 11):
        lk.heard_at = 100.0 + s
        t.tick(100.0 + s)
    assert [m for m in sent(lk) if m["t"] == "hb"] == [{"t": "hb", "n": 1}] * 3  # 0, 5, 10 s
    t.tick(100.0 + 2 * CONTROL_SILENCE)
    w = lk.writer
    assert isinstance(w, FakeWriter) and not w.transport.aborted  # connections' timeout


def test_a_need_heartbeat_is_answered_in_kind_so_the_asker_never_goes_silent() -> None:
    """UDP from a to b breaks at 200 s. b stops hearing a, asks over TCP after HB_GRACE;
    a (which still hears b's UDP and whose confirmation only goes at DEAD_AFTER) answers,
    so b hears a over TCP long before CONTROL_SILENCE."""
    ta, a = settled(b"\x09" * 8, 0.0)  # a's link to b
    tb, b = settled(b"\x01" * 8, 0.0)  # b's link to a
    got_tcp_from_a: list[float] = []
    for k in range(0, 260):
        now = float(k)
        b.heard_at = now if now < 200 else b.heard_at  # a's datagrams reach b until 200
        a.heard_at = now  # b's keep reaching a
        if now >= 200 + DEAD_AFTER:
            a.confirmed = False  # b's udp_lost arrived
        for t, lk, other, rx in ((ta, a, b, got_tcp_from_a), (tb, b, a, None)):
            n = len(sent(lk))
            t.tick(now)
            for m in sent(lk)[n:]:
                if m["t"] == "hb":
                    other.tcp_heard_at = now
                    _on_heartbeat(other, m)
                    other.hb_asked_at = now if m.get("n") else other.hb_asked_at
                    if rx is not None:
                        rx.append(now)
    assert [t for t in got_tcp_from_a if t < 200] == []  # idle: nothing over TCP
    first = min(t for t in got_tcp_from_a if t >= 200)
    assert first <= 200 + HB_GRACE + 2, first
    after = [t for t in got_tcp_from_a if t >= 200] + [259.0]
    assert max(y - x for x, y in itertools.pairwise(after)) <= TCP_HEARTBEAT + 1
    assert not b.silenced and not a.silenced


def test_kernel_keepalive_is_set_on_a_tcp_connection_and_not_on_a_relayed_stream() -> None:
    async def body() -> None:
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        assert kernel_keepalive(w)
        s = w.get_extra_info("socket")
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == \
            int(CONTROL_SILENCE * 1000)
        w.close()
        srv.close()
    asyncio.run(body())
    relay = RelayWriter(b"\x01" * 8, lambda m: True, lambda: 0, None, b"\x02" * 8)
    assert not kernel_keepalive(relay)


def test_a_watched_peer_answers_an_unwatched_side_so_an_idle_link_lives() -> None:
    """One side's socket refused TCP_USER_TIMEOUT (unwatched: read timeout), the other
    is watched and hears UDP both ways: the unwatched side must still hear a control
    message within every CONTROL_SILENCE (review of the idle merge: it closed the link
    every 20 s)."""
    ta, la = settled(b"\x09" * 8)
    tb, lb = settled(b"\x01" * 8)
    lb.tcp_keepalive = False
    last_b_heard = 100.0
    worst = 0.0
    for s in range(0, 61):
        now = 100.0 + s
        la.heard_at = lb.heard_at = now  # UDP both ways
        for table, me, other in ((ta, la, lb), (tb, lb, la)):
            before = len(sent(me))
            table.tick(now)
            for m in sent(me)[before:]:
                if m["t"] == "hb":
                    if m.get("n"):  # as _on_heartbeat does, on this clock
                        other.hb_asked_at = now
                    other.tcp_heard_at = now
                    if other is lb:
                        worst = max(worst, now - last_b_heard)
                        last_b_heard = now
    worst = max(worst, 160.0 - last_b_heard)
    assert worst < CONTROL_SILENCE, worst
