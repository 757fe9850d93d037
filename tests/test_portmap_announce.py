"""A port mapping in punching (traversal.punch): announced when it comes, sent to at full TTL."""

from __future__ import annotations

from typing import Any, cast

from tests.test_traversal_retry import PEER, FakeLink, rig


def test_a_mapping_is_announced_mid_attempt_and_crossed_to_with_the_full_ttl() -> None:
    tr, table, underlay, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)  # we open
    ours: list[tuple[str, int]] = []
    tr.mapped = lambda: ours[0] if ours else None
    tr.tick(10.0)
    assert "mapped" not in link.sent[-1]  # no mapping yet when the attempt started
    ours.append(("198.18.40.11", 6783))  # the gateway answers a second later
    tr.tick(10.25)
    assert link.sent[-1]["t"] == "cand" and link.sent[-1]["mapped"] == [["198.18.40.11", 6783]]
    n = len(link.sent)
    tr.tick(10.5)
    assert len(link.sent) == n  # told once per change, not every tick
    # the peer's mapping is its observed endpoint too (a port-preserving NAT): the
    # opener's hop limit would die before the gateway; the mapping gets the full TTL
    tr.on_cand(cast(Any, link), {"t": "cand", "eps": [], "mapped": [["198.18.40.12", 6783]]})
    underlay.sent.clear()
    tr.tick(10.75)
    assert (("198.18.40.12", 6783), None) in underlay.sent, underlay.sent
    assert not [s for s in underlay.sent if s[0] == ("198.18.40.12", 6783) and s[1]]


def test_candidates_that_come_before_our_attempt_starts_are_kept_for_it() -> None:
    """The peer finished the relayed handshake first and told us its mapping before our
    tick saw the link (a lab run stayed relayed 30 s on this)."""
    tr, table, underlay, _ = rig()
    link = table.links[PEER] = FakeLink(PEER, virtual=True, li=6, ri=9)
    tr.on_cand(cast(Any, link), {"t": "cand", "eps": [], "mapped": [["198.18.40.12", 30000]]})
    assert not tr.drops.snapshot()
    tr.tick(10.0)
    tr.tick(10.25)
    assert (("198.18.40.12", 30000), None) in underlay.sent, underlay.sent
