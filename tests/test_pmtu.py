"""PMTU prober (sans-IO) on simulated paths with a fake clock.

A ``Path`` drops datagrams above its MTU without a word (a black hole), and
optionally has a kernel limit above which sends fail with EMSGSIZE (ICMP got
through to the kernel). Acks come back after an RTT unless the link is down.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.proto import datagram as dg
from sleeve.proto import pmtu
from sleeve.proto.pmtu import PmtuProber, Probe
from sleeve.proto.session import DataSession

FLOOR4, CEIL4 = pmtu.datagram_bounds(ipv6=False)
TICK = 0.25  # the node's timer period


@dataclass
class Path:
    mtu: int  # largest datagram that arrives
    kernel: int | None = None  # sends above this fail with EMSGSIZE
    up: bool = True
    rtt: float = 0.05
    in_flight: list[tuple[float, int, int]] = field(default_factory=list)  # (due, id, size)
    sent: list[int] = field(default_factory=list)

    def send(self, p: PmtuProber, probe: Probe, now: float) -> None:
        self.sent.append(probe.size)
        if self.kernel is not None and probe.size > self.kernel:
            p.on_emsgsize(probe.size, now)
        elif self.up and probe.size <= self.mtu:
            self.in_flight.append((now + self.rtt, probe.probe_id, probe.size))

    def deliver(self, p: PmtuProber, now: float) -> None:
        due = [a for a in self.in_flight if a[0] <= now]
        self.in_flight = [a for a in self.in_flight if a[0] > now]
        for _, pid, size in due:
            p.on_ack(pid, now, size)


def run(p: PmtuProber, path: Path, start: float, until: float) -> float:
    """Drive the prober like the node's ticker; return the time it reached ``complete``."""
    t = start
    done = -1.0
    while t < until:
        path.deliver(p, t)
        for probe in p.poll(t):
            assert p.floor <= probe.size <= p.ceiling
            path.send(p, probe, t)
        assert len(p.outstanding) <= 3
        assert p.floor <= p.current <= p.ceiling
        if p.state == pmtu.COMPLETE and done < 0:
            done = t
        t += TICK
    return done


def test_bounds_follow_the_underlay() -> None:
    assert pmtu.datagram_bounds(ipv6=False) == (576 - 28, 1472)
    assert pmtu.datagram_bounds(ipv6=True) == (1280 - 48, 1452)
    assert pmtu.datagram_bounds(ipv6=False, link_mtu=9000) == (548, 8972)
    assert pmtu.datagram_bounds(ipv6=False, link_mtu=400) == (372, 372)
    with pytest.raises(ValueError):
        pmtu.datagram_bounds(ipv6=True, link_mtu=1000)
    # 1500 underlay - 28 UDP/IPv4 - 36 sleeve - 14 Ethernet, minus 16 when relayed
    assert pmtu.overlay_mtu(CEIL4) == 1422
    assert pmtu.overlay_mtu(CEIL4, peer_ids=2) == 1406
    with pytest.raises(ValueError):
        PmtuProber(1000, 1200, 0.0)
    with pytest.raises(ValueError):
        PmtuProber(1472, 10, 0.0)


def test_clean_path_converges_in_two_round_trips() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    assert (p.state, p.current) == (pmtu.BASE, FLOOR4)
    path = Path(mtu=CEIL4)
    done = run(p, path, 0.0, 5.0)
    assert path.sent == [FLOOR4, CEIL4]
    assert 0 < done <= 1.0
    assert (p.state, p.current) == (pmtu.COMPLETE, CEIL4)
    assert "interface limit" in p.reason


@settings(max_examples=60, deadline=None)
@given(ceiling=st.integers(FLOOR4, 9000), data=st.data())
def test_black_hole_converges_to_the_real_path_mtu(ceiling: int, data: st.DataObject) -> None:
    path_mtu = data.draw(st.integers(FLOOR4, ceiling + 200))
    p = PmtuProber(ceiling, FLOOR4, 100.0)
    path = Path(mtu=path_mtu)
    # one optimistic try, then binary search; a lost size costs 3 timeouts plus a tick
    budget = 2 + (ceiling - FLOOR4 + 1).bit_length() * (3 * 1.25 + 0.5)
    done = run(p, path, 100.0, 100.0 + budget)
    assert done > 0, p.reason
    assert p.current == min(path_mtu, ceiling)
    assert max(path.sent) <= ceiling


def test_emsgsize_converges_without_waiting_for_timeouts() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    path = Path(mtu=1400, kernel=1400)
    done = run(p, path, 0.0, 10.0)
    assert p.current == 1400
    # every size above the kernel's limit fails at once; only acks take time
    assert done <= 12 * TICK
    assert p.ceiling == 1400
    assert len(path.sent) == len(set(path.sent))  # no size needed a retry


