"""One data-plane session: the keys, counters and replay windows of one link.

Order on receive is fixed (STYLE 7): authenticate, then replay-check, then
let the caller learn anything (endpoint, MACs) from the contents.

Key rotation (issue 8). Each direction's keys form a one-way chain of *epochs*
(``sleeve.crypto.aead.KeyChain``); epoch 0 is the handshake's key, so a restarted peer,
which always re-handshakes, starts from fresh keys and nothing of the old session opens.

- Send: the sealer moves to the next epoch after ``rekey_after_seconds`` or
  ``rekey_after_messages`` datagrams, whichever comes first. The counter (the nonce)
  restarts at 0 in each epoch and a key never seals more than ``rekey_after_messages``
  datagrams, so no nonce is reused under one key. The epoch modulo 2**16 travels in the
  header, which is associated data.
- Receive: we hold the current epoch and the previous one, each with its own replay
  window. A datagram of a later epoch, at most ``MAX_EPOCH_SKIP`` ahead (a sender may
  rotate several times while nothing reaches us), is decrypted with that epoch's key;
  only if it authenticates do we move there. The previous epoch is accepted for
  ``reject_previous_after`` seconds after we moved on (datagrams reordered across the
  boundary); after that, or for anything older, the drop reason is ``expired_key``.
- Work is bounded: every datagram costs at most one AEAD decryption whatever its
  header says, and the keys of epochs ahead are derived at most once each
  (``MAX_EPOCH_SKIP`` of them, cached until we get there or the session ends). A
  forgery changes nothing that decides what is accepted.
- The hot path (current epoch) adds to the pre-rotation code two byte compares on
  receive and one clock read and float compare on send; rotation and housekeeping run
  only when that compare says a deadline passed.

Nothing is accepted twice: each epoch's key is paired with one replay window for as
long as we hold the key, and the chain only moves forward, so a key we dropped can
never be re-derived.

Fresh Diffie-Hellman (issue 21, ``proto.rekey``). A hash chain cannot recover from a
leaked key, so the router replaces the time-based chain step with a fresh DH exchange
over the control channel (the link passes ``rekey_after_seconds=inf``); the epochs stay,
as the switch-over's numbering. ``announce()`` names our next epoch as the one the new
keys start at and holds the time-based step until ``switch_send(key)`` puts us there;
the peer learns that epoch in the exchange and calls ``install_recv(key, epoch)``, which
*splices* the new root into its receive chain at that epoch: the lookahead derives
epoch e from the splice when one starts at e, from the previous chain otherwise. The
switch is therefore an ordinary one-epoch step for the receiver, with the same trial
decryption and the same grace for the previous key, and costs the hot path nothing.
The volume step (``rekey_after_messages``) stays: it bounds any one key's use between
exchanges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Final

from sleeve.crypto.aead import COUNTER_LIMIT, DecryptError, KeyChain, Opener, RekeyRequired, Sealer
from sleeve.proto.datagram import (
    EPOCH_MASK,
    EPOCH_OFFSET,
    HEADER,
    HEADER_LEN,
    TYPE_DATA,
    VERSION,
    encode_header,
)
from sleeve.proto.replay import ReplayWindow

REKEY_AFTER_SECONDS: Final = 120.0  # WireGuard's REKEY_AFTER_TIME
REKEY_AFTER_MESSAGES: Final = 2**40  # far below COUNTER_LIMIT and ChaCha20-Poly1305's limits
# How long the previous epoch's key still opens datagrams once a later epoch authenticated.
# Only datagrams sealed before the peer rotated can legitimately be in flight, so this just
# covers reordering and queueing in the network; shorter means better forward secrecy.
REJECT_PREVIOUS_AFTER: Final = 10.0
# Epochs a datagram may be ahead of ours and still be tried. A peer that keeps sending
# while nothing reaches us (one-way outage) rotates every REKEY_AFTER_SECONDS: 64 epochs
# is about 2 h of such silence, after which only a new handshake resynchronises.
MAX_EPOCH_SKIP: Final = 64
# Announced fresh-DH roots held ahead of our receive epoch (see install_recv).
MAX_SPLICES: Final = 2

EXPIRED_KEY: Final = "expired_key"
# An epoch we hold no key for and cannot derive one for (too far ahead, or before the
# session began). It is reported as an authentication failure, which it is: the existing
# codec/fuzz contracts say a tampered header yields "auth". A distinct reason for
# operators ("bad_epoch") is a one-line change here plus those tests.
UNKNOWN_EPOCH: Final = "auth"

_HI: Final = EPOCH_OFFSET  # open() spells them 2 and 3: constants cost a global lookup
_LO: Final = EPOCH_OFFSET + 1
assert (_HI, _LO) == (2, 3)
_HALF: Final = (EPOCH_MASK + 1) // 2
_NEVER: Final = float("inf")


class DataSession:
    __slots__ = (
        "_ahead", "_clock", "_encrypt", "_grace", "_header", "_opener", "_prev_opener",
        "_prev_replay", "_prev_until", "_rekey_messages", "_rekey_seconds", "_rx_chain",
        "_rx_hi", "_rx_lo", "_sealer", "_sent_before", "_splices", "_tx_chain",
        "_tx_deadline", "_tx_next", "_tx_wire", "_wake_at", "local_index", "remote_index",
        "replay",
    )

    def __init__(self, local_index: int, remote_index: int, send_key: bytes, recv_key: bytes,
                 encrypt: bool, *, rekey_after_seconds: float = REKEY_AFTER_SECONDS,
                 rekey_after_messages: int = REKEY_AFTER_MESSAGES,
                 reject_previous_after: float = REJECT_PREVIOUS_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rekey_after_seconds > 0:
            raise ValueError("rekey_after_seconds must be > 0")
        if not 1 <= rekey_after_messages <= COUNTER_LIMIT:
            raise ValueError(f"rekey_after_messages must be 1..{COUNTER_LIMIT}")
        if not reject_previous_after >= 0:
            raise ValueError("reject_previous_after must be >= 0")
        self.local_index = local_index
        self.remote_index = remote_index
        self._encrypt = encrypt
        self._clock = clock
        self._rekey_seconds = rekey_after_seconds
        self._rekey_messages = rekey_after_messages
        self._grace = reject_previous_after
        # send
        self._tx_chain = KeyChain(send_key)
        self._sealer = Sealer(self._tx_chain.key(), encrypt, rekey_after_messages)
        self._tx_wire = 0
        self._header = self._header_builder()
        self._sent_before = 0
        self._tx_deadline = clock() + rekey_after_seconds
        self._tx_next: int | None = None  # the epoch a fresh-DH switch was announced for
        # receive: the current epoch, the previous one, and lazily derived ones ahead
        self._rx_chain = KeyChain(recv_key)
        self._opener = Opener(self._rx_chain.key(), encrypt)
        self.replay = ReplayWindow()  # the current epoch's window
        self._rx_hi = self._rx_lo = 0
        self._prev_opener: Opener | None = None
        self._prev_replay: ReplayWindow | None = None
        self._prev_until = _NEVER
        self._ahead: list[tuple[KeyChain, Opener]] = []  # epochs current+1, current+2, ...
        # Fresh-DH keys the peer announced: first epoch -> the chain rooted at the new key
        self._splices: dict[int, KeyChain] = {}
        self._wake_at = self._tx_deadline  # earliest of the send and previous-key deadlines

    def __repr__(self) -> str:  # never show keys
        return (f"DataSession(local={self.local_index}, remote={self.remote_index}, "
                f"send_epoch={self.send_epoch}, recv_epoch={self.recv_epoch})")

    # ------------------------------------------------------------------ send

    def _header_builder(self) -> Callable[[int], bytes]:
        """``counter -> header`` for the current send epoch.

        ``encode_header`` with the epoch and receiver bound, as a C-level partial of the
        struct's ``pack`` so the hot path runs no Python frame for it; rebuilt on
        rotation (``remote_index`` is fixed for the life of the session).
        """
        build = partial(HEADER.pack, TYPE_DATA, VERSION, self._tx_wire, self.remote_index)
        assert build(0) == encode_header(self.remote_index, 0, self._tx_wire)
        return build

    def seal(self, body: bytes) -> bytes:
        if self._clock() >= self._wake_at:
            self.tick()
        try:
            return self._sealer.seal(self._header, body)
        except RekeyRequired:  # this epoch sealed rekey_after_messages datagrams
            self._rotate_send(self._clock())
            return self._sealer.seal(self._header, body)

    def _rotate_send(self, now: float) -> None:
        self._tx_chain.advance()  # overwrites the old chain key
        self._use_send_chain(self._tx_chain, now)

    def _use_send_chain(self, chain: KeyChain, now: float) -> None:
        self._sent_before += self._sealer.counter
        self._tx_chain = chain
        self._sealer = Sealer(chain.key(), self._encrypt, self._rekey_messages)
        self._tx_wire = self._tx_chain.epoch & EPOCH_MASK
        self._header = self._header_builder()
        self._tx_deadline = now + self._rekey_seconds
        self._wake_at = min(self._tx_deadline, self._prev_until)

    def tick(self, now: float | None = None) -> None:
        """Run what is due: rotate the send key, forget an expired previous receive key.

        ``seal`` calls it when a deadline passed; a caller with a timer may call it too
        so an expired key is dropped even when nothing is sealed.
        """
        if now is None:
            now = self._clock()
        if now >= self._prev_until:
            self._drop_previous()
        if now >= self._tx_deadline:
            if self._tx_next is None:
                self._rotate_send(now)
            else:  # a fresh-DH switch is coming: it is the next rotation
                self._tx_deadline = _NEVER
        self._wake_at = min(self._tx_deadline, self._prev_until)

    # ------------------------------------------------------------------ fresh DH (proto.rekey)

    def announce(self) -> int:
        """The epoch our sending will switch to fresh-DH keys at: the next one.

        Until ``switch_send`` the send chain does not rotate on time (the switch is that
        rotation). It still rotates on volume, which no key may exceed; should that
        happen first (``rekey_after_messages`` datagrams within one exchange, some 2**40
        in the router), ``switch_send`` lands one epoch later and the peer, which takes
        the announced epoch as the new keys', drops the datagrams in between as "auth".
        """
        if self._tx_next is None:
            self._tx_next = self._tx_chain.epoch + 1
        return self._tx_next

    def switch_send(self, key: bytes) -> None:
        """Seal from the announced epoch on under the chain rooted at ``key``."""
        start = self._tx_next
        if start is None:
            raise ValueError("switch_send without announce")
        chain = KeyChain(key, start)
        while chain.epoch <= self._tx_chain.epoch:  # the volume limit moved us on meanwhile
            chain.advance()
        old = self._tx_chain
        self._tx_next = None
        self._use_send_chain(chain, self._clock())
        old.wipe()

    def install_recv(self, key: bytes, start: int) -> None:
        """The peer's datagrams of epoch ``start`` and later use the chain rooted at ``key``.

        Called before the peer can send under it, so the first such datagram opens. The
        epoch before ``start`` stays the previous key for the grace period once we move on.
        """
        current = self._rx_chain.epoch
        if not current < start:
            raise ValueError(f"announced key epoch {start} is not after our {current}")
        if start > current + MAX_EPOCH_SKIP:
            # Nothing reached us under the epochs in between (the link's data runs over
            # TCP, or UDP is lost one way) while each exchange moved the peer's sending
            # on by one: jump to the announced key at once, as a datagram of it would
            # move us; the current key stays the previous one for the grace period.
            for chain in (*(c for c, _ in self._ahead), *self._splices.values()):
                chain.wipe()
            self._ahead.clear()
            self._splices.clear()
            chain = KeyChain(key, start)
            self._ahead.append((chain, Opener(chain.key(), self._encrypt)))
            self._advance(1)
            return
        keep = start - current - 1  # lookahead chains derived from the old root past it go
        for chain, _ in self._ahead[keep:]:
            chain.wipe()
        del self._ahead[keep:]
        for later in [e for e in self._splices if e >= start]:
            self._splices.pop(later).wipe()
        if len(self._splices) >= MAX_SPLICES:  # the peer moved on twice meanwhile: the
            oldest = min(self._splices)        # oldest only opened datagrams long past
            self._splices.pop(oldest).wipe()
            live = {id(c) for c in self._splices.values()}  # the lookahead shares them
            for chain, _ in self._ahead[oldest - current - 1:]:
                if id(chain) not in live:
                    chain.wipe()
            del self._ahead[oldest - current - 1:]
        self._splices[start] = KeyChain(key, start)

    @property
    def sent(self) -> int:
        """Datagrams sealed in this session, all epochs together."""
        return self._sent_before + self._sealer.counter

    @property
    def send_epoch(self) -> int:
        return self._tx_chain.epoch

    # ------------------------------------------------------------------ receive

    @property
    def recv_epoch(self) -> int:
        return self._rx_chain.epoch

    def open(self, counter: int, dgram: bytes) -> bytes | str:
        """Return the authenticated body, or the drop reason (a str). Never raises."""
        try:  # the key epoch (bytes _HI, _LO) as two small ints: no allocation
            other = dgram[3] != self._rx_lo or dgram[2] != self._rx_hi
        except IndexError:  # shorter than a header (Opener rejects any short datagram)
            return "auth"
        if other:
            return self._open_other_epoch(counter, dgram)
        try:
            body = self._opener.open(counter, dgram[:HEADER_LEN], dgram[HEADER_LEN:])
        except DecryptError:
            return "auth"
        reason = self.replay.accept(counter)
        if reason is not None:
            return reason
        return body

    def _open_other_epoch(self, counter: int, dgram: bytes) -> bytes | str:
        epoch = self._rx_chain.epoch
        delta = ((dgram[_HI] << 8 | dgram[_LO]) - epoch) & EPOCH_MASK
        if delta == EPOCH_MASK:  # the previous epoch
            opener, window = self._prev_opener, self._prev_replay
            if opener is None or window is None:
                return EXPIRED_KEY if epoch else UNKNOWN_EPOCH
            if self._clock() >= self._prev_until:
                self._drop_previous()
                return EXPIRED_KEY
            try:
                body = opener.open(counter, dgram[:HEADER_LEN], dgram[HEADER_LEN:])
            except DecryptError:
                return "auth"
            reason = window.accept(counter)
            return body if reason is None else reason
        if delta <= MAX_EPOCH_SKIP:  # ahead: one trial decryption, move only if genuine
            try:
                body = self._lookahead(delta).open(counter, dgram[:HEADER_LEN],
                                                   dgram[HEADER_LEN:])
            except DecryptError:
                return "auth"
            self._advance(delta)
            reason = self.replay.accept(counter)  # a fresh window: always accepts
            return body if reason is None else reason
        if delta >= _HALF and EPOCH_MASK + 1 - delta <= epoch:
            return EXPIRED_KEY  # an epoch we had and left behind
        return UNKNOWN_EPOCH

    def _lookahead(self, delta: int) -> Opener:
        """The opener of epoch current+delta, deriving (once) the keys up to it."""
        ahead = self._ahead
        while len(ahead) < delta:
            chain = self._splices.get(self._rx_chain.epoch + len(ahead) + 1)
            if chain is None:
                chain = (ahead[-1][0] if ahead else self._rx_chain).next()
            ahead.append((chain, Opener(chain.key(), self._encrypt)))
        return ahead[delta - 1][1]

    def _advance(self, delta: int) -> None:
        """Make epoch current+delta current; the one before it becomes the previous."""
        ahead = self._ahead
        if delta == 1:
            prev_opener, prev_replay = self._opener, self.replay
        else:  # we skipped epochs: the one just before the new one was never current
            prev_opener, prev_replay = ahead[delta - 2][1], ReplayWindow()
        self._rx_chain.wipe()
        for chain, _ in ahead[: delta - 1]:
            chain.wipe()
        self._rx_chain, self._opener = ahead[delta - 1]
        del ahead[:delta]
        for used in [e for e in self._splices if e <= self._rx_chain.epoch]:
            del self._splices[used]  # now (or already wiped) chains of epochs we reached
        self.replay = ReplayWindow()
        self._prev_opener, self._prev_replay = prev_opener, prev_replay
        self._prev_until = self._clock() + self._grace
        wire = self._rx_chain.epoch & EPOCH_MASK
        self._rx_hi, self._rx_lo = wire >> 8, wire & 0xFF
        self._wake_at = min(self._tx_deadline, self._prev_until)

    def _drop_previous(self) -> None:
        # The Opener's key is immutable bytes: dropping the last reference is all we can do.
        self._prev_opener = self._prev_replay = None
        self._prev_until = _NEVER
        self._wake_at = self._tx_deadline

    # ------------------------------------------------------------------ teardown

    def wipe(self) -> None:
        """Zero the chain keys this session holds (see ``KeyChain`` for what that means).

        Afterwards the session must not be used; it also runs when the session is freed.
        """
        for chain in (self._tx_chain, self._rx_chain, *(c for c, _ in self._ahead),
                      *self._splices.values()):
            chain.wipe()
        self._ahead.clear()
        self._splices.clear()
        self._prev_opener = self._prev_replay = None

    def __del__(self) -> None:
        try:
            self.wipe()
        except Exception:  # a finaliser must not raise (e.g. __init__ failed half-way)
            pass
