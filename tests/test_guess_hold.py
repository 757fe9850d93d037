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


def test_no_path_mtu_probe_is_lost_to_the_hold_and_the_search_starts_on_the_first_datagram(
) -> None:
    """Two nodes in one process: the accepting side's first tick came while it held its
    guess, so its first PMTU probe went into the hold's drop and the search waited the
    probe timeout (1 s) before trying again: the link stayed "pending" for a second. Now
    nothing is probed during the hold, and the dialler's first datagram starts the search."""
    import asyncio

    from sleeve.config import Target
    from tests.test_node_inproc import established, make, wait_for

    async def run() -> None:
        b, _ = make()
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None and b.port is not None)
        a, _ = make(peers=(Target("127.0.0.1", b.udp_port),))
        started: list[tuple[bool, bool, bool]] = []  # (holding, learnt, in a tick) per start
        probe, tick, in_tick = b.egress.probe, b.egress.tick, [False]

        def ticking(now: float) -> None:
            in_tick[0] = True
            try:
                tick(now)
            finally:
                in_tick[0] = False

        def watch(link: object, now: float) -> None:
            before = link.pmtu.status()["pmtu_probing"]  # type: ignore[attr-defined]
            probe(link, now)  # type: ignore[arg-type]
            if link.pmtu.status()["pmtu_probing"] not in (None, before):  # type: ignore
                started.append((link.holding_guess(now), link.endpoint_learnt,  # type: ignore
                                in_tick[0]))
        b.egress.probe = watch  # type: ignore[method-assign]
        b.egress.tick = ticking  # type: ignore[method-assign]
        ta = asyncio.create_task(a.run())
        try:
            await wait_for(lambda: established(a) and established(b))
            (link,) = b.links.values()
            assert link.stats["drop_guess_hold"] == 0, "a probe went into the hold's drop"
            # the search starts with the first datagram, not at the next tick (up to 250 ms)
            assert started and started[0] == (False, True, False), started
            # and it searched up to the route's MTU (read first), as the dialler's did
            a_link = a.links[b.id]
            await wait_for(lambda: a_link.pmtu.status()["pmtu_state"] == "complete"
                           and link.pmtu.status()["pmtu_state"] == "complete")
            assert link.pmtu.current == a_link.pmtu.current > 1472
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb), 5)

    asyncio.run(run())
