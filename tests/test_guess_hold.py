"""An inbound link lets the dialler's first UDP datagram come first (links.link.GUESS_HOLD).

Sending to a NATed dialler's guessed endpoint before its own datagram went out leaves
a conntrack entry on its NAT that moves its mapping to a random port (seen in
tests/test_lab_punch.py: the punch then missed its first crossing and took ~40 s).
"""

from __future__ import annotations

import socket

from sleeve.forward.underlay import Underlay
from sleeve.links.fake import fake_link
from sleeve.links.link import GUESS_HOLD
from sleeve.proto.stats import Counters


def _pair() -> tuple[Underlay, socket.socket]:
    u = Underlay(Counters(), Counters(), offload=False)
    u.open(socket.AF_INET, "127.0.0.1", 0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(0.3)
    return u, peer


def _got(peer: socket.socket) -> bytes | None:
    try:
        return peer.recvfrom(2048)[0]
    except TimeoutError:
        return None


def test_inbound_link_waits_for_the_dialler_then_sends_to_the_guess() -> None:
    u, peer = _pair()
    try:
        link = fake_link(outbound=False)
        link.endpoint = peer.getsockname()
        u.send(link, b"hb")
        assert _got(peer) is None, "sent to a dialler's guessed endpoint at once"
        assert link.stats["drop_guess_hold"] == 1
        link.created_at -= GUESS_HOLD + 0.1  # no datagram from the dialler: send anyway
        u.send(link, b"hb")
        assert _got(peer) is not None
    finally:
        peer.close()
        u.close()


def test_heard_endpoint_and_outbound_links_send_at_once() -> None:
    u, peer = _pair()
    try:
        inbound = fake_link(outbound=False)
        inbound.endpoint = peer.getsockname()
        inbound.endpoint_learnt = True  # the dialler's datagram authenticated
        u.send(inbound, b"hb")
        assert _got(peer) is not None
        outbound = fake_link(outbound=True)
        outbound.endpoint = peer.getsockname()
        u.send(outbound, b"hb")
        assert _got(peer) is not None and outbound.stats["drop_guess_hold"] == 0
    finally:
        peer.close()
        u.close()
