"""Key rotation of the data plane (issue 8): sleeve.proto.session + sleeve.crypto.aead.

Two DataSessions with a shared fake clock stand in for two nodes; datagrams go through
the same header parse the node does before ``open``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.crypto import aead
from sleeve.crypto.aead import COUNTER_LIMIT, KeyChain, RekeyRequired, Sealer, derive_data_keys
from sleeve.proto import datagram as dg
from sleeve.proto import session as sess
from sleeve.proto.session import (
    EXPIRED_KEY,
    MAX_EPOCH_SKIP,
    REJECT_PREVIOUS_AFTER,
    DataSession,
)
from tests.test_codec_props import K1, K2, receive  # what the node does with a datagram

# What open() may answer for a datagram that was genuinely sealed for it but is not fresh
# (or whose key is gone): never "auth", which would mean we tried the wrong key.
STALE = {"replay", "too_old", EXPIRED_KEY}


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def pair(clock: Clock, *, seconds: float = 1e9, messages: int = 2**40,
         grace: float = REJECT_PREVIOUS_AFTER, keys: tuple[bytes, bytes] = (K1, K2),
         encrypt: bool = True) -> tuple[DataSession, DataSession]:
    kw: dict[str, object] = dict(rekey_after_seconds=seconds, rekey_after_messages=messages,
                                 reject_previous_after=grace, clock=clock)
    a = DataSession(7, 9, keys[0], keys[1], encrypt, **kw)  # type: ignore[arg-type]
    b = DataSession(9, 7, keys[1], keys[0], encrypt, **kw)  # type: ignore[arg-type]
    return a, b


def wire_epoch(dgram: bytes) -> int:
    return int.from_bytes(dgram[2:4], "big")


def body_of(i: int, direction: int) -> bytes:
    return bytes([direction]) + i.to_bytes(4, "big") + b"payload"


def jitter(items: list[bytes], rng: random.Random, spread: int) -> list[bytes]:
    """Reorder so that no item moves more than ``spread`` places (network reordering)."""
    keyed = sorted(range(len(items)), key=lambda i: i + rng.uniform(0, spread))
    return [items[i] for i in keyed]


# ------------------------------------------------------------------------ continuous flow


@pytest.mark.parametrize("encrypt", [True, False])
@pytest.mark.parametrize("by", ["count", "time"])
def test_continuous_flow_across_many_rotations_loses_nothing(by: str, encrypt: bool) -> None:
    """Both directions at once, >= 50 rotations each, reordered within the replay window
    and across epoch boundaries, and every datagram delivered twice: everything opens
    exactly once."""
    rng = random.Random(f"{by}{encrypt}")
    clock = Clock()
    per_epoch = 40
    if by == "count":
        a, b = pair(clock, messages=per_epoch, encrypt=encrypt)
        step = 0.001
    else:  # 40 datagrams a second, rotation every second
        a, b = pair(clock, seconds=1.0, encrypt=encrypt)
        step = 1.0 / per_epoch
    n = per_epoch * 55 + 7
    ab: list[bytes] = []
    ba: list[bytes] = []
    for i in range(n):
        clock.t += step
        ab.append(a.seal(body_of(i, 1)))
        ba.append(b.seal(body_of(i, 2)))
    assert a.send_epoch >= 50 and b.send_epoch >= 50
    assert a.sent == b.sent == n
    # nonce discipline: (epoch, counter) never repeats and the counter restarts per epoch
    headers = [(wire_epoch(d), dg.decode_header(d)[1]) for d in ab]
    assert len(set(headers)) == n
    assert headers[per_epoch] == (1, 0)

    # deliver: reordered by up to per_epoch places, then each one again later (replays)
    for tx, rx, sent, direction in ((a, b, ab, 1), (b, a, ba, 2)):
        order = jitter(sent, rng, per_epoch)
        schedule = order + jitter(order, rng, 3 * per_epoch)  # duplicates come later
        got: list[bytes] = []
        for d in schedule:
            r = receive(rx, d)
            if isinstance(r, bytes):
                got.append(r)
            else:
                assert r in STALE, r
        assert sorted(got) == sorted(body_of(i, direction) for i in range(n))
        assert rx.recv_epoch == tx.send_epoch


def test_rotation_happens_on_time_and_on_count_whichever_first() -> None:
    clock = Clock()
    a, _ = pair(clock, seconds=10.0, messages=5)
    epochs = [wire_epoch(a.seal(b"x")) for _ in range(12)]
    assert epochs == [0] * 5 + [1] * 5 + [2] * 2  # by count
    clock.t += 9.9
    assert wire_epoch(a.seal(b"x")) == 2
    clock.t += 0.1
    d = a.seal(b"x")  # by time: the epoch started at t=1000, now 1010
    assert (wire_epoch(d), dg.decode_header(d)[1]) == (3, 0)
    assert wire_epoch(a.seal(b"x")) == 3
    # a long idle gap rotates once, not once per missed period
    clock.t += 1000
    assert wire_epoch(a.seal(b"x")) == 4
    assert a.send_epoch == 4 and a.sent == 16


def test_rotation_needs_no_message_exchange_and_is_one_way() -> None:
    """Both ends derive the same keys; the chain cannot be walked back."""
    x, y = KeyChain(K1), KeyChain(K1)
    keys = [x.key()]
    assert keys[0] == K1  # epoch 0 is the handshake key: the pre-rotation wire format
    for _ in range(5):
        x.advance()
        keys.append(x.key())
    ahead = y
    for _ in range(5):
        ahead = ahead.next()
    assert ahead.key() == keys[-1] and ahead.epoch == x.epoch == 5
    assert len(set(keys)) == 6
    assert y.key() == K1 and y.epoch == 0  # next() leaves the original alone
    # direction keys stay apart, and the next key is not the old chain key
    assert KeyChain(K2).next().key() != KeyChain(K1).next().key()
    assert KeyChain(K1).next().key() != KeyChain(K1).next()._chain
    assert K1.hex() not in repr(x) and "epoch=5" in repr(x)


def test_wipe_zeroes_chain_keys() -> None:
    chain = KeyChain(K1)
    raw = chain._chain
    chain.advance()
    assert chain._chain is raw  # advanced in place: the old chain key is gone
    assert bytes(raw) != K1
    chain.wipe()
    assert bytes(raw) == bytes(32)
    clock = Clock()
    a, b = pair(clock, messages=2)
    for _ in range(5):
        receive(b, a.seal(b"x"))
    held = [a._tx_chain._chain, b._rx_chain._chain, a._rx_chain._chain]
    receive(b, a.seal(b"x")[:2] + b"\x00\x09" + bytes(40))  # forged: fills the lookahead
    held += [c._chain for c, _ in b._ahead]
    a.wipe()
    b.wipe()
    assert all(bytes(k) == bytes(32) for k in held)
    assert K1.hex() not in repr(a) and K2.hex() not in repr(b)


# ------------------------------------------------------------------------ grace period


@pytest.mark.parametrize("encrypt", [True, False])
def test_previous_epoch_accepted_during_grace_then_expired_key(encrypt: bool) -> None:
    clock = Clock()
    a, b = pair(clock, messages=4, grace=5.0, encrypt=encrypt)
    old = [a.seal(bytes([i])) for i in range(4)]  # epoch 0
    new = [a.seal(bytes([i + 4])) for i in range(4)]  # epoch 1
    assert receive(b, new[0]) == b"\x04" and b.recv_epoch == 1
    assert receive(b, old[2]) == b"\x02"  # reordered across the boundary
    assert receive(b, old[2]) == "replay"
    clock.t += 4.9
    assert receive(b, old[1]) == b"\x01"
    clock.t += 0.1  # grace over: the previous key is dropped, even for genuine datagrams
    assert receive(b, old[0]) == EXPIRED_KEY
    assert receive(b, old[3]) == EXPIRED_KEY
    assert b._prev_opener is None
    assert [receive(b, d) for d in new[1:]] == [b"\x05", b"\x06", b"\x07"]


def test_two_epochs_back_is_expired_at_once_and_tick_drops_the_previous_key() -> None:
    clock = Clock()
    a, b = pair(clock, messages=2)
    e0 = [a.seal(b"0"), a.seal(b"0")]
    e1 = [a.seal(b"1"), a.seal(b"1")]
    e2 = [a.seal(b"2")]
    assert receive(b, e1[0]) == b"1"
    assert receive(b, e2[0]) == b"2"
    assert receive(b, e0[1]) == EXPIRED_KEY  # two behind: no key any more
    assert receive(b, e1[1]) == b"1"  # one behind, within the grace period
    assert b._prev_opener is not None
    clock.t += REJECT_PREVIOUS_AFTER
    b.tick()  # a node timer (or the next seal) forgets the key without any traffic
    assert b._prev_opener is None
    assert receive(b, e1[1]) == EXPIRED_KEY


def test_previous_key_dropped_by_housekeeping_in_seal() -> None:
    clock = Clock()
    a, b = pair(clock, messages=1, grace=1.0)
    receive(b, a.seal(b"0"))
    receive(b, a.seal(b"1"))
    assert b._prev_opener is not None
    clock.t += 1.0
    b.seal(b"reply")
    assert b._prev_opener is None


# ------------------------------------------------------------------------ forgeries, bounds


def forge(genuine: bytes, epoch: int | None = None, flip_tag: bool = False) -> bytes:
    d = bytearray(genuine)
    if epoch is not None:
        d[2:4] = (epoch & 0xFFFF).to_bytes(2, "big")
    if flip_tag:
        d[-1] ^= 1
    return bytes(d)


class CountOpens:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real: Callable[..., bytes] = aead.Opener.open

        def counting(opener: aead.Opener, counter: int, header: bytes, body: bytes) -> bytes:
            self.calls += 1
            return real(opener, counter, header, body)

        monkeypatch.setattr(aead.Opener, "open", counting)


@pytest.mark.parametrize("encrypt", [True, False])
def test_forged_next_epoch_does_not_advance(encrypt: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    a, b = pair(clock, messages=3, encrypt=encrypt)
    e0 = [a.seal(b"zero") for _ in range(3)]
    e1 = a.seal(b"one")
    opens = CountOpens(monkeypatch)
    forgeries = [
        forge(e1, flip_tag=True),  # epoch+1, bad tag
        forge(e0[0], epoch=1),  # an epoch-0 datagram relabelled: the header is AD
        forge(e1, epoch=0),  # and the other way round
        *(forge(e1, epoch=k) for k in range(2, MAX_EPOCH_SKIP + 1)),  # further ahead
        *(forge(e0[0], epoch=k) for k in (MAX_EPOCH_SKIP + 1, 0x7FFF, 0x8000, 0xFFFF)),
    ]
    for f in forgeries:
        before = opens.calls
        assert receive(b, f) == "auth"
        assert opens.calls - before <= 1  # at most one trial decryption per datagram
    assert b.recv_epoch == 0 and b.replay.highest == -1
    # the lookahead derived each epoch ahead once and holds no more than the bound
    assert len(b._ahead) == MAX_EPOCH_SKIP
    before = opens.calls
    for f in forgeries:
        receive(b, f)
    assert opens.calls - before <= len(forgeries) and len(b._ahead) == MAX_EPOCH_SKIP
    # the genuine flow is undisturbed
    assert receive(b, e0[1]) == b"zero"
    assert receive(b, e1) == b"one" and b.recv_epoch == 1
    assert receive(b, e0[0]) == b"zero"  # previous epoch, in grace
    assert receive(b, e0[1]) == "replay"
    assert len(b._ahead) == MAX_EPOCH_SKIP - 1  # the derived keys ahead are kept, not redone


def test_receiver_catches_up_after_lost_epochs() -> None:
    """A peer that rotated several times while nothing reached us (one-way outage)."""
    clock = Clock()
    a, b = pair(clock, messages=10)
    assert receive(b, a.seal(b"first")) == b"first"
    for _ in range(10 * 20 - 1):  # the rest of epoch 0 and epochs 1..19 never arrive
        a.seal(b"lost")
    late = [a.seal(bytes([i])) for i in range(10)]
    assert receive(b, late[5]) == b"\x05" and b.recv_epoch == a.send_epoch == 20
    assert [receive(b, d) for d in late] == [bytes([i]) if i != 5 else "replay"
                                            for i in range(10)]
    # beyond the skip bound only a new handshake helps, and nothing is accepted
    for _ in range(10 * (MAX_EPOCH_SKIP + 1)):
        a.seal(b"lost")
    too_far = a.seal(b"too far")
    assert receive(b, too_far) == "auth" and b.recv_epoch == 20


def test_skipping_epochs_keeps_the_one_before_as_previous() -> None:
    clock = Clock()
    a, b = pair(clock, messages=2)
    d = [a.seal(bytes([i])) for i in range(10)]  # epochs 0 0 1 1 2 2 3 3 4 4
    assert receive(b, d[7]) == b"\x07" and b.recv_epoch == 3
    assert receive(b, d[4]) == b"\x04"  # epoch 2: previous, never current
    assert receive(b, d[5]) == b"\x05"
    assert receive(b, d[1]) == EXPIRED_KEY  # epoch 0
    assert receive(b, d[6]) == b"\x06"
    assert receive(b, d[9]) == b"\x09"
    assert receive(b, d[6]) == "replay"
    assert receive(b, d[7]) == "replay"


# ------------------------------------------------------------------------ restart


@pytest.mark.parametrize("encrypt", [True, False])
def test_restarted_peer_gets_fresh_keys_and_old_datagrams_are_rejected(encrypt: bool) -> None:
    """A restart means a new handshake: new data keys, epoch 0 again. Even if the new
    session reused the old index, nothing from the old one opens or moves any state."""
    clock = Clock()

    def handshake_keys() -> tuple[bytes, bytes]:
        return derive_data_keys(os.urandom(32), os.urandom(32), os.urandom(64))

    old_keys = handshake_keys()
    a_old, b_old = pair(clock, messages=4, keys=old_keys, encrypt=encrypt)
    old_traffic = [a_old.seal(bytes([i])) for i in range(4 * 6)]  # epochs 0..5
    for d in old_traffic[:10]:
        receive(b_old, d)
    new_keys = handshake_keys()
    assert set(new_keys).isdisjoint(old_keys)
    a_new, b_new = pair(clock, messages=4, keys=new_keys, encrypt=encrypt)
    assert b_new.recv_epoch == 0 and a_new.send_epoch == 0
    for d in old_traffic:
        assert receive(b_new, d) == "auth"
    assert b_new.recv_epoch == 0 and b_new.replay.highest == -1
    assert receive(b_new, a_new.seal(b"hello")) == b"hello"
    # and the other way: the restarted side's datagrams mean nothing to the old session
    for _ in range(4 * 3):
        d = a_new.seal(b"new")
        assert receive(b_old, d) in ("auth", EXPIRED_KEY)
    assert b_old.recv_epoch == 2


# ------------------------------------------------------------------------ wrap-around


def test_epoch_wraps_around_the_16_bit_field() -> None:
    clock = Clock()
    a, b = pair(clock, messages=1)
    first = a.seal(b"\x00\x00\x00\x00")
    assert receive(b, first) == b"\x00\x00\x00\x00"
    n = 0x10000 + 50
    held: bytes | None = None
    for i in range(1, n):
        d = a.seal(i.to_bytes(4, "big"))
        assert wire_epoch(d) == i & 0xFFFF and dg.decode_header(d)[1] == 0
        if i == 0xFFFF:
            held = d  # delivered after the wrap: it is then the previous epoch
            continue
        assert receive(b, d) == i.to_bytes(4, "big"), i
        if i == 0x10000:  # we skipped 0xFFFF: it is the previous epoch across the wrap
            assert held is not None
            assert receive(b, held) == (0xFFFF).to_bytes(4, "big")
            # epoch 0 has the same 16-bit label as epoch 0x10000, but not its key
            assert wire_epoch(first) == wire_epoch(d) == 0
            assert receive(b, first) == "auth"
            assert b.replay.highest == 0
    assert b.recv_epoch == a.send_epoch == n - 1
    assert receive(b, first) == EXPIRED_KEY  # 0x4F epochs behind by its label


# ------------------------------------------------------------------------ API edges


def test_constructor_checks_and_sealer_limit() -> None:
    with pytest.raises(ValueError):
        DataSession(1, 2, K1, K2, True, rekey_after_messages=0)
    with pytest.raises(ValueError):
        DataSession(1, 2, K1, K2, True, rekey_after_messages=COUNTER_LIMIT + 1)
    with pytest.raises(ValueError):
        DataSession(1, 2, K1, K2, True, rekey_after_seconds=0)
    with pytest.raises(ValueError):
        DataSession(1, 2, K1, K2, True, reject_previous_after=-1)
    with pytest.raises(ValueError):
        DataSession(1, 2, b"short", K2, True)
    with pytest.raises(ValueError):
        Sealer(K1, limit=0)
    sealer = Sealer(K1, limit=2)
    sealer.seal(lambda c: b"", b"")
    sealer.seal(lambda c: b"", b"")
    with pytest.raises(RekeyRequired):
        sealer.seal(lambda c: b"", b"")
    assert sealer.counter == 2
    # the defaults: rotation long before the counter limit
    assert sess.REKEY_AFTER_MESSAGES < COUNTER_LIMIT
    assert 0 < sess.REJECT_PREVIOUS_AFTER < sess.REKEY_AFTER_SECONDS
    assert MAX_EPOCH_SKIP < 0x8000


def test_epoch_zero_is_the_pre_rotation_wire_format() -> None:
    """Epoch 0 seals exactly what sleeve sent before rotation (fuzz seeds stay valid)."""
    a, _ = pair(Clock())
    d = a.seal(b"frame")
    old = Sealer(K1).seal(lambda c: dg.HEADER.pack(dg.TYPE_DATA, dg.VERSION, 0, 9, c),
                          b"frame")
    assert d == old
    assert dg.encode_header(9, 5) == dg.encode_header(9, 5, 0)
    assert dg.encode_header(9, 5, 0x1234)[2:4] == b"\x12\x34"
    assert dg.decode_header(dg.encode_header(9, 5, 0xFFFF) + bytes(16)) == (9, 5)


# ------------------------------------------------------------------------ property tests


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["seal", "deliver", "dup", "wait", "junk"]),
                              st.integers(0, 2**16)), min_size=1, max_size=150),
       messages=st.integers(1, 6), grace=st.sampled_from([0.0, 0.5, 3.0]))
def test_property_matches_the_acceptance_model(ops: list[tuple[str, int]], messages: int,
                                               grace: float) -> None:
    """Any mix of sealing (rotating on count and time), delivery in any order, duplicates,
    clock jumps and tampered datagrams. open never raises, never returns a body twice or
    one nobody sealed, and a fresh datagram is accepted exactly when the model says: its
    epoch is the current one or later, or the previous one within the grace period."""
    clock = Clock()
    a, b = pair(clock, seconds=2.0, messages=messages, grace=grace)
    in_flight: list[tuple[int, bytes, bytes]] = []  # (absolute epoch, datagram, body)
    delivered: list[bytes] = []
    accepted: set[bytes] = set()
    cur, prev_until = 0, float("-inf")  # the model of b's receive state
    n = 0
    for op, x in ops:
        if op == "seal":
            body = n.to_bytes(4, "big")
            n += 1
            d = a.seal(body)
            in_flight.append((a.send_epoch, d, body))
        elif op == "wait":
            clock.t += (x % 50) / 10
        elif op == "junk":
            j = bytearray(in_flight[x % len(in_flight)][1] if in_flight else bytes(40))
            j[x % len(j)] ^= 1 + x % 255
            state = (b.recv_epoch, b.replay.highest)
            r = receive(b, bytes(j))
            assert r in ("auth", EXPIRED_KEY, "bad_type", "bad_version", "short",
                         "unknown_session"), r
            assert (b.recv_epoch, b.replay.highest) == state
        elif op == "deliver" and in_flight:
            epoch, d, body = in_flight.pop(x % len(in_flight))
            if epoch > cur:
                want: bytes | str = body
                cur, prev_until = epoch, clock.t + grace
            elif epoch == cur or (epoch == cur - 1 and clock.t < prev_until):
                want = body
            else:
                want = EXPIRED_KEY
            assert receive(b, d) == want, (epoch, cur)
            assert body not in accepted
            if want == body:
                accepted.add(body)
            delivered.append(d)
        elif op == "dup" and delivered:
            assert receive(b, delivered[x % len(delivered)]) in ("replay", EXPIRED_KEY)
        assert b.recv_epoch == cur
    # in order and lossless, the rest and anything new always opens
    in_flight.sort()
    tail = [(a.send_epoch, a.seal(b"t%d" % i), b"t%d" % i) for i in range(3 * messages)]
    for epoch, d, body in in_flight + tail:
        if epoch >= b.recv_epoch:
            assert receive(b, d) == body


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=80), counter=st.integers(0, 2**64 - 1),
       epoch=st.integers(0, 0xFFFF), advance=st.integers(0, 5))
def test_property_open_never_raises_at_any_epoch(junk: bytes, counter: int, epoch: int,
                                                 advance: int) -> None:
    clock = Clock()
    a, b = pair(clock, messages=1)
    for _ in range(advance):
        receive(b, a.seal(b"x"))
    state = (b.recv_epoch, b.replay.highest, len(b._ahead) <= MAX_EPOCH_SKIP)
    d = bytearray(dg.encode_header(9, counter & 0xFFFF, epoch) + junk)
    for dgram in (bytes(d), bytes(d[:3]), junk):
        r = b.open(counter, dgram)
        assert r in ("auth", EXPIRED_KEY)
    assert (b.recv_epoch, b.replay.highest, len(b._ahead) <= MAX_EPOCH_SKIP) == state
