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
- ``heartbeat``: when to send the next UDP heartbeat (an echo request the peer answers).
  Each side used to send its own every ``SLOW_HEARTBEAT`` and answer the other's: four
  datagrams per link per 5 s, most of the idle cost of a router with 49 links (issue 23).
  Now the side with the smaller peer id leads: it sends every ``SLOW_HEARTBEAT``; the
  other follows, answering, and sends its own only when the leader's is overdue
  (``HB_GRACE`` after the last it answered) or every ``RTT_REFRESH`` to measure its
  round trip. An answer is an authenticated datagram each way, so both ends still hear
  each other, and keep their NAT mappings open, every 5 s: two datagrams instead of four.
  Loss is covered the other way: a side that has not heard the peer for ``HB_GRACE``
  asks every ``SUSPECT_PERIOD`` until ``dead_after``, so a lost datagram costs ~1 s of
  doubt, not a round. Dead-link detection (``dead_after`` since the last datagram heard)
  is unchanged.
- ``control_heartbeat``: whether the control connection needs a heartbeat message. It
  used to carry one each way every 5 s, so that 20 s of silence (``CONTROL_SILENCE``)
  meant a dead connection. Where the kernel watches the TCP connection (keepalive and
  ``TCP_USER_TIMEOUT`` of ``CONTROL_SILENCE``: dead in the same 20 s, with no wake-up of
  the router) and UDP heartbeats are heard both ways, the messages are waste: a peer
  that hangs is found by ``CONTROL_SILENCE`` without UDP or TCP. A side that lacks that
  (UDP not heard for ``HB_GRACE``, not confirmed, data over TCP, a relayed control
  stream) sends them, marked "need", and its peer answers in kind while it asks, so
  neither side's silence rule ever sees a quiet connection whose UDP is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_AFTER = 15.0
TCP_AFTER = 3.0
FAST_HEARTBEAT = 0.5  # s, until the peer confirmed it hears us
SLOW_HEARTBEAT = 5.0  # s; also keeps NAT mappings open (UDP timeouts are >= 30 s)
# The leader's heartbeat is overdue this long after the last: its ticks and ours may
# each run up to 1 s late (sleeve.pacing IDLE_TICK).
HB_GRACE = SLOW_HEARTBEAT + 2.0
SUSPECT_PERIOD = 1.0  # s between heartbeats while the peer's datagrams are overdue
RTT_REFRESH = 30.0  # s: a follower's own heartbeat at least this often (status rtt_ms)
CONTROL_SILENCE = 20.0  # s without a control message or a datagram: the connection is dead
CONTROL_HEARTBEAT = 5.0  # s between control heartbeats while one is needed
ANSWER_NEED = 2 * CONTROL_HEARTBEAT  # s we keep answering a peer's "need" heartbeats


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


@dataclass(frozen=True, slots=True)
class Heartbeat:
    send: bool  # send one now
    next_at: float  # when to ask again


def heartbeat(now: float, *, leads: bool, confirmed: bool, heard_at: float, over_tcp: bool,
              answered_at: float, sent_at: float,
              dead_after: float = DEAD_AFTER) -> Heartbeat:
    """The UDP heartbeat due at ``now`` (see the module doc).

    ``leads``: our peer id is the smaller; ``answered_at``: when we last answered the
    peer's heartbeat; ``sent_at``: when we last sent our own (0: never).
    """
    if not (confirmed and heard_at) and not over_tcp:
        return Heartbeat(True, now + FAST_HEARTBEAT)  # until the peer hears us
    if not over_tcp and HB_GRACE <= now - heard_at < dead_after:
        return Heartbeat(True, now + SUSPECT_PERIOD)  # the peer is overdue: ask, don't wait
    if (not leads and not over_tcp and now - answered_at < HB_GRACE
            and now - sent_at < RTT_REFRESH):
        # the leader's heartbeat and our answer carried a datagram each way: ours is waste
        return Heartbeat(False, min(answered_at + HB_GRACE, sent_at + RTT_REFRESH))
    # Look again when the peer would be overdue (HB_GRACE after the last datagram heard),
    # not only at our next heartbeat: the suspect asks then start at HB_GRACE, not at
    # the first beat after it (10 s; review of the idle merge).
    overdue_at = heard_at + HB_GRACE if not over_tcp and now - heard_at < HB_GRACE else None
    if overdue_at is not None and sent_at and now < sent_at + SLOW_HEARTBEAT:
        return Heartbeat(False, min(sent_at + SLOW_HEARTBEAT, overdue_at))  # a look only
    nxt = now + SLOW_HEARTBEAT
    return Heartbeat(True, nxt if overdue_at is None else min(nxt, overdue_at))


@dataclass(frozen=True, slots=True)
class ControlBeat:
    send: bool  # a control heartbeat now
    need: bool  # marked "need": the peer should send its own while we ask


def control_heartbeat(now: float, *, kernel_keepalive: bool, heard_at: float,
                      confirmed: bool, over_tcp: bool, asked_at: float) -> ControlBeat:
    """The control heartbeat due at ``now`` (see the module doc); ``asked_at``: when the
    peer last sent one marked "need"."""
    need = over_tcp or not confirmed or now - heard_at >= HB_GRACE
    if not kernel_keepalive:
        # Unwatched, our silence rule needs the peer's messages, and a watched peer with
        # UDP heard both ways sends none unless asked: always ask (review of the idle
        # merge: a side whose socket refused TCP_USER_TIMEOUT closed the link every 20 s).
        return ControlBeat(True, True)
    return ControlBeat(need or (asked_at > 0 and now - asked_at < ANSWER_NEED), need)
