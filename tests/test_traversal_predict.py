"""Port prediction (traversal.predict) and how punching uses it (fake links, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from sleeve.traversal import plan, predict
from sleeve.traversal.predict import Observations, Prediction, classify
from tests.test_traversal_retry import MED, PEER, FakeLink, rig

PUB = "198.18.70.11"


def obs(*ports: int, host: str = PUB) -> list[tuple[str, tuple[str, int]]]:
    return [(f"198.18.70.{i + 1}", (host, p)) for i, p in enumerate(ports)]


def test_classify_tells_nat_behaviours_apart() -> None:
    assert classify(6783, []).kind == "unknown"
    assert classify(6783, obs(40000)).kind == "unknown"  # one flow says nothing of the next
    assert classify(6783, obs(6783)).kind == "preserving"  # but it kept our port
    assert classify(6783, obs(6783, 31499)).kind == "preserving"  # moved on a clash only
    assert classify(6783, obs(6783, 6783)).kind == "preserving"
    assert classify(6783, obs(40000, 40000)).kind == "cone"
    assert classify(6783, obs(40001, 45000)).kind == "random"
    seq = classify(6783, obs(40003, 40001, 40005))
    assert seq.kind == "sequential"
    assert seq.prediction == Prediction(PUB, 40005, 2)
    # a LAN observer (our own address) does not outvote the public ones
    mixed = [*obs(40001, 40002), ("198.18.71.3", ("198.18.71.2", 6783))]
    assert classify(6783, mixed).prediction == Prediction(PUB, 40002, 1)
    # one observer address counts once (a new flow needs a new destination)
    assert classify(6783, [("198.18.70.1", (PUB, 40001)),
                           ("198.18.70.1", (PUB, 40002))]).kind == "unknown"


def test_predicted_ports_are_a_small_bounded_window_past_the_last() -> None:
    ports = Prediction(PUB, 40005, 1).ports()
    assert ports == list(range(40006, 40006 + predict.WINDOW))
    stepped = Prediction(PUB, 40005, 2).ports()
    assert stepped[:predict.WINDOW] == [40005 + 2 * k for k in range(1, predict.WINDOW + 1)]
    assert set(range(40006, 40006 + 2 * predict.WINDOW)) == set(stepped)  # and between
    assert len(Prediction(PUB, 1000, predict.MAX_DELTA).ports()) == predict.MAX_PROBES
    assert max(Prediction(PUB, 65530, 3).ports()) <= 65535


@pytest.mark.parametrize("bad", [
    ["198.18.70.11", 40000], ["198.18.70.11", 0, 1], ["198.18.70.11", 40000, 0],
    ["198.18.70.11", 40000, predict.MAX_DELTA + 1], ["x", 40000, 1],
    ["198.18.70.11", 40000, True], "198.18.70.11:40000", ["127.0.0.1", 40000, 1],
])
def test_a_malformed_prediction_is_refused(bad: Any) -> None:
    assert predict.decode_pred({"pred": bad}) is False
    assert predict.decode_pred({}) is None
    assert predict.decode_pred({"pred": [PUB, 40000, 2]}) == Prediction(PUB, 40000, 2)


def test_observations_are_bounded_and_told_once_per_endpoint() -> None:
    o = Observations()
    for i in range(predict.MAX_OBSERVERS + 5):
        o.on_seen(bytes([i]) * 8, f"198.18.70.{i}", (PUB, 40000 + i))
    assert len(o.seen) == predict.MAX_OBSERVERS
    assert o.to_tell(PEER, (PUB, 1)) and not o.to_tell(PEER, (PUB, 1))
    assert o.to_tell(PEER, (PUB, 2))  # it moved: tell again
    o.forget(PEER, still_linked=True)
    assert o.to_tell(PEER, (PUB, 2))  # a new link to it hears it again


def test_peers_tell_what_they_see_and_bad_reports_are_dropped() -> None:
    tr, table, _, _ = rig()
    med = table.links[MED]
    tr.tick(0.0)
    assert {"t": "seen", "ep": list(med.endpoint)} in med.sent
    n = len(med.sent)
    tr.tick(0.25)
    assert len(med.sent) == n  # once per endpoint
    for bad in ({"t": "seen"}, {"t": "seen", "ep": ["198.18.1.1", 0]},
                {"t": "seen", "ep": "x"}):
        tr.on_seen(med, bad)  # type: ignore[arg-type]
    assert tr.drops["bad_seen"] == 3
    tr.on_seen(med, {"t": "seen", "ep": ["127.0.0.1", 6783]})  # type: ignore[arg-type]
    assert tr.drops["bad_seen"] == 3  # peers on one host: well formed
    tr.on_seen(med, {"t": "seen", "ep": [PUB, 40001]})  # type: ignore[arg-type]
    assert tr.nat().kind == "unknown"
    other = table.links[b"\x06" * 8] = FakeLink(b"\x06" * 8, virtual=False)
    other.endpoint = ("198.18.70.99", 6783)
    tr.on_seen(other, {"t": "seen", "ep": [PUB, 40002]})  # type: ignore[arg-type]
    assert tr.nat().prediction == Prediction(PUB, 40002, 1)
    assert tr.status(1.0)["nat"]["kind"] == "sequential"


def test_behind_a_sequential_nat_we_open_and_announce_the_prediction() -> None:
    tr, table, underlay, _ = rig()
    med = table.links[MED]
    other = table.links[b"\x06" * 8] = FakeLink(b"\x06" * 8, virtual=False)
    other.endpoint = ("198.18.70.99", 6783)
    tr.on_seen(med, {"t": "seen", "ep": [PUB, 40001]})  # type: ignore[arg-type]
    tr.on_seen(other, {"t": "seen", "ep": [PUB, 40002]})  # type: ignore[arg-type]
    # indexes 6 ^ 8 even: the session indexes alone would make us (the smaller id) cross
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
    tr.tick(10.0)
    att = tr.peers[PEER].current
    assert att is not None and att.plan.opener and att.ours == Prediction(PUB, 40002, 1)
    cand = next(m for m in link.sent if m["t"] == "cand")
    assert cand["pred"] == [PUB, 40002, 1]
    assert tr.stats["punch_predict_attempts"] == 1
    underlay.sent.clear()
    tr.tick(10.25)
    assert underlay.sent and all(ttl is not None for _, ttl in underlay.sent)  # hop-limited
    link.endpoint_learnt = True
    link.endpoint = ("198.18.70.12", 6783)
    tr.tick(10.5)
    assert tr.stats["punch_predict_successes"] == 1
    st = tr.status(11.0)["peers"][0]["tried"][0]
    assert "announced ours" in st["prediction"] and "predicted port" in st["result"]


def test_the_far_side_crosses_to_the_predicted_ports() -> None:
    tr, table, underlay, _ = rig()
    # indexes 6 ^ 9 odd: the smaller id (us) would open; the peer's prediction makes us cross
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)
    link.endpoint = link.remote_tcp = (PUB, 40000)  # its NAT's port for the mediator
    # its cand may come before our tick saw the link
    tr.on_cand(link, {"t": "cand", "eps": [], "pred": [PUB, 40002, 1]})  # type: ignore
    att = tr.peers[PEER].current
    assert att is not None and not att.plan.opener and att.pred == Prediction(PUB, 40002, 1)
    t0 = att.started
    tr.tick(t0 + 0.5)
    assert not underlay.sent  # the crosser waits for the opener
    tr.tick(t0 + plan.OPEN_TIME + 0.1)
    sent = {ep for ep, ttl in underlay.sent if ttl is None}
    assert {(PUB, p) for p in range(40003, 40003 + predict.WINDOW)} <= sent
    assert len(underlay.sent) <= predict.MAX_PROBES + 4
    link.endpoint_learnt = True
    link.endpoint = (PUB, 40004)  # the probe that got through
    tr.tick(t0 + 2)
    assert tr.stats["punch_predict_successes"] == 1 and tr.stats["punch_predict_attempts"] == 1
    st = tr.status(t0 + 3)
    assert "probed the peer's predicted" in st["peers"][0]["tried"][0]["prediction"]
    # a malformed prediction drops the whole message, counted
    tr.on_cand(link, {"t": "cand", "eps": [], "pred": [PUB, 40002, 99]})  # type: ignore
    assert tr.drops["bad_cand"] == 1

