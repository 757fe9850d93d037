"""Review findings on the punching code (session 6), each a test that fails without its fix."""

from __future__ import annotations

import resource
import socket
from types import SimpleNamespace
from typing import Any

from sleeve.forward.underlay import Underlay
from sleeve.links.fake import fake_link
from sleeve.pacing import link_settled
from sleeve.proto.stats import Counters
from sleeve.traversal.predict import classify
from tests.test_traversal_retry import PEER, FakeLink, rig

PUB = "198.18.70.11"


def test_out_of_file_descriptors_opens_fewer_spray_sockets_and_never_raises() -> None:
    u = Underlay(Counters(), Counters(), offload=False)
    u.watch = lambda s: None  # type: ignore[method-assign]  # no loop here
    link = fake_link()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = socket.socket()
    lowest = probe.fileno()
    probe.close()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest + 5, hard))
        n = u.open_spray(link, 64)  # socket() itself fails after a few: EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert 0 < n < 64 and u.stats["spray_socket_errors"] == 1
    finally:
        u.release(link)
        u.close()


def test_a_punch_to_a_name_is_dropped_not_resolved() -> None:
    u = Underlay(Counters(), Counters(), offload=False)
    u.open(socket.AF_INET, "127.0.0.1", 0)
    link = fake_link()
    try:
        # a relayed link whose mediator never saw the peer's UDP: ("relay", port);
        # sendto would resolve "relay" on the event loop
        u.send_ttl(link, ("relay", 6783), b"x", 2)
        assert link.stats["drop_punch_no_address"] == 1 and link.stats["punch_packets"] == 0
    finally:
        u.close()


def test_lan_and_ipv6_observers_do_not_outvote_the_public_ones() -> None:
    lan = [(f"198.18.41.{i}", ("198.18.41.2", 6783)) for i in range(3, 6)]  # see us directly
    v6 = [(f"fd00::{i}", ("fd00::2", 6783)) for i in range(3, 6)]
    public = [("198.18.70.1", (PUB, 40001)), ("198.18.70.2", (PUB, 40002))]
    nat = classify(6783, lan + v6 + public, {"198.18.41.2"})
    assert nat.kind == "sequential" and nat.prediction is not None
    assert nat.prediction.host == PUB


def test_a_prediction_for_another_host_is_refused() -> None:
    tr, table, underlay, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)
    link.endpoint = link.remote_tcp = (PUB, 40000)
    tr.on_cand(link, {"t": "cand", "eps": [], "pred": ["198.18.99.9", 40002, 1]})  # type: ignore
    att = tr.peers[PEER].current
    assert att is not None and att.pred is None and tr.drops["bad_pred_host"] == 1
    tr.tick(att.started + 2)
    assert not any(ep[0] == "198.18.99.9" for ep, _ in underlay.sent)


def test_a_cand_on_a_replaced_connection_leaves_the_live_attempt_alone() -> None:
    tr, table, _, _ = rig()
    old = FakeLink(PEER, virtual=True)
    table.links[PEER] = FakeLink(PEER, virtual=True)
    tr.on_cand(old, {"t": "cand", "eps": []})  # type: ignore[arg-type]
    assert PEER not in tr.peers or tr.peers[PEER].current is None
    assert tr.drops["cand_no_attempt"] == 1


def test_a_punched_link_lets_the_ticker_slow_down() -> None:
    tr, table, _, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True)
    tr.tick(100.0)
    assert tr.attempting()
    link.endpoint_learnt = True  # punched
    tr.tick(100.25)
    assert not tr.attempting()
    now = 200.0
    punched: Any = SimpleNamespace(
        virtual=True, endpoint_learnt=True, usable=True, over_tcp=False, confirmed=True,
        told_ok=True, heard_at=now - 1, gso_ok=True, gso_next_proof=0.0,
        pmtu=SimpleNamespace(next_deadline=now + 600), reasm=[], segsets=[],
        gossip_pending={}, rekey=SimpleNamespace(period=120.0, next_deadline=lambda: now + 60))
    assert link_settled(punched, now, gso=True)
    punched.endpoint_learnt = False  # still punching: 4 Hz
    assert not link_settled(punched, now, gso=True)
