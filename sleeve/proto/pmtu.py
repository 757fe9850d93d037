"""Path MTU search for one link, driven by probes and acks (sans-IO, RFC 8899 style).

Sizes here are *datagram* sizes: the whole sealed UDP payload (header, body,
tag), i.e. what ``DataSession.seal`` returns. The node packs bodies up to
``current - HEADER_LEN - TAG_LEN``.

Why probes: ICMP "fragmentation needed" / "packet too big" is often filtered,
so a path can silently drop everything above some size (a black hole). Only
an ack from the peer proves a size passes, so the estimate rises on acks
alone; losses and local EMSGSIZE only ever lower the search bound.

A probe is a datagram holding exactly one KIND_PROBE record, padded so the
sealed datagram is exactly the size under test; the peer answers with a small
KIND_PROBE ack record (packed like any other record)::

    probe record: alone in its datagram, sent with DF set on the underlay socket
     0      2      3      4              8      9
    +------+------+------+--------------+------+--------------------------------
    | len  | kind | flags| probe id     | op   | zeros, padding the sealed
    | BE16 | = 2  | = 0  | BE32         | = 0  | datagram to exactly ``size``
    +------+------+------+--------------+------+--------------------------------
    len = size - DATAGRAM_OVERHEAD

    ack record: packed like any other record
     0      2      3      4              8      9             11
    +------+------+------+--------------+------+-------------+
    | len  | kind | flags| probe id     | op   | received    |  received = length of the
    | = 7  | = 2  | = 0  | BE32         | = 1  | size BE16   |  datagram the probe came in
    +------+------+------+--------------+------+-------------+

States (``state``) and what moves between them::

    base ──ack──▶ search ──(lo == hi)──▶ complete ──raise timer──▶ search
     │  ▲                                  │   │
     │  └─────── confirm probe lost ◀──────┘   └──confirm probe acked: stay
     └─lost─▶ error ──retry timer──▶ (probe the floor again; ack ▶ search)

- base: the floor (a size every path of the family must carry) is probed
  once so a dead link is not mistaken for a tiny MTU.
- search: ``current`` is the largest acked size (lo), ``ceiling`` the largest
  size not yet shown to fail (hi). The ceiling is tried first (most paths
  carry a full datagram), then binary search. ``max_probes`` lost attempts,
  each ``timeout`` apart, mean the size does not fit.
- complete: every ``reprobe_interval`` the ceiling is reset to the interface
  limit and the search resumes above ``current`` (paths grow back, kernel
  PMTU entries expire); every ``confirm_interval`` one probe of ``current``
  checks it still passes, the black-hole detector.
- error: not even the floor gets an ack; ``current`` stays at the floor.

Events from the node: a send failing with EMSGSIZE (``on_emsgsize``) lowers
the ceiling at once, and if ``current`` no longer fits, the search restarts
from the floor (probes above the kernel's limit then fail instantly, so this
converges in round trips, not timeouts). A black hole the node noticed
(``on_black_hole``) restarts from base with the full ceiling.

State is a fixed set of fields plus at most ``max_probes`` outstanding ids.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from sleeve.proto.datagram import (
    DATAGRAM_OVERHEAD,
    KIND_PROBE,
    PEER_ID_LEN,
    REC,
    UDP4_OVERHEAD,
    UDP6_OVERHEAD,
)

BASE: Final = "base"
SEARCH: Final = "search"
COMPLETE: Final = "complete"
ERROR: Final = "error"

PROBE_TIMEOUT: Final = 1.0
MAX_PROBES: Final = 3
REPROBE_INTERVAL: Final = 600.0  # matches the kernel's PMTU cache expiry (ip_rt_mtu_expires)
CONFIRM_INTERVAL: Final = 60.0
ERROR_RETRY: Final = 5.0

OP_PROBE: Final = 0
OP_ACK: Final = 1
PROBE_HEAD = struct.Struct("!IB")  # probe id, op
ACK = struct.Struct("!IBH")  # probe id, op, received datagram size

MIN_DATAGRAM: Final = DATAGRAM_OVERHEAD + PROBE_HEAD.size  # smallest datagram a probe fits in
MAX_DATAGRAM: Final = 65535 - UDP4_OVERHEAD  # largest UDP payload; also fits the ack's u16

# Underlay minimum MTUs every path must carry (RFC 791 reassembly minimum, RFC 8200 link MTU).
IPV4_UNDERLAY_MIN: Final = 576
IPV6_UNDERLAY_MIN: Final = 1280
ETH_HLEN: Final = 14


def datagram_bounds(ipv6: bool, link_mtu: int = 1500) -> tuple[int, int]:
    """(floor, ceiling) datagram sizes for an underlay family and outgoing interface MTU."""
    overhead = UDP6_OVERHEAD if ipv6 else UDP4_OVERHEAD
    minimum = IPV6_UNDERLAY_MIN if ipv6 else IPV4_UNDERLAY_MIN
    ceiling = min(link_mtu - overhead, MAX_DATAGRAM)
    if ceiling < MIN_DATAGRAM or (ipv6 and link_mtu < IPV6_UNDERLAY_MIN):
        raise ValueError(f"interface MTU {link_mtu} too small for the underlay")
    return min(minimum - overhead, ceiling), ceiling


def overlay_mtu(datagram: int, peer_ids: int = 0) -> int:
    """The largest IP packet an untagged frame may carry in a datagram of this size.

    This is the ``mtu`` that ``ipfrag.fragment_ipv4`` and ``icmp.too_big_reply``
    take; ``peer_ids`` counts the 8-byte ids a relayed record carries.
    """
    return datagram - DATAGRAM_OVERHEAD - peer_ids * PEER_ID_LEN - ETH_HLEN


@dataclass(frozen=True, slots=True)
class Probe:
    """Send one datagram of exactly ``size`` bytes made by ``probe_record(probe)``."""

    probe_id: int
    size: int


@dataclass(frozen=True, slots=True)
class ProbeMessage:
    probe_id: int
    is_ack: bool
    size: int  # ack: the size the peer received; probe: 0


def probe_record(probe: Probe) -> bytes:
    """The single record whose sealed datagram is exactly ``probe.size`` bytes."""
    n = probe.size - DATAGRAM_OVERHEAD
    if n < PROBE_HEAD.size:
        raise ValueError(f"probe size {probe.size} below {MIN_DATAGRAM}")
    head = PROBE_HEAD.pack(probe.probe_id, OP_PROBE)
    return REC.pack(n, KIND_PROBE, 0) + head + bytes(n - len(head))


def ack_record(probe_id: int, received: int) -> bytes:
    """The ack for a probe that arrived in a datagram of ``received`` bytes."""
    return REC.pack(ACK.size, KIND_PROBE, 0) + ACK.pack(probe_id, OP_ACK, min(received, 0xFFFF))


def parse_probe(payload: bytes | memoryview) -> ProbeMessage | None:
    """Parse an authenticated KIND_PROBE record payload; None when malformed."""
    if len(payload) < PROBE_HEAD.size:
        return None
    probe_id, op = PROBE_HEAD.unpack_from(payload, 0)
    if op == OP_PROBE:
        return ProbeMessage(probe_id, False, 0)
    if op == OP_ACK and len(payload) == ACK.size:
        return ProbeMessage(probe_id, True, ACK.unpack_from(payload, 0)[2])
    return None


class PmtuProber:
    """Largest datagram size known to reach the peer of one link.

    ``ceiling`` and ``floor`` come from ``datagram_bounds``. Drive it with
    ``poll`` on every timer tick and feed it acks, send errors and black-hole
    reports; it never reads a clock.
    """

    __slots__ = (
        "_cand", "_ceiling", "_confirm_at", "_confirm_interval", "_current", "_deadline",
        "_due", "_error_retry", "_first_step", "_floor", "_ids", "_max_ceiling",
        "_max_probes", "_next_id", "_raise_at", "_reason", "_reprobe_interval", "_state",
        "_timeout",
    )

    def __init__(
        self,
        ceiling: int,
        floor: int,
        now: float,
        *,
        timeout: float = PROBE_TIMEOUT,
        max_probes: int = MAX_PROBES,
        reprobe_interval: float = REPROBE_INTERVAL,
        confirm_interval: float | None = CONFIRM_INTERVAL,
        error_retry: float = ERROR_RETRY,
        first_id: int = 1,
    ) -> None:
        if not MIN_DATAGRAM <= floor <= ceiling <= MAX_DATAGRAM:
            raise ValueError(f"need {MIN_DATAGRAM} <= floor <= ceiling <= {MAX_DATAGRAM}")
        if timeout <= 0 or max_probes < 1 or reprobe_interval <= 0 or error_retry <= 0:
            raise ValueError("timeouts and intervals must be positive, max_probes >= 1")
        if confirm_interval is not None and confirm_interval <= 0:
            raise ValueError("confirm_interval must be positive or None")
        self._max_ceiling = ceiling
        self._ceiling = ceiling
        self._floor = floor
        self._current = floor
        self._timeout = timeout
        self._max_probes = max_probes
        self._reprobe_interval = reprobe_interval
        self._confirm_interval = confirm_interval
        self._error_retry = error_retry
        self._next_id = first_id & 0xFFFFFFFF
        self._state: str = BASE
        self._reason = f"confirming the floor {floor}"
        self._cand: int | None = None  # size under test
        self._ids: list[int] = []  # attempts for _cand, at most max_probes
        self._deadline = now  # the last attempt for _cand times out
        self._due = now  # start the next candidate (when _cand is None)
        self._first_step = True
        self._raise_at = now + reprobe_interval
        self._confirm_at = now

    # ------------------------------------------------------------------ read-only view

    @property
    def current(self) -> int:
        """Largest datagram size that works (acked, or the floor)."""
        return self._current

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def floor(self) -> int:
        return self._floor

    @property
    def state(self) -> str:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def outstanding(self) -> tuple[int, ...]:
        """Probe ids an ack is still accepted for."""
        return tuple(self._ids)

    @property
    def next_deadline(self) -> float:
        """When ``poll`` next has something to do."""
        if self._cand is None:
            return self._due
        return self._deadline if self._ids else self._due

    def status(self) -> dict[str, object]:
        return {"pmtu": self._current, "pmtu_state": self._state, "pmtu_reason": self._reason,
                "pmtu_ceiling": self._ceiling, "pmtu_probing": self._cand}

    # ------------------------------------------------------------------ events

    def poll(self, now: float) -> list[Probe]:
        """Handle timeouts; return the probes to send now (at most one)."""
        # A lost candidate may start the next one at once, and that one may be
        # due already; three rounds cover lost -> start -> send.
        for _ in range(3):
            if self._cand is None:
                if now < self._due:
                    return []
                self._start(now)
                if self._cand is None:
                    return []
            if self._ids and now < self._deadline:
                return []
            if len(self._ids) >= self._max_probes:
                self._lost(now)
                continue
            pid = self._next_id
            self._next_id = (pid + 1) & 0xFFFFFFFF
            self._ids.append(pid)
            self._deadline = now + self._timeout
            return [Probe(pid, self._cand)]
        return []

    def on_ack(self, probe_id: int, now: float, size: int | None = None) -> bool:
        """An authenticated ack arrived; False when stale or not matching the probe."""
        cand = self._cand
        if cand is None or probe_id not in self._ids or (size is not None and size != cand):
            return False
        self._clear()
        if self._state in (BASE, ERROR):
            self._current = self._floor
            self._search(now, f"floor {self._floor} acked")
        elif self._state == SEARCH:
            self._current = cand
            self._first_step = False
            self._reason = f"{cand} acked"
            self._due = now
            if self._current >= self._ceiling:
                self._complete(now)
        else:  # a confirmation of current
            self._confirm_at = now + (self._confirm_interval or 0.0)
            self._due = self._next_timer()
        return True

    def on_emsgsize(self, size: int, now: float) -> None:
        """Sending a datagram of ``size`` bytes failed with EMSGSIZE: it cannot fit."""
        if size > self._ceiling:
            return  # already known not to fit (e.g. packed before the estimate dropped)
        # Linux may cap the route PMTU below our floor (min_pmtu 552): follow it down.
        self._floor = max(MIN_DATAGRAM, min(self._floor, size - 1))
        self._ceiling = max(self._floor, min(self._ceiling, size - 1))
        reason = f"EMSGSIZE at {size}"
        if self._cand is not None and self._cand > self._ceiling:
            self._clear()
            self._due = now
        if self._state in (BASE, ERROR):
            self._current = self._floor
            self._reason = reason
        elif self._current > self._ceiling:
            # What passed before does not now; the floor is the only safe size.
            self._clear()
            self._current = self._floor
            self._search(now, reason)
        elif self._state == SEARCH:
            self._first_step = False
            self._reason = reason

    def set_limit(self, ceiling: int, now: float) -> None:
        """The interface limit (``datagram_bounds``'s ceiling for the route) is now this.

        Raised (a jumbo-frame underlay): the search resumes above ``current`` at once.
        Lowered: like an EMSGSIZE at one byte more, since sends above it fail so.
        """
        ceiling = max(self._floor, min(ceiling, MAX_DATAGRAM))
        if ceiling == self._max_ceiling:
            return
        raised = ceiling > self._max_ceiling
        self._max_ceiling = ceiling
        if not raised:
            self.on_emsgsize(ceiling + 1, now)
            return
        self._ceiling = ceiling
        if self._state == COMPLETE:
            self._clear()
            self._search(now, f"interface limit raised to {ceiling}")

    def on_black_hole(self, now: float) -> None:
        """Full-size datagrams vanish while small ones pass: start over from the floor."""
        if self._state in (BASE, ERROR):
            return
        self._clear()
        self._current = self._floor
        self._ceiling = self._max_ceiling
        self._state = BASE
        self._reason = "black hole reported"
        self._due = now

    # ------------------------------------------------------------------ transitions

    def _clear(self) -> None:
        self._cand = None
        self._ids.clear()

    def _start(self, now: float) -> None:
        if self._state in (BASE, ERROR):
            self._cand = self._floor
        elif self._state == SEARCH:
            if self._current >= self._ceiling:
                self._complete(now)
            else:
                lo, hi = self._current, self._ceiling
                self._cand = hi if self._first_step else (lo + hi + 1) // 2
        else:
            if now >= self._raise_at:
                self._raise_at = now + self._reprobe_interval
                if self._current < self._max_ceiling:
                    self._ceiling = self._max_ceiling
                    self._search(now, "periodic re-probe")
                    self._start(now)
                    return
            if self._confirm_interval is not None and now >= self._confirm_at:
                self._cand = self._current
            else:
                self._due = self._next_timer()

    def _lost(self, now: float) -> None:
        cand = self._cand
        assert cand is not None
        self._clear()
        lost = f"{self._max_probes} probes of {cand} lost"
        if self._state in (BASE, ERROR):
            self._state = ERROR
            self._reason = f"{lost}: is the path down?"
            self._due = now + self._error_retry
        elif self._state == SEARCH:
            self._ceiling = cand - 1
            self._first_step = False
            self._reason = lost
            self._due = now
            if self._current >= self._ceiling:
                self._complete(now)
        else:  # confirmation of current failed: a black hole opened below it
            self._ceiling = max(self._floor, cand - 1)
            self._current = self._floor
            self._state = BASE
            self._reason = f"black hole: {lost}"
            self._due = now

    def _search(self, now: float, reason: str) -> None:
        self._state = SEARCH
        self._reason = reason
        self._first_step = True
        self._due = now

    def _complete(self, now: float) -> None:
        self._state = COMPLETE
        limit = "interface limit" if self._current >= self._max_ceiling else "path limit"
        self._reason = f"{self._current} verified ({limit})"
        self._raise_at = now + self._reprobe_interval
        self._confirm_at = now + (self._confirm_interval or 0.0)
        self._due = self._next_timer()

    def _next_timer(self) -> float:
        if self._confirm_interval is None:
            return self._raise_at
        return min(self._raise_at, self._confirm_at)