def test_emsgsize_on_data_drops_to_floor_and_searches_again() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    path = Path(mtu=CEIL4)
    run(p, path, 0.0, 2.0)
    assert p.current == CEIL4
    path.mtu = path.kernel = 1300  # an ICMP reached the kernel: the route PMTU is 1300
    p.on_emsgsize(1472, 2.0)  # a data datagram failed
    assert (p.state, p.current, p.ceiling) == (pmtu.SEARCH, FLOOR4, 1471)
    assert "EMSGSIZE" in p.reason
    run(p, path, 2.0, 6.0)
    assert (p.state, p.current) == (pmtu.COMPLETE, 1300)
    # a stale report above the ceiling changes nothing
    p.on_emsgsize(1400, 6.0)
    assert (p.state, p.current) == (pmtu.COMPLETE, 1300)


def test_emsgsize_below_the_floor_lowers_the_floor() -> None:
    # Linux caps the route PMTU at min_pmtu 552 (a 524-byte datagram), below our 548.
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    path = Path(mtu=524, kernel=524)
    run(p, path, 0.0, 10.0)
    assert p.floor == p.current == 524
    assert p.state == pmtu.COMPLETE


def test_reprobes_after_the_interval_and_never_exceeds_ceiling() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0, reprobe_interval=600.0, confirm_interval=None)
    path = Path(mtu=1400)
    done = run(p, path, 0.0, 60.0)
    assert p.current == 1400
    path.mtu = 9000  # the path grows back (bigger than our interface allows)
    run(p, path, 60.0, done + 599.0)
    assert p.current == 1400  # nothing before the interval
    run(p, path, done + 599.0, done + 610.0)
    assert (p.state, p.current) == (pmtu.COMPLETE, CEIL4)
    assert max(path.sent) == CEIL4


def test_quiet_between_searches_apart_from_confirmations() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0, confirm_interval=60.0)
    path = Path(mtu=CEIL4)
    run(p, path, 0.0, 2.0)
    path.sent.clear()
    run(p, path, 2.0, 302.0)
    assert path.sent == [CEIL4] * 5
    assert p.next_deadline > 302.0


def test_confirmation_detects_a_new_black_hole() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0, confirm_interval=30.0)
    path = Path(mtu=CEIL4)
    run(p, path, 0.0, 2.0)
    path.mtu = 1300  # e.g. a tunnel appeared on the path; ICMP filtered
    seen: set[str] = set()
    t = 2.0
    while t < 60.0:
        run(p, path, t, t + TICK)
        seen.add(p.state)
        t += TICK
    assert pmtu.BASE in seen
    assert (p.state, p.current) == (pmtu.COMPLETE, 1300)


def test_dead_link_is_an_error_not_a_tiny_mtu() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    path = Path(mtu=CEIL4, up=False)
    run(p, path, 0.0, 60.0)
    assert (p.state, p.current) == (pmtu.ERROR, FLOOR4)
    assert "path down" in p.reason
    # retries are paced: 3 probes per 5 s retry, not a flood
    assert len(path.sent) <= 3 * (60 // 5 + 1)
    path.up = True
    run(p, path, 60.0, 70.0)
    assert (p.state, p.current) == (pmtu.COMPLETE, CEIL4)


def test_black_hole_report_restarts_from_floor() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    path = Path(mtu=CEIL4)
    run(p, path, 0.0, 2.0)
    path.mtu = 1200
    p.on_black_hole(2.0)
    assert (p.state, p.current, p.reason) == (pmtu.BASE, FLOOR4, "black hole reported")
    p.on_black_hole(2.1)  # repeated reports do not restart an ongoing recovery
    run(p, path, 2.0, 40.0)
    assert (p.state, p.current) == (pmtu.COMPLETE, 1200)


def test_only_matching_acks_count() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    (base,) = p.poll(0.0)
    assert not p.on_ack(base.probe_id + 1, 0.1)  # unknown id
    assert not p.on_ack(base.probe_id, 0.1, size=base.size + 1)  # size does not match
    assert p.on_ack(base.probe_id, 0.1, size=base.size)
    assert not p.on_ack(base.probe_id, 0.2)  # duplicate
    (first,) = p.poll(0.25)
    assert first.size == CEIL4
    retries = [first] + [p.poll(0.25 + 1.01 * i)[0] for i in (1, 2)]
    assert len({r.probe_id for r in retries}) == 3
    assert p.outstanding == tuple(r.probe_id for r in retries)
    # any attempt's ack proves the size
    assert p.on_ack(retries[0].probe_id, 2.5)
    assert p.current == CEIL4
    assert p.outstanding == ()


def test_late_ack_after_loss_is_ignored() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    (base,) = p.poll(0.0)
    p.on_ack(base.probe_id, 0.0)
    ids = [p.poll(t)[0].probe_id for t in (0.0, 1.0, 2.0)]
    nxt = p.poll(3.0)  # the third timeout: CEIL4 is lost, the next size starts
    assert nxt and nxt[0].size < CEIL4
    assert not p.on_ack(ids[0], 3.1)
    assert p.current == FLOOR4


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["tick", "ack", "emsgsize", "hole", "stale"]),
                              st.integers(0, 2000)), max_size=300))
