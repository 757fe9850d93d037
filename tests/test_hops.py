"""Measured hop limits (traversal.hops, traversal.hopsock): codec, verdict, the echo
exchange on loopback (no NAT: every probe socket hears it), bounds and bad input."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from sleeve.proto.stats import Counters
from sleeve.traversal import hops, plan
from sleeve.traversal.hopsock import Echoer, HopMeter, KminProbe
from sleeve.traversal.predict import NatKind

NONCE = bytes(range(16))


def test_echo_codec_and_bad_echoes() -> None:
    assert hops.decode_echo(hops.echo(NONCE, 3), NONCE) == 3
    assert hops.decode_echo(hops.echo(NONCE, 3), b"\xff" * 16) is None  # not our nonce
    assert hops.decode_echo(hops.echo(NONCE, 3)[:-1], NONCE) is None
    assert hops.decode_echo(hops.echo(NONCE, 9), NONCE) is None  # k out of range
    assert hops.decode_echo(b"XXXX" + hops.echo(NONCE, 1)[4:], NONCE) is None


@pytest.mark.parametrize("m", [{}, {"n": b"x", "p": [5000]}, {"n": NONCE, "p": []},
                               {"n": NONCE, "p": [5000] * 5}, {"n": NONCE, "p": [80]},
                               {"n": NONCE, "p": [True]}, {"n": "s" * 16, "p": [5000]}])
def test_malformed_hopq_is_refused(m: dict[str, Any]) -> None:
    assert hops.decode_hopq(m) is None


def test_verdicts() -> None:
    v = hops.verdict(2, "", 3, "it answered")
    assert (v.ttl, v.adjacent, v.measured) == (2, False, True)
    assert "expires before the far NAT" in v.why
    v = hops.verdict(2, "", 2, "it answered")
    assert v.adjacent and v.why.startswith("far NAT adjacent: low TTL cannot avoid it")
    v = hops.verdict(None, "our NAT is random, not port-keeping", 3, "")
    assert not v.measured and v.ttl is None and "random" in v.why
    assert hops.verdict(3, "", None, "no answer").ttl == 3
    # the adjacent crosser waits for the stale entry: nothing before ADJ_CROSS
    p = plan.Plan(False, 1, adjacent=True)
    assert not any(p.step(t / 4)[0] for t in range(int(plan.ADJ_CROSS * 4)))
    assert p.step(plan.ADJ_CROSS) == (True, None) and not p.first_crossing(2.0)
    assert plan.ADJ_CROSS == plan.OPEN_TIME + hops.UDP_UNREPLIED + hops.MARGIN


def test_far_distance_from_icmp_answers() -> None:
    far = "198.18.70.12"
    te = {1: ("198.18.62.1", 11), 2: ("198.18.61.1", 11), 3: ("198.18.60.254", 11)}
    assert hops.far_distance({**te, 5: (far, 3), 4: (far, 3)}, far, 8, 3)[0] == 4
    assert hops.far_distance(te, far, 8, 3) == (4, "silent; one past the last router that "
                                                   "answered")
    assert hops.far_distance({}, far, 8, 3) == (None, "no answer")
    assert hops.far_distance({8: ("198.18.1.1", 11)}, far, 8, 3)[0] is None  # all routers


def mediator(sock: socket.socket) -> Any:
    sent: list[dict[str, Any]] = []
    return SimpleNamespace(peer=b"\x05" * 8, endpoint=("127.0.0.1", sock.getsockname()[1]),
                           endpoint_learnt=True, virtual=False, usable=True, sent=sent,
                           send_control=sent.append)


def test_k_min_echo_on_loopback_and_bounds() -> None:
    med_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    med_sock.bind(("127.0.0.1", 0))
    drops, stats = Counters(), Counters()
    med = mediator(med_sock)
    probe = KminProbe(med, 0.0, drops)
    try:
        assert len(probe.socks) == hops.PROBE_TTLS
        probe.ask(med)
        (q,) = med.sent
        # the mediator side: echoes to the address it sees the peer at, rate-limited
        echoer = Echoer(drops, stats)
        us = SimpleNamespace(peer=b"\x01" * 8, endpoint=("127.0.0.1", 1),
                             endpoint_learnt=True)
        echoer.on_hopq(us, q, med_sock, now=100.0)
        echoer.on_hopq(us, q, med_sock, now=101.0)
        assert stats["hopq_echoed"] == 1 and drops["hopq_rate"] == 1
        echoer.on_hopq(us, {"t": "hopq", "n": b"short", "p": [5000]}, med_sock, now=200.0)
        assert drops["bad_hopq"] == 1
        # forged echoes: another nonce, and one from elsewhere
        med_sock.sendto(hops.echo(b"\x00" * 16, 1), ("127.0.0.1", probe.ports[0]))
        time.sleep(0.05)
        probe.poll()
        assert probe.result() == (1, "echo from the mediator on TTL [1, 2, 3, 4]")
        assert drops["hop_bad_echo"] == 1
        # an echo from elsewhere than the mediator's address is not believed
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.2", 0))
        other.sendto(hops.echo(probe.nonce, 1), ("127.0.0.1", probe.ports[0]))
        other.close()
        time.sleep(0.05)
        probe.poll()
        assert drops["hop_echo_wrong_source"] == 1
        assert probe.done(hops.MEASURE_TIME) and not probe.done(0.1)
    finally:
        probe.close()
        med_sock.close()
    assert probe.socks == []


def test_meter_measures_only_behind_a_port_keeping_nat() -> None:
    meter = HopMeter(Counters(), Counters())
    meter.tick(0.0, lambda: NatKind("random"), [], {})
    assert not meter.measuring and "random" in meter.why
    meter.tick(0.5, lambda: NatKind("preserving"), [], {})
    assert "random" in meter.why  # re-checked only every RECHECK
    meter.tick(1.0, lambda: NatKind("preserving"), [], {})
    assert not meter.measuring and "no public peer" in meter.why
    assert meter.start_far("198.18.70.12", 0.0) is None  # no k_min: nothing to compare
    assert meter.decide(None, 0.0) is not None  # nothing measured: no wait
