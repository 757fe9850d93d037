"""Periodic fresh Diffie-Hellman on an open control connection (sans-IO).

Every ``interval`` seconds one side starts an exchange of fresh X25519 ephemerals over
the sealed control channel; both sides then derive new control and data keys from the
DH output and the connection's chaining key (``sleeve.crypto.rekey`` documents the
derivation) and switch to them at well-defined points. Messages (msgpack maps inside
sealed control frames, so authenticated and encrypted under the current keys)::

    rk  {"t": "rk",  "n": uint32 attempt id, "e": bin 32 ephemeral public key,
         "s": uint64 the epoch at which the sender's data keys will switch}
    rk2 {"t": "rk2", "n": the id of the rk it answers, "e": bin 32, "s": uint64}
    rk3 {"t": "rk3", "n": the same id}

Switch-over, each at a message boundary (the control stream is ordered)::

    starter                                     answerer
    S = data.announce()
    rk(n, e_s, S)  ------------------------->   derive; data rx: new keys from epoch S
                                                S' = data.announce()
                   <-------------------------   rk2(n, e_a, S')   (last frame, old tx key)
                                                control tx := new
    derive; control rx := new
    data rx: new keys from epoch S'
    data tx := new (epoch S: the answerer
      has held the keys since before rk2)
    rk3(n)         ------------------------->   (last frame under the old tx key)
    control tx := new                           control rx := new; data tx := new (epoch S')

A data receiver holds the new keys before the first datagram under them can be sent,
and keeps the previous epoch's key for a grace period (``proto.session``), so no
datagram is lost, whatever UDP overtakes on the way.

States (either side of one connection)::

             tick: due / send rk(n)              rk2(n') for one of our attempts
       IDLE -----------------------> STARTED -------------------------------> IDLE
        |  ^                          |  tick: attempt timed out and fewer than
        |  |                          |        MAX_ATTEMPTS: send rk(n+1) (earlier
        |  |                          |        attempts' ephemerals kept: a late rk2
        |  |                          |        still completes); else RekeyError
        |  |                          +-- rk (crossing): the connection's initiator
        |  |                              ignores it (the peer answers ours); the other
        |  |      rk3(n)                  abandons its own and answers -> ANSWERED
        |  +-------------- ANSWERED <-+
        +-- rk(n) / send rk2(n) --^     rk meanwhile: ignored (the starter retried);
                                        no rk3 within the attempts' time: RekeyError

Anything else (rk2 or rk3 we did not ask for, malformed fields, a bad ephemeral) is a
``RekeyError``: the peer broke the authenticated protocol and the connection closes,
which a fresh handshake replaces. Work and memory are bounded: at most MAX_ATTEMPTS
ephemerals per connection, one exchange at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sleeve.crypto.noise import DHLEN, HandshakeError
from sleeve.crypto.rekey import Ephemeral, GenerationKeys, KeySchedule

REKEY_TIMEOUT: Final = 5.0  # per attempt (WireGuard's REKEY_TIMEOUT)
MAX_ATTEMPTS: Final = 3  # then the connection closes: a new handshake is a fresh DH too
# The connection's responder starts exchanges only as a backup, this much later than the
# initiator would, so that the two rarely cross.
BACKUP_FACTOR: Final = 1.5
KINDS: Final = frozenset(("rk", "rk2", "rk3"))


class RekeyError(Exception):
    """The peer broke the rekey protocol or never completed it: close the connection."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class DataKeys(Protocol):
    """The data session's side of a switch-over (``proto.session.DataSession``)."""

    def announce(self) -> int:
        """The epoch our sending will switch at (idempotent until ``switch_send``)."""

    def install_recv(self, key: bytes, start: int) -> None:
        """The peer's datagrams from epoch ``start`` on are sealed under ``key``."""

    def switch_send(self, key: bytes) -> None:
        """Seal from the announced epoch on under ``key``."""


