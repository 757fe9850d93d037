"""Link liveness and transport choice (sans-IO, clock passed in).

What a link knows about its two directions, and the decisions made from it::

    heard_at      last authenticated UDP datagram from the peer (we hear it)
    tcp_heard_at  last control message from the peer (the TCP path lives)
    confirmed     the peer said "udp_ok" (it hears our datagrams) and not "udp_lost"
    told_ok       we said "udp_ok" and have not taken it back

- ``transport``: tell the peer "udp_lost" once we have not heard its datagrams for
  ``dead_after``; send our data over TCP while the peer does not hear our UDP, after
  a grace of ``tcp_after`` from the handshake (never for a relayed control connection:
  it is no data path, the mesh relays instead).
- ``state``: the link's state as ``status`` shows it, with the reason in words. It
  describes our sending direction (what the peer sends us is its own link's state);
  silence on UDP and TCP for ``dead_after`` means the link is dead, so the mesh
  routes around it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_AFTER = 15.0
TCP_AFTER = 3.0


@dataclass(frozen=True, slots=True)
class Transport:
    send_udp_lost: bool  # tell the peer we no longer hear its datagrams
    over_tcp: bool  # where our data should go now


def transport(now: float, *, heard_at: float, told_ok: bool, confirmed: bool,
              established_at: float, virtual: bool,
              dead_after: float = DEAD_AFTER, tcp_after: float = TCP_AFTER) -> Transport:
    lost = told_ok and now - heard_at >= dead_after
    over_tcp = not confirmed and not virtual and now - established_at >= tcp_after
    return Transport(lost, over_tcp)


def state(now: float, *, heard_at: float, tcp_heard_at: float, over_tcp: bool,
          confirmed: bool, pmtu_known: bool, pmtu_reason: str,
          dead_after: float = DEAD_AFTER) -> tuple[str, str]:
    quiet = now - max(heard_at, tcp_heard_at)
    if quiet >= dead_after:
        return "pending", f"nothing from the peer over UDP or TCP for {quiet:.0f}s"
    hears = heard_at > 0 and now - heard_at < dead_after
    if over_tcp:
        return "established", ("over TCP: the peer receives no UDP datagrams from us" +
                               ("" if hears else "; none from it either"))
    if not confirmed:
        if not heard_at:
            return "pending", "no authenticated UDP datagram from the peer yet"
        return "pending", "peer has not yet confirmed it receives our UDP datagrams"
    if not pmtu_known:
        return "pending", f"path MTU: {pmtu_reason}"
    return "established", ("UDP heartbeats both ways" if hears else
                           "UDP to the peer; its datagrams reach us over TCP")
