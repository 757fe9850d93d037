"""One hole-punching attempt's schedule: who opens, with which hop limit, and when.

Sans-IO: ``Plan.step(age)`` says what to send ``age`` seconds into an attempt; the
traversal part (``traversal.punch``) does the sending. Both sides of an attempt
derive the same roles from the attempt's session indexes (random per attempt, known
to both after the relayed handshake), so no new message is needed.

Why a sequence and not "both send at once": a Linux NAT (conntrack) that receives a
datagram for which it has no mapping keeps an entry for it (30 s, unreplied), and the
inside host's own mapping to that peer then gets a random port instead of its own
(the tuples clash). So the first datagram to reach each NAT must find that NAT's
mapping already there. The attempt runs like this::

    age  0 ......... 1 ....... 3 ..................... 35 ....... 45 s
    opener   hop limit h+1: opens its own NAT (h hops away); on the internet the
             datagram dies at the next router. Then hop limit h only: the datagram
             refreshes its own NAT's mapping (conntrack refreshes on the way in) and
             dies there, so nothing ever reaches the far NAT from the opener.
    crosser              full TTL        (silent)          full TTL
                         1st crossing: works when          2nd crossing: works when
                         the opener's datagram died         the far NAT's stale entry
                         before the crosser's NAT            (the opener's h+1 datagram
                         (sent to the announced port         got there: adjacent NATs)
                         only: see traversal.punch)          expired, 30 s later

Two NAT gateways on one segment (issue 24) are the case for the second crossing: no
router between them, so even the opener's first datagram reaches the crosser's NAT
(a hop limit of 1 would not do: Linux drops it before source NAT, opening nothing).
The crosser's own clashing mapping from the first crossing expires in the same quiet
time, since the crosser sends nothing then. Once a side hears an authenticated
datagram from the other, its link sends ordinary heartbeats and this plan is over.

``h`` (hops from a host to its own NAT) is measured where it can be
(``traversal.hops``: k_min = h + 1), and so is the far NAT's distance. Where it is
not, attempts cycle it through ``HOPS`` (1 first: a host directly behind its gateway
is the common case), and the roles come from the session indexes, so over a few
attempts each side opens. Where the measurement says the far NAT is ``adjacent``
(no TTL that crosses ours stops before it), the crosser skips the first crossing
(it would only clash with the opener's stale entry) and crosses at ``ADJ_CROSS``,
right after that entry expired; the opener's datagrams after ``OPEN_TIME`` carry
hop limit h and never reach it, so nothing refreshes it meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from sleeve.traversal import hops

OPEN_TIME = 1.0  # s: the opener's h+1 datagrams, before the crosser's first crossing
FIRST_CROSS_END = 3.0  # s: the crosser's first crossing lasts 2 s (8 ticks)
# Linux conntrack's unreplied-UDP timeout is 30 s (nf_conntrack_udp_timeout); a stale
# entry left on a NAT by a datagram that came too early is gone 30 s after its last
# datagram. The crosser's first crossing ends at 3 s: 3 + 30 + 2 s margin.
SECOND_CROSS = 35.0
ATTEMPT_TIME = 45.0  # s: then the attempt has failed; the mesh keeps relaying
HOPS = (1, 2, 3)
# measured adjacent NATs: the opener's last datagram that reached the crosser's NAT
# left before OPEN_TIME; its unreplied entry is gone UDP_UNREPLIED later
ADJ_CROSS = OPEN_TIME + hops.UDP_UNREPLIED + hops.MARGIN
# Between attempts both sides stay quiet long enough for every entry an attempt left
# on the NATs to expire (30 s, as above), then back off to at most one attempt per
# BACKOFF_MAX per peer: bounded punch traffic for as long as the link is relayed.
QUIET_MIN = 35.0
BACKOFF_MAX = 600.0


@dataclass(frozen=True)
class Plan:
    """What this side does in one attempt."""

    opener: bool
    hops: int  # hops to our own NAT (measured or guessed; unused by the crosser)
    adjacent: bool = False  # measured: the far NAT is in reach of any TTL crossing ours

    def step(self, age: float) -> tuple[bool, int | None]:
        """(send now, hop limit or None for the default) at ``age`` s into the attempt."""
        if self.opener:
            return True, self.hops + 1 if age < OPEN_TIME else self.hops
        if self.adjacent:
            return age >= ADJ_CROSS, None
        if OPEN_TIME <= age < FIRST_CROSS_END or age >= SECOND_CROSS:
            return True, None
        return False, None

    def first_crossing(self, age: float) -> bool:
        """The crosser's first crossing (sent to the peer's announced port only)."""
        return not self.opener and not self.adjacent and OPEN_TIME <= age < FIRST_CROSS_END

    def describe(self) -> str:
        if self.adjacent and not self.opener:
            return f"crosser: far NAT adjacent, full TTL from {ADJ_CROSS:.0f} s (after its " \
                   f"stale entry expired)"
        if self.opener:
            return f"opener: hop limit {self.hops + 1}, then {self.hops} to keep our NAT open"
        return f"crosser: full TTL at {OPEN_TIME:.0f}-{FIRST_CROSS_END:.0f} s and from " \
               f"{SECOND_CROSS:.0f} s"


def plan_for(me_first: bool, local_index: int, remote_index: int, attempt: int) -> Plan:
    """This side's plan for its ``attempt``-th attempt (1-based).

    ``me_first``: our peer id is the smaller. Both sides compute the same roles: the
    XOR of the two session indexes (random per attempt, the same seen from either
    side) picks whether the smaller id opens.
    """
    opener = me_first if (local_index ^ remote_index) & 1 else not me_first
    return Plan(opener, HOPS[(max(attempt, 1) - 1) // 2 % len(HOPS)])


def backoff(failures: int) -> float:
    """Seconds from a failed attempt's end to the next attempt (failures >= 1)."""
    # exponent capped: 1.5 ** n overflows a float past n ~ 1750 (weeks of failures)
    return min(BACKOFF_MAX, QUIET_MIN * 1.5 ** min(max(failures - 1, 0), 60))
