"""How often the node's one ticker runs: 4 Hz while anything is in motion, 1 Hz when
every link is settled (issue 23: idle CPU of a router with many links).

Why: every tick walks every link in several parts (liveness, heartbeats, PMTU, GSO
proofs, gossip, reassembly, fastdp), O(links) each, whether or not anything is due. A
router in a settled 50-router mesh has nothing due in most ticks: its deadlines are 5 s
heartbeats, 15 s liveness, minutes for rekeying, PMTU re-searches and anti-entropy.
Ticking at 1 Hz then makes those deadlines up to 1 s late instead of 0.25 s, which
none of them minds; everything with a sub-second step (fast heartbeats until the peer
hears us, PMTU probes, GSO proofs, TCP fallback after 3 s, punching, dialling,
handshakes, fastdp probing, frames waiting in a reassembly, a key exchange due, data
flowing through the port, IPAM and DNS deadlines) keeps the 4 Hz tick, because any one
of them makes the router "busy" (``settled`` is False).

Data counts as flowing (``DataWatch``) from ``DATA_RATE`` frames a second, not from any
frame: in an idle mesh of 50 a router received 1.3-3 frames a second from its links (hosts'
ARP, neighbour discovery, MLD: broadcasts reach every router), and each one kept it at 4 Hz
for ``DATA_QUIET``. A trickle needs no faster tick: what waits for
one (reassembly, segment sets, PMTU, GSO proofs) makes its link unsettled by itself. The
rate is counted over at least ``IDLE_TICK`` whatever the tick: at 4 Hz two broadcasts in a
quarter second must not look like 8 a second. A topology change also keeps 4 Hz for
``DATA_QUIET`` (``moving``): a forming mesh converges at the pace it had.

The check itself is O(links) once per tick, the same order as one part's tick.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

TICK = 0.25  # s, while anything is in motion
IDLE_TICK = 1.0  # s, when every link is settled and nothing else is due
DATA_QUIET = 5.0  # s after a flow before the ticker may slow down
# frames/s through the router that make a flow; fewer is a trickle. A real flow is
# hundreds to thousands; the lab's 50 hosts sent bursts of 8+ broadcasts (IPv6 router
# solicitations and the like, in step since they started together) every ~13 s.
DATA_RATE = 100.0
SHORT_REKEY = 30.0  # s: a rekey interval this short keeps its exchanges on time (4 Hz)


class _Pmtu(Protocol):
    @property
    def next_deadline(self) -> float: ...


class _Sized(Protocol):
    def __len__(self) -> int: ...


class _Rekey(Protocol):
    @property
    def period(self) -> float | None: ...

    def next_deadline(self) -> float | None: ...


class SettledLink(Protocol):
    """The attributes of ``links.link.Link`` this module reads."""

    virtual: bool
    endpoint_learnt: bool
    usable: bool
    over_tcp: bool
    confirmed: bool
    told_ok: bool
    heard_at: float
    gso_ok: bool
    gso_next_proof: float

    @property
    def pmtu(self) -> _Pmtu: ...

    @property
    def reasm(self) -> _Sized: ...

    @property
    def segsets(self) -> _Sized: ...

    @property
    def gossip_pending(self) -> object: ...

    @property
    def rekey(self) -> _Rekey: ...


def link_settled(link: SettledLink, now: float, gso: bool) -> bool:
    """Nothing about this link needs a step within ``IDLE_TICK``."""
    soon = now + IDLE_TICK
    # A key exchange due within the second, on a short interval (--rekey-interval 0.5 in
    # test_lab_rekey: at 1 Hz it rotated 11 times in 10 s, not 20). The default 120 s
    # minds no second, and 49 links' exchanges would hold an idle router at 4 Hz for a
    # second each, 40% of the time.
    rk = link.rekey
    rekey_soon = (rk.period is not None and rk.period < SHORT_REKEY
                  and (rekey_at := rk.next_deadline()) is not None and rekey_at < soon)
    # a punched (relayed-control) link is settled like any other once its UDP is heard
    return (not rekey_soon
            and link.usable and (not link.virtual or link.endpoint_learnt)
            and not link.over_tcp and link.confirmed
            and link.told_ok and link.heard_at > 0
            and link.pmtu.next_deadline >= soon
            and (not gso or link.gso_ok or link.gso_next_proof >= soon)
            and not link.gossip_pending and not len(link.reasm) and not len(link.segsets))


def period(links: Iterable[SettledLink], now: float, *, gso: bool, busy: bool) -> float:
    """The next tick's delay: ``IDLE_TICK`` only if nothing else is ``busy`` and every
    link is settled."""
    if busy:
        return TICK
    return IDLE_TICK if all(link_settled(lk, now, gso) for lk in links) else TICK


class DataWatch:
    """Whether data flows, from the router's running count of frames, and whether the
    mesh is in motion, from the topology's generation (see the module doc)."""

    def __init__(self) -> None:
        self._seen = 0
        self._at = 0.0  # start of the counting window: at least IDLE_TICK, whatever the tick
        self._until = 0.0
        self._gen = 0
        self._gen_until = 0.0

    def flowing(self, frames: int, now: float) -> bool:
        """``frames``: the count so far; True while a flow was seen within ``DATA_QUIET``."""
        n, dt = frames - self._seen, now - self._at
        if n > 0 and n >= DATA_RATE * max(dt, IDLE_TICK):
            self._until = now + DATA_QUIET
        if dt >= IDLE_TICK:
            self._seen, self._at = frames, now
        return now < self._until

    def moving(self, generation: int, now: float) -> bool:
        """True within ``DATA_QUIET`` of a change of the topology (a mesh forming or
        healing: records go on at the tick, so it keeps the 4 Hz it had before)."""
        if generation != self._gen:
            self._gen, self._gen_until = generation, now + DATA_QUIET
        return now < self._gen_until