class State(enum.Enum):
    IDLE = "idle"
    STARTED = "started"
    ANSWERED = "answered"


@dataclass(slots=True)
class Step:
    """What the control channel does with one rekey message, in this order."""

    reply: dict[str, Any] | None = None  # seal and send under the current send key
    rx_key: bytes | None = field(default=None, repr=False)  # then open later frames with it
    tx_key: bytes | None = field(default=None, repr=False)  # then seal later frames with it


def _field_u(m: dict[str, Any], name: str, bits: int) -> int:
    v = m.get(name)
    if type(v) is not int or not 0 <= v < 1 << bits:
        raise RekeyError("bad_rekey", f"rekey message field {name!r} missing or out of range")
    return v


def _field_key(m: dict[str, Any]) -> bytes:
    v = m.get("e")
    if type(v) is not bytes or len(v) != DHLEN:
        raise RekeyError("bad_rekey", "rekey message lacks a 32-byte ephemeral key")
    return v


class Rekeyer:
    """One connection's rekey exchanges. ``initiator``: we dialled the connection."""

    def __init__(self, *, initiator: bool, schedule: KeySchedule, data: DataKeys,
                 interval: float | None, timeout: float = REKEY_TIMEOUT,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        if interval is not None and not interval > 0:
            raise ValueError("rekey interval must be > 0")
        self.initiator = initiator
        self.state = State.IDLE
        self.exchanges = 0  # completed, on this connection
        self.retries = 0
        self.crossed = 0  # both sides started at once
        self.ignored = 0  # an rk while we answered one (the starter retried)
        self._schedule = schedule
        self._data = data
        # Starting is ours to do every `interval` (None: only answer, e.g. in tests).
        self._period = None if interval is None else interval * (1 if initiator else
                                                                 BACKUP_FACTOR)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._due: float | None = None  # set by the first tick after (re)entering IDLE
        # STARTED: the current attempt's; ANSWERED: rk3's (None: set by the next tick)
        self._deadline: float | None = None
        self._next_id = 0
        self._attempts: dict[int, Ephemeral] = {}  # STARTED: id -> our ephemeral
        self._start_epoch = 0  # STARTED: the data epoch we announced
        self._answered = 0  # ANSWERED: the id we answered
        self._pending: GenerationKeys | None = None  # ANSWERED: keys waiting for rk3

    def __repr__(self) -> str:
        return f"Rekeyer(state={self.state.value}, exchanges={self.exchanges})"

    # ------------------------------------------------------------------ time

    @property
    def period(self) -> float | None:
        """Seconds between the exchanges we start (None: we only answer)."""
        return self._period

    def next_deadline(self) -> float | None:
        if self.state is State.IDLE:
            return self._due
        return self._deadline

    def tick(self, now: float) -> dict[str, Any] | None:
        """The rk message to send now, if any. Raises RekeyError when attempts run out."""
        if self.state is State.IDLE:
            if self._period is None:
                return None
            if self._due is None:
                self._due = now + self._period
            if now < self._due:
                return None
            self._start_epoch = self._data.announce()
            self.state = State.STARTED
            return self._attempt(now)
        if self._deadline is None:
            self._deadline = now + self._timeout * self._max_attempts
        if now < self._deadline:
            return None
        if self.state is State.STARTED and len(self._attempts) < self._max_attempts:
            self.retries += 1
            return self._attempt(now)
        raise RekeyError("rekey_timeout", f"the peer did not complete a key exchange in "
                         f"{self._max_attempts} x {self._timeout:g} s")

    def _attempt(self, now: float) -> dict[str, Any]:
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        eph = Ephemeral()
        self._attempts[self._next_id] = eph
        self._deadline = now + self._timeout
        return {"t": "rk", "n": self._next_id, "e": eph.public, "s": self._start_epoch}

    # ------------------------------------------------------------------ messages

    def on_message(self, m: dict[str, Any]) -> Step:
        """One authenticated rk/rk2/rk3 message. Raises RekeyError on a protocol break."""
        t = m["t"]
        n = _field_u(m, "n", 32)
        try:
            if t == "rk":
                return self._on_rk(n, m)
            if t == "rk2":
                return self._on_rk2(n, m)
            if t == "rk3":
                return self._on_rk3(n)
        except HandshakeError as e:  # a bad ephemeral from the peer
            raise RekeyError("bad_rekey", str(e)) from None
        except ValueError as e:  # the data session refused an announced epoch
            raise RekeyError("bad_rekey", str(e)) from None
        raise RekeyError("protocol", f"not a rekey message: {t!r}")

    def _on_rk(self, n: int, m: dict[str, Any]) -> Step:
        start = _field_u(m, "s", 63)
        if self.state is State.ANSWERED:
            self.ignored += 1  # a retry of the exchange we answered: rk2 is on its way
            return Step()
        if self.state is State.STARTED:
            self.crossed += 1
            if self.initiator:
                return Step()  # ours wins: the peer answers it
            self._abandon()
        mine = Ephemeral()
        try:
            theirs = _field_key(m)
            keys = self._schedule.next(mine.dh(theirs), theirs, mine.public)
        finally:
            mine.wipe()
        _, recv = self._split_data(keys)
        self._data.install_recv(recv, start)
        ours = self._data.announce()
        self.state, self._answered, self._pending = State.ANSWERED, n, keys
        self._deadline = None  # the next tick starts rk3's clock
        ctl_send, _ = self._split_control(keys)
        return Step(reply={"t": "rk2", "n": n, "e": mine.public, "s": ours}, tx_key=ctl_send)

    def _on_rk2(self, n: int, m: dict[str, Any]) -> Step:
        start = _field_u(m, "s", 63)
        eph = self._attempts.get(n) if self.state is State.STARTED else None
        if eph is None:
            raise RekeyError("protocol", f"rk2 for exchange {n}, which we did not start")
        theirs = _field_key(m)
        keys = self._schedule.next(eph.dh(theirs), eph.public, theirs)
        self._abandon()
        send, recv = self._split_data(keys)
        self._data.install_recv(recv, start)
        self._data.switch_send(send)
        self._done()
        ctl_send, ctl_recv = self._split_control(keys)
        return Step(reply={"t": "rk3", "n": n}, rx_key=ctl_recv, tx_key=ctl_send)

    def _on_rk3(self, n: int) -> Step:
        keys = self._pending
        if self.state is not State.ANSWERED or keys is None or n != self._answered:
            raise RekeyError("protocol", f"rk3 for exchange {n}, which we did not answer")
        send, _ = self._split_data(keys)
        self._data.switch_send(send)
        self._done()
        _, ctl_recv = self._split_control(keys)
        return Step(rx_key=ctl_recv)

    # ------------------------------------------------------------------ helpers

    def _split_data(self, k: GenerationKeys) -> tuple[bytes, bytes]:
        return (k.data_i2r, k.data_r2i) if self.initiator else (k.data_r2i, k.data_i2r)

    def _split_control(self, k: GenerationKeys) -> tuple[bytes, bytes]:
        return ((k.control_i2r, k.control_r2i) if self.initiator
                else (k.control_r2i, k.control_i2r))

    def _abandon(self) -> None:
        for eph in self._attempts.values():
            eph.wipe()
        self._attempts.clear()

    def _done(self) -> None:
        self.exchanges += 1
        self.state, self._pending, self._due = State.IDLE, None, None

    def wipe(self) -> None:
        """Zero every secret this side holds (the connection ended)."""
        self._abandon()
        self._pending = None
        self._schedule.wipe()

    def status(self) -> dict[str, Any]:
        return {"exchanges": self.exchanges, "generation": self._schedule.generation,
                "state": self.state.value, "retries": self.retries, "crossed": self.crossed,
                "ignored": self.ignored}
