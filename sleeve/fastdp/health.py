"""Per-link fast-datapath health: when a link may send on the kernel VXLAN path (sans-IO).

Time comes in as ``now`` (seconds, monotonic); decisions come out as :class:`Action`
values the adapter carries out. One timer per owner: the adapter calls
:meth:`Health.poll` at :meth:`Health.next_deadline` (or more often: polling early is
harmless) and :meth:`Health.on_heartbeat_ack` whenever a heartbeat ack arrives
(see :mod:`sleeve.fastdp.heartbeat`).

States and transitions (``_TRANSITIONS`` below is the authority)::

                 enable                       K acks, each within ack_gap
     DISABLED ──────────▶ PROBING ───────────────────────────────────▶ FASTDP
        ▲                  │   ▲                                         │
        │ disable(reason)  │   │ retry timer (backoff: doubles per       │ no ack for
        │ (from any state) │   │ failure up to backoff_max; reset after  │ dead_after s
        │                  │   │ stable_after s spent on fastdp)         │
        │                  ▼   │                                         │
        │                 SLEEVE ◀───────────────────────────────────────┘
        │                    no K acks within probe_timeout
        └── (DISABLED is left only by enable)

- DISABLED: the link must not use the kernel path (encryption required, no kernel
  support here or at the peer); no heartbeats; the reason is shown as given.
- PROBING: data still goes by sleeve; heartbeats every ``probe_interval``.
- FASTDP: data goes by the kernel; heartbeats every ``interval``. Entering emits
  ``ENTER_FASTDP`` (program the kernel FDB for the peer's MACs), leaving emits
  ``LEAVE_FASTDP`` (remove them: frames fall back to the router at once).
- SLEEVE: data goes by sleeve; silent until the retry timer.

Every heartbeat we originate asks for an immediate answer, so an ack arrives about
one round trip after each heartbeat, whatever state the peer is in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class State(enum.Enum):
    DISABLED = "disabled"
    PROBING = "probing"
    FASTDP = "fastdp"
    SLEEVE = "sleeve"


class Event(enum.Enum):
    ENABLE = "enable"
    DISABLE = "disable"
    ACK = "ack"  # an ack that does not (yet) complete the proof
    PROVEN = "proven"  # the K-th consecutive ack
    PROBE_FAILED = "probe_failed"
    DEAD = "dead"
    RETRY = "retry"


class Action(enum.Enum):
    SEND_HEARTBEAT = "send_heartbeat"
    ENTER_FASTDP = "enter_fastdp"
    LEAVE_FASTDP = "leave_fastdp"


class HealthError(RuntimeError):
    """An event the state machine does not accept in its current state (a caller bug)."""


S, E = State, Event
_TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (S.DISABLED, E.ENABLE): S.PROBING,
    (S.DISABLED, E.DISABLE): S.DISABLED,  # a new reason
    (S.DISABLED, E.ACK): S.DISABLED,  # late ack: ignored
    (S.PROBING, E.ENABLE): S.PROBING,
    (S.PROBING, E.DISABLE): S.DISABLED,
    (S.PROBING, E.ACK): S.PROBING,
    (S.PROBING, E.PROVEN): S.FASTDP,
    (S.PROBING, E.PROBE_FAILED): S.SLEEVE,
    (S.FASTDP, E.ENABLE): S.FASTDP,
    (S.FASTDP, E.DISABLE): S.DISABLED,
    (S.FASTDP, E.ACK): S.FASTDP,
    (S.FASTDP, E.DEAD): S.SLEEVE,
    (S.SLEEVE, E.ENABLE): S.SLEEVE,
    (S.SLEEVE, E.DISABLE): S.DISABLED,
    (S.SLEEVE, E.ACK): S.SLEEVE,  # an answer to a heartbeat sent before we gave up
    (S.SLEEVE, E.RETRY): S.PROBING,
}
del S, E


@dataclass(frozen=True, slots=True)
class HealthParams:
    probe_interval: float = 0.25  # heartbeat period while probing
    interval: float = 1.0  # heartbeat period on fastdp
    acks_needed: int = 3  # K consecutive acks move a link to fastdp
    ack_gap: float = 1.0  # acks further apart than this are not consecutive
    probe_timeout: float = 5.0  # probing gives up after this long without K acks
    dead_after: float = 3.5  # on fastdp, this long without an ack moves the link back
    backoff_initial: float = 5.0  # first wait before probing again
    backoff_max: float = 300.0
    stable_after: float = 60.0  # this long on fastdp resets the backoff

    def __post_init__(self) -> None:
        if self.acks_needed < 1:
            raise ValueError("acks_needed must be >= 1")
        if min(self.probe_interval, self.interval, self.ack_gap, self.probe_timeout,
               self.dead_after, self.backoff_initial) <= 0:
            raise ValueError("health timers must be positive")
        if self.dead_after <= self.interval:
            raise ValueError("dead_after must exceed the heartbeat interval")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max < backoff_initial")


class Health:
    """The fast-datapath state machine of one link."""

    def __init__(self, now: float, params: HealthParams | None = None) -> None:
        self.p = params or HealthParams()
        self.state = State.PROBING
        self._since = now  # when the current state was entered
        self._next_send = now  # heartbeat timer (PROBING, FASTDP)
        self._retry_at = 0.0  # SLEEVE -> PROBING
        self._acks = 0  # consecutive acks in this probe
        self._last_ack: float | None = None
        self._backoff = self.p.backoff_initial
        self._why = "probing the vxlan path"  # detail for the reason string
        self._lost_at: float | None = None
        self.transitions = 0  # times the link entered or left fastdp (flapping shows here)

    # ---------------------------------------------------------------- internals

    def _go(self, event: Event, now: float) -> State:
        try:
            new = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise HealthError(f"{event.value} in state {self.state.value}") from None
        if new is not self.state:
            self.state = new
            self._since = now
        return new

    def _start_probe(self, now: float) -> None:
        self._acks = 0
        self._next_send = now
        self._why = "probing the vxlan path"

    def _fall_back(self, now: float, why: str) -> None:
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.p.backoff_max)
        self._why = why

    # ---------------------------------------------------------------- events

    def enable(self, now: float) -> list[Action]:
        """Allow the kernel path (again); a DISABLED link starts probing at once."""
        before = self.state
        self._go(Event.ENABLE, now)
        if before is State.DISABLED:
            self._backoff = self.p.backoff_initial
            self._start_probe(now)
        return []

    def disable(self, reason: str, now: float) -> list[Action]:
        """Forbid the kernel path, e.g. ``"encryption required"``; leaves fastdp at once."""
        was_fastdp = self.state is State.FASTDP
        self._go(Event.DISABLE, now)
        self._why = reason
        if was_fastdp:
            self.transitions += 1
            return [Action.LEAVE_FASTDP]
        return []

    def on_heartbeat_ack(self, now: float) -> list[Action]:
        """A heartbeat of ours was answered through the kernel path."""
        gap_ok = self._last_ack is not None and now - self._last_ack <= self.p.ack_gap
        self._last_ack = now
        if self.state is not State.PROBING:
            self._go(Event.ACK, now)
            return []
        self._acks = self._acks + 1 if (gap_ok or self._acks == 0) else 1
        if self._acks < self.p.acks_needed:
            self._go(Event.ACK, now)
            return []
        self._go(Event.PROVEN, now)
        self._next_send = now + self.p.interval
        self._lost_at = None
        self.transitions += 1
        return [Action.ENTER_FASTDP]

    def poll(self, now: float) -> list[Action]:
        """Run the timers due at ``now``; returns what the adapter must do, in order."""
        out: list[Action] = []
        if self.state is State.SLEEVE and now >= self._retry_at:
            self._go(Event.RETRY, now)
            self._start_probe(now)
        if self.state is State.PROBING and now - self._since >= self.p.probe_timeout:
            self._go(Event.PROBE_FAILED, now)
            self._fall_back(now, "no answer to vxlan heartbeats" if self._lost_at is None
                            else "vxlan heartbeats lost")
            return out
        if self.state is State.FASTDP:
            last = self._last_ack if self._last_ack is not None else self._since
            if now - last >= self.p.dead_after:
                if now - self._since >= self.p.stable_after:
                    self._backoff = self.p.backoff_initial
                self._go(Event.DEAD, now)
                self._lost_at = now
                self._fall_back(now, "vxlan heartbeats lost")
                self.transitions += 1
                return [Action.LEAVE_FASTDP]
        if self.state in (State.PROBING, State.FASTDP) and now >= self._next_send:
            period = self.p.probe_interval if self.state is State.PROBING else self.p.interval
            # Keep the phase, but never queue a burst after a stall of the caller's loop.
            self._next_send = max(self._next_send + period, now + period / 2)
            out.append(Action.SEND_HEARTBEAT)
        return out

    # ---------------------------------------------------------------- queries

    @property
    def on_fastdp(self) -> bool:
        return self.state is State.FASTDP

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do (None: only events move it)."""
        if self.state is State.DISABLED:
            return None
        if self.state is State.SLEEVE:
            return self._retry_at
        if self.state is State.PROBING:
            return min(self._next_send, self._since + self.p.probe_timeout)
        last = self._last_ack if self._last_ack is not None else self._since
        return min(self._next_send, last + self.p.dead_after)

    def reason(self, now: float) -> str:
        """One line for ``status``: which path carries the link's data, and why."""
        if self.state is State.FASTDP:
            return "fastdp"
        if self.state is State.DISABLED:
            return f"sleeve: {self._why}"
        if self.state is State.PROBING:
            return f"sleeve: {self._why} ({self._acks}/{self.p.acks_needed} heartbeats answered)"
        retry = max(0, round(self._retry_at - now))
        if self._lost_at is not None and self._why == "vxlan heartbeats lost":
            ago = max(0, round(now - self._lost_at))
            return f"sleeve: vxlan heartbeats lost {ago} s ago (retry in {retry} s)"
        return f"sleeve: {self._why} (retry in {retry} s)"

    def status(self, now: float) -> dict[str, object]:
        last = None if self._last_ack is None else round(now - self._last_ack, 1)
        return {"datapath": "fastdp" if self.on_fastdp else "sleeve",
                "state": self.state.value, "reason": self.reason(now),
                "last_ack_s": last, "transitions": self.transitions}
