"""Plain `sleeve status` shows the traversal section (issue 24): NAT class, port
mapping, the measured hop limit, and per peer that needed punching its state and story."""

from __future__ import annotations

from typing import Any

from sleeve.status.render import render
from sleeve.traversal import hops
from tests.test_traversal_retry import MED, PEER, FakeLink, rig


def status_with_an_attempt() -> dict[str, Any]:
    tr, table, _, _ = rig()
    tr.on_seen(table.links[MED], {"t": "seen", "ep": ["198.18.70.11", 6783]})
    tr.meter.k_min, tr.meter.why = 2, "echo from the mediator on TTL [2, 3]"
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)
    tr.tick(10.0)
    att = tr.peers[PEER].current
    assert att is not None
    att.verdict = hops.verdict(2, "", 2, "it answered")  # as a measured attempt sets it
    link.endpoint_learnt = True
    tr.tick(10.5)
    trav = tr.status(11.0)
    trav["port_mapping"] = {"enabled": True, "mapped": "198.18.70.11:6783",
                            "protocol": "nat-pmp", "error": "", "asking": None}
    return {"name": "n", "nickname": "h1", "encryption": "on", "port": 6783,
            "interface": "sleeve0", "mtu": 1406, "connections": [], "traversal": trav}


def test_plain_status_shows_the_traversal_section() -> None:
    s = status_with_an_attempt()
    out = render("summary", s)
    print(out)
    assert "Traversal: NAT preserving; port mapping 198.18.70.11:6783 by nat-pmp; k_min 2" in out
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("PUNCH PEER"))
    row = lines[head + 1].split()
    assert row[1] == "direct" and row[2] == "1/1" and "direct after 0.5 s" in lines[head + 1]
    assert "far NAT adjacent: low TTL cannot avoid it" in out
    assert render("traversal", s).count("PUNCH PEER") == 1
    # off, and nothing measured yet
    s["traversal"]["port_mapping"]["enabled"] = False
    s["traversal"]["hop_limit"] = {"k_min": None, "why": "our NAT is random, not port-keeping"}
    out = render("summary", s)
    assert "port mapping off; hop limit unmeasured: our NAT is random" in out


def test_status_says_why_two_port_changing_nats_stay_relayed() -> None:
    tr, table, _, _ = rig()
    other = table.links[b"\x06" * 8] = FakeLink(b"\x06" * 8, virtual=False)
    other.endpoint = ("198.18.70.99", 6783)
    tr.on_seen(table.links[MED], {"t": "seen", "ep": ["198.18.70.11", 40001]})
    tr.on_seen(other, {"t": "seen", "ep": ["198.18.70.11", 40002]})
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)
    link.endpoint = link.remote_tcp = ("198.18.80.12", 50000)
    tr.tick(10.0)
    (tried,) = tr.status(10.5)["peers"][0]["tried"]
    assert tried["limit"] is None  # only ours changes ports: prediction can cross
    tr.on_cand(link, {"t": "cand", "eps": [], "pred": ["198.18.80.12", 50002, 1]})
    (tried,) = tr.status(11.0)["peers"][0]["tried"]
    assert tried["limit"].startswith("both NATs change ports")
