"""--no-port-prediction and --no-spray (issue 24): each layer of the config, and what
the punch then does not do (traversal.punch with fake links, no sockets)."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from sleeve.cli import config_from_args, parse_args
from sleeve.traversal import plan
from tests.test_traversal_retry import MED, PEER, FakeLink, rig
from tests.test_traversal_spray import NAT, seen_random

PUB = "198.18.70.11"


@pytest.mark.parametrize("how", ["default", "flag", "env", "file"])
def test_switches_from_flag_env_and_file(how: str, tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEVE_STATE_DIR", str(tmp_path))
    argv = ["launch", "--open", "--no-encryption"]
    if how == "flag":
        argv += ["--no-port-prediction", "--no-spray"]
    elif how == "env":
        monkeypatch.setenv("SLEEVE_NO_PORT_PREDICTION", "1")
        monkeypatch.setenv("SLEEVE_NO_SPRAY", "yes")
    elif how == "file":
        f = tmp_path / "sleeve.toml"
        f.write_text("no-port-prediction = true\nno_spray = true\n")
        argv += ["--config", str(f)]
    cfg = config_from_args(parse_args(argv))
    off = how != "default"
    assert cfg.port_prediction is not off and cfg.spray is not off


def tr_with(**kw: Any) -> Any:
    tr, table, underlay, _ = rig()
    for k, v in kw.items():
        setattr(tr, k, v)
    return tr, table, underlay


def test_no_port_prediction_neither_announces_nor_probes() -> None:
    tr, table, underlay = tr_with(prediction=False)
    other = table.links[b"\x06" * 8] = FakeLink(b"\x06" * 8, virtual=False)
    other.endpoint = ("198.18.70.99", 6783)
    tr.on_seen(table.links[MED], {"t": "seen", "ep": [PUB, 40001]})
    tr.on_seen(other, {"t": "seen", "ep": [PUB, 40002]})
    assert tr.nat().kind == "sequential"  # still classified and shown
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
    tr.tick(10.0)
    att = tr.peers[PEER].current
    assert att is not None and att.ours is None and not att.plan.opener  # index roles
    cand = next(m for m in link.sent if m["t"] == "cand")
    assert "pred" not in cand
    # the peer's prediction is declined: nothing goes to its predicted ports
    link.endpoint = link.remote_tcp = (PUB, 40000)
    tr.on_cand(link, {"t": "cand", "eps": [], "pred": [PUB, 40002, 1]})
    assert att.pred is None and tr.stats["punch_predict_declined"] == 1
    for i in range(12):
        tr.tick(10.0 + plan.OPEN_TIME + 0.25 * i)
    assert {ep for ep, _ in underlay.sent} <= {(PUB, 40000), (PUB, 6783), link.endpoint}
    assert tr.stats["punch_predict_attempts"] == 0


def test_no_spray_takes_no_role_and_tells_the_peer() -> None:
    # the random side: would open SOCKETS spray sockets
    tr, table, underlay = tr_with(spraying=False)
    seen_random(tr, table)
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
    tr.on_cand(link, {"t": "cand", "eps": [], "nat": "preserving"})
    att = tr.peers[PEER].current
    assert att is not None and att.spray_role == ""
    tr.tick(att.started + 5)
    assert not underlay.spray and tr.stats["punch_spray_attempts"] == 0
    assert next(m for m in link.sent if m["t"] == "cand")["spray"] is False
    # the easy side: would spray PROBES probes; and a peer that said "spray": false
    for mine in (False, True):
        tr, table, underlay = tr_with(spraying=mine)
        link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=8)
        link.endpoint = link.remote_tcp = (NAT, 23001)
        tr.on_seen(table.links[MED], {"t": "seen", "ep": ["198.18.90.12", 6783]})
        cand: dict[str, Any] = {"t": "cand", "eps": [], "nat": "random"}
        if mine:
            cand["spray"] = False
        tr.on_cand(link, cand)
        att = tr.peers[PEER].current
        assert att is not None and att.sprayer is None
        for i in range(12):
            tr.tick(att.started + 0.25 * i)
        assert len(underlay.sent) < 40 and tr.stats["punch_spray_attempts"] == 0
    tr.on_cand(link, {"t": "cand", "eps": [], "nat": "random", "spray": "no"})
    assert tr.drops["bad_cand"] == 1