def test_any_event_sequence_keeps_state_bounded(ops: list[tuple[str, int]]) -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    now = 0.0
    sent: list[Probe] = []
    for op, n in ops:
        if op == "tick":
            now += n / 1000
            out = p.poll(now)
            assert len(out) <= 1
            for probe in out:
                assert pmtu.MIN_DATAGRAM <= p.floor <= probe.size <= p.ceiling <= CEIL4
            sent += out
            sent = sent[-10:]
        elif op == "ack" and sent:
            p.on_ack(sent[n % len(sent)].probe_id, now)
        elif op == "emsgsize":
            p.on_emsgsize(n, now)
        elif op == "hole":
            p.on_black_hole(now)
        else:
            p.on_ack(n, now, n)
        assert pmtu.MIN_DATAGRAM <= p.floor <= p.current <= p.ceiling <= CEIL4
        assert len(p.outstanding) <= pmtu.MAX_PROBES
        assert p.state in (pmtu.BASE, pmtu.SEARCH, pmtu.COMPLETE, pmtu.ERROR)
        assert p.next_deadline >= 0
    assert set(p.status()) == {"pmtu", "pmtu_state", "pmtu_reason", "pmtu_ceiling",
                               "pmtu_probing"}


# ------------------------------------------------------------------ wire format

@pytest.mark.parametrize("size", [pmtu.MIN_DATAGRAM, FLOOR4, 1452, CEIL4, 8972])
def test_probe_record_seals_to_exactly_the_probe_size(size: int) -> None:
    a = DataSession(1, 2, os.urandom(32), os.urandom(32), encrypt=True)
    body = pmtu.probe_record(Probe(0xDEADBEEF, size))
    assert len(a.seal(body)) == size
    (rec,) = dg.iter_records(body)
    assert (rec.kind, rec.src, rec.dst, rec.hops) == (dg.KIND_PROBE, None, None, 0)
    msg = pmtu.parse_probe(rec.payload)
    assert msg == pmtu.ProbeMessage(0xDEADBEEF, False, 0)
    # the padding is zeros, as datagram.py documents for KIND_PROBE
    assert bytes(rec.payload[4:]) == bytes(len(rec.payload) - 4)


def test_probe_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError):
        pmtu.probe_record(Probe(1, pmtu.MIN_DATAGRAM - 1))


def test_ack_record_round_trip() -> None:
    rec_bytes = pmtu.ack_record(7, 1472)
    assert len(rec_bytes) == dg.REC_LEN + 7
    (rec,) = dg.iter_records(rec_bytes)
    assert rec.kind == dg.KIND_PROBE
    assert pmtu.parse_probe(rec.payload) == pmtu.ProbeMessage(7, True, 1472)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40))
def test_parse_probe_never_raises(payload: bytes) -> None:
    msg = pmtu.parse_probe(payload)
    if msg is not None:
        assert 0 <= msg.probe_id < 2**32
        assert msg.is_ack == (len(payload) == 7 and payload[4] == 1)


def test_a_raised_interface_limit_resumes_the_search_above_1500() -> None:
    """A jumbo underlay: the route's MTU, read after the search completed at 1472."""
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    path = Path(mtu=8972)
    assert run(p, path, 0.0, 10.0) >= 0 and p.current == CEIL4
    _, jumbo = pmtu.datagram_bounds(ipv6=False, link_mtu=9000)
    p.set_limit(jumbo, 10.0)
    assert p.state == pmtu.SEARCH and p.ceiling == jumbo
    assert run(p, path, 10.0, 20.0) >= 0 and p.current == 8972
    assert "interface limit" in p.reason


def test_a_jumbo_limit_on_a_smaller_path_finds_the_path() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    _, jumbo = pmtu.datagram_bounds(ipv6=False, link_mtu=9000)
    p.set_limit(jumbo, 0.0)  # read before the first probe, as the node does
    assert run(p, Path(mtu=4000), 0.0, 60.0) >= 0 and p.current == 4000


def test_a_lowered_interface_limit_acts_like_emsgsize() -> None:
    p = PmtuProber(CEIL4, FLOOR4, 0.0)
    assert run(p, Path(mtu=CEIL4), 0.0, 10.0) >= 0
    p.set_limit(1200, 10.0)
    assert p.ceiling == 1200 and p.current == FLOOR4 and p.state == pmtu.SEARCH
    assert run(p, Path(mtu=CEIL4), 10.0, 30.0) >= 0 and p.current == 1200


def test_route_mtu_reads_the_route_to_an_endpoint() -> None:
    from sleeve.forward.underlay import route_mtu

    lo = int(pathlib.Path("/sys/class/net/lo/mtu").read_text())
    assert route_mtu(("127.0.0.1", 9), False) == min(lo, 65535)  # the device's (IPv4 max)
    assert route_mtu(("::1", 9), True) in (lo, None)  # None: no IPv6 here
