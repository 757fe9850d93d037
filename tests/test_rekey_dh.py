"""Fresh Diffie-Hellman rekeying (issue 21): sleeve.proto.rekey, crypto.rekey, and their
use by ControlChannel and DataSession.

Two real control channels complete the XXpsk3 handshake and each gets a real
DataSession, as a link does; bytes move between them by hand, so a test decides what
is delivered when (crossing, lost, late) and reads a fake clock.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.crypto.aead import derive_data_keys
from sleeve.crypto.rekey import Ephemeral, KeySchedule
from sleeve.proto.control import ControlChannel, ControlError
from sleeve.proto.rekey import MAX_ATTEMPTS, REKEY_TIMEOUT, Rekeyer, RekeyError, State
from sleeve.proto.session import EXPIRED_KEY, MAX_EPOCH_SKIP, DataSession
from tests.test_codec_props import receive
from tests.test_control_props import handshake, pair
from tests.test_rekey import Clock

GRACE = 0.5


class Side:
    """One end of a link: the control channel, its data session, what it has received."""

    def __init__(self, ch: ControlChannel, clock: Clock, interval: float | None) -> None:
        est = ch.established
        assert est is not None
        self.ch = ch
        mine, theirs = (1, 2) if ch.initiator else (2, 1)
        self.data = DataSession(mine, theirs, est.data_send, est.data_recv, True,
                                rekey_after_seconds=float("inf"),
                                reject_previous_after=GRACE, clock=clock)
        self.rk = ch.enable_rekey(self.data, interval)
        self.got: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> bytes:
        out, msgs, _ = self.ch.feed(data)
        self.got += msgs
        return out


def link(interval_i: float | None = 1.0, interval_r: float | None = 1.0
         ) -> tuple[Side, Side, Clock]:
    clock = Clock()
    ini, resp = pair()
    handshake(ini, resp, [[], [], [], []])
    return Side(ini, clock, interval_i), Side(resp, clock, interval_r), clock


def settle(a: Side, b: Side, out_a: bytes = b"", out_b: bytes = b"") -> None:
    """Deliver bytes both ways until nothing more is said (TCP: in order, nothing lost)."""
    for _ in range(10):
        if not out_a and not out_b:
            return
        out_a, out_b = a.feed(out_b), b.feed(out_a)
    raise AssertionError("rekey did not settle")


def exchange(a: Side, b: Side, clock: Clock, step: float = 1.6) -> None:
    """Let time pass until one side starts an exchange, and carry it through."""
    assert not a.ch.tick(clock.t) and not b.ch.tick(clock.t)  # arms the timers
    clock.t += step
    settle(a, b, a.ch.tick(clock.t), b.ch.tick(clock.t))


def talk(a: Side, b: Side) -> None:
    """Control messages still pass both ways under whatever keys are current."""
    n = len(b.got), len(a.got)
    assert b.feed(a.ch.seal({"t": "ping"})) == b"" and a.feed(b.ch.seal({"t": "pong"})) == b""
    assert b.got[n[0]:] == [{"t": "ping"}] and a.got[n[1]:] == [{"t": "pong"}]


# ------------------------------------------------------------------------ the exchange


def test_exchanges_renew_control_and_data_keys_and_lose_nothing() -> None:
    a, b, clock = link()
    tx_keys = {(a.ch._tx.key, b.ch._tx.key)}  # type: ignore[union-attr]
    in_flight: list[tuple[Side, bytes, bytes]] = []
    for i in range(6):
        # datagrams sealed before the exchange and delivered after it still open
        in_flight = [(b, a.data.seal(b"a%d" % i), b"a%d" % i),
                     (a, b.data.seal(b"b%d" % i), b"b%d" % i)]
        exchange(a, b, clock)
        talk(a, b)
        tx_keys.add((a.ch._tx.key, b.ch._tx.key))  # type: ignore[union-attr]
        for dst, dgram, body in in_flight:
            assert receive(dst.data, dgram) == body
        assert receive(b.data, a.data.seal(b"x")) == b"x"
        assert receive(a.data, b.data.seal(b"y")) == b"y"
    assert a.rk.exchanges == b.rk.exchanges == 6
    assert a.rk.status()["generation"] == b.rk.status()["generation"] == 6
    assert len(tx_keys) == 7  # a fresh control key pair every time
    assert a.data.send_epoch == b.data.recv_epoch == 6
    assert a.rk.state is b.rk.state is State.IDLE


def test_exchanges_with_no_datagram_received_keep_the_link() -> None:
    """A link whose data runs over TCP opens no datagram, so its receive epoch stays while
    every exchange moves the peer's sending on by one: past MAX_EPOCH_SKIP exchanges the
    receiver jumps to the announced key instead of breaking the protocol (found in
    review: the link was closed every 64 exchanges)."""
    a, b, clock = link()
    for _ in range(MAX_EPOCH_SKIP + 6):
        exchange(a, b, clock)
    assert a.rk.exchanges == b.rk.exchanges == MAX_EPOCH_SKIP + 6
    assert receive(b.data, a.data.seal(b"x")) == b"x"
    assert receive(a.data, b.data.seal(b"y")) == b"y"


def test_datagrams_overtaking_the_control_stream_still_open() -> None:
    """UDP may arrive before the control frame that announced its keys: every datagram
    sealed at any point of an exchange opens, whatever was delivered on the stream."""
    a, b, clock = link()

    def both_open() -> None:
        assert receive(b.data, a.data.seal(b"ab")) == b"ab"
        assert receive(a.data, b.data.seal(b"ba")) == b"ba"

    a.ch.tick(clock.t), b.ch.tick(clock.t)
    clock.t += 1.1
    rk = a.ch.tick(clock.t)
    both_open()  # rk in flight
    rk2 = b.feed(rk)
    assert rk2
    both_open()  # rk2 in flight: b must still send under the old key
    rk3 = a.feed(rk2)
    assert rk3
    assert a.data.send_epoch == 1  # a switched: b holds its new keys since rk
    both_open()  # rk3 in flight
    assert b.data.send_epoch == 0
    assert b.feed(rk3) == b""
    assert b.data.send_epoch == 1
    both_open()
    talk(a, b)
    assert a.rk.exchanges == b.rk.exchanges == 1


def test_old_data_key_refused_as_expired_key_after_the_grace_period() -> None:
    a, b, clock = link()
    old = [a.data.seal(b"old%d" % i) for i in range(3)]
    assert receive(b.data, old[0]) == b"old0"
    exchange(a, b, clock)
    assert receive(b.data, a.data.seal(b"new")) == b"new"  # b moved to the new key
    assert receive(b.data, old[1]) == b"old1"  # the previous key, within its grace
    clock.t += GRACE + 0.01
    assert receive(b.data, old[2]) == EXPIRED_KEY
    exchange(a, b, clock)
    exchange(a, b, clock)
    assert receive(b.data, a.data.seal(b"n")) == b"n"
    assert receive(b.data, old[2]) == EXPIRED_KEY  # several exchanges later: still refused


def test_crossing_exchanges_complete_once_and_agree() -> None:
    a, b, clock = link(1.0, 1.0)
    a.ch.tick(clock.t), b.ch.tick(clock.t)  # arm both timers
    clock.t += 10  # both due at once
    ra, rb = a.ch.tick(clock.t), b.ch.tick(clock.t)
    assert ra and rb and a.rk.state is b.rk.state is State.STARTED
    settle(a, b, ra, rb)
    assert a.rk.exchanges == b.rk.exchanges == 1
    assert a.rk.crossed == b.rk.crossed == 1  # each saw the other's rk
    assert a.rk.state is b.rk.state is State.IDLE
    talk(a, b)
    assert receive(b.data, a.data.seal(b"1")) == b"1"
    assert receive(a.data, b.data.seal(b"2")) == b"2"


def test_only_the_responder_as_backup_starts_later() -> None:
    a, b, clock = link(1.0, 1.0)
    a.ch.tick(clock.t), b.ch.tick(clock.t)  # arm both timers
    clock.t += 1.2
    assert a.ch.tick(clock.t) and not b.ch.tick(clock.t)  # b waits 1.5 intervals
    a2, b2, clock2 = link(None, 1.0)  # the initiator never starts: b does
    a2.ch.tick(clock2.t), b2.ch.tick(clock2.t)
    clock2.t += 1.6
    assert not a2.ch.tick(clock2.t)
    settle(a2, b2, b"", b2.ch.tick(clock2.t))
    assert a2.rk.exchanges == b2.rk.exchanges == 1
    talk(a2, b2)


# ------------------------------------------------------------------------ the state machine


class FakeData:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.epoch = 0

    def announce(self) -> int:
        self.calls.append(("announce", None))
        return self.epoch + 1

    def install_recv(self, key: bytes, start: int) -> None:
        self.calls.append(("recv", start))

    def switch_send(self, key: bytes) -> None:
        self.calls.append(("send", None))
        self.epoch += 1


def machines(interval: float = 1.0) -> tuple[Rekeyer, Rekeyer, FakeData, FakeData]:
    ck, h = bytes(range(64)), bytes(range(64, 128))
    da, db = FakeData(), FakeData()
    return (Rekeyer(initiator=True, schedule=KeySchedule(ck, h), data=da, interval=interval),
            Rekeyer(initiator=False, schedule=KeySchedule(ck, h), data=db, interval=interval),
            da, db)


def start(r: Rekeyer, now: float) -> dict[str, Any]:
    assert r.tick(now) is None  # arms the timer
    m = r.tick(now + 2.0)
    assert m is not None and m["t"] == "rk"
    return m


def test_lost_reply_is_retried_and_a_late_reply_still_completes() -> None:
    a, b, da, db = machines()
    assert a.next_deadline() is None  # not armed before the first tick
    rk1 = start(a, 0.0)
    assert a.next_deadline() == 2.0 + REKEY_TIMEOUT
    assert a.tick(2.0 + REKEY_TIMEOUT - 0.1) is None  # not yet timed out
    rk2_ = a.tick(2.0 + REKEY_TIMEOUT)  # rk1 (or its answer) lost: retry
    assert rk2_ is not None and rk2_["n"] != rk1["n"] and rk2_["e"] != rk1["e"]
    assert a.retries == 1
    # the answer to the first attempt arrives late: it completes the exchange
    step_b = b.on_message(rk1)
    assert step_b.reply is not None and step_b.tx_key is not None and step_b.rx_key is None
    assert b.on_message(rk2_).reply is None and b.ignored == 1  # the retry: ignored
    step_a = a.on_message(step_b.reply)
    assert step_a.reply == {"t": "rk3", "n": rk1["n"]}
    assert step_a.tx_key == b.on_message(step_a.reply).rx_key  # both derived the same
    assert step_a.rx_key == step_b.tx_key
    assert a.exchanges == b.exchanges == 1
    assert [c[0] for c in da.calls] == ["announce", "recv", "send"]
    assert [c[0] for c in db.calls] == ["recv", "announce", "send"]
    assert da.calls[1] == db.calls[0] == ("recv", 1)  # each peer's announced epoch
    # a retry's ephemerals are gone once one attempt completed
    assert not a._attempts


def test_a_peer_that_never_answers_closes_after_bounded_attempts() -> None:
    a, _, _, _ = machines()
    sent = [start(a, 0.0)]
    t = 2.0
    for _ in range(MAX_ATTEMPTS - 1):
        t += REKEY_TIMEOUT
        m = a.tick(t)
        assert m is not None
        sent.append(m)
    with pytest.raises(RekeyError) as e:
        a.tick(t + REKEY_TIMEOUT)
    assert e.value.reason == "rekey_timeout"
    assert len({m["n"] for m in sent}) == MAX_ATTEMPTS == len(a._attempts)


def test_an_answerer_whose_rk3_never_comes_gives_up_too() -> None:
    a, b, _, _ = machines()
    b.on_message(start(a, 0.0))
    assert b.tick(100.0) is None  # starts rk3's clock
    with pytest.raises(RekeyError) as e:
        b.tick(100.0 + REKEY_TIMEOUT * MAX_ATTEMPTS)
    assert e.value.reason == "rekey_timeout"


@pytest.mark.parametrize("msg", [
    {"t": "rk2", "n": 1, "e": bytes(32), "s": 1},  # we started nothing
    {"t": "rk3", "n": 1},  # we answered nothing
])
def test_unsolicited_replies_break_the_protocol(msg: dict[str, Any]) -> None:
    a, _, _, _ = machines()
    with pytest.raises(RekeyError) as e:
        a.on_message(msg)
    assert e.value.reason == "protocol"


@pytest.mark.parametrize("msg", [
    {"t": "rk", "n": 1, "e": bytes(32), "s": 1},  # a low-order point: all-zero DH
    {"t": "rk", "n": 1, "e": b"short", "s": 1},
    {"t": "rk", "n": 1, "e": "not bytes" * 4, "s": 1},
    {"t": "rk", "n": -1, "e": bytes(32), "s": 1},
    {"t": "rk", "n": 1, "e": bytes(32), "s": True},
    {"t": "rk", "n": 1, "e": bytes(32)},
])
def test_malformed_rekey_messages_are_refused(msg: dict[str, Any]) -> None:
    _, b, _, db = machines()
    with pytest.raises(RekeyError) as e:
        b.on_message(msg)
    assert e.value.reason == "bad_rekey"
    assert b.state is State.IDLE and not db.calls


def test_channel_closes_on_a_rekey_protocol_break() -> None:
    a, b, _ = link()
    with pytest.raises(ControlError) as e:
        b.feed(a.ch.seal({"t": "rk3", "n": 5}))
    assert e.value.reason == "protocol"


def test_a_lying_start_epoch_is_refused() -> None:
    a, b, clock = link()
    clock.t += 2
    assert a.ch.tick(clock.t - 2) == b""
    rk = a.rk.tick(clock.t)
    assert rk is not None
    with pytest.raises(ControlError) as e:
        b.feed(a.ch.seal({**rk, "s": 0}))  # not after b's receive epoch
    assert e.value.reason == "bad_rekey"


# ------------------------------------------------------------------------ key schedule


def _hkdf3(ck: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    def mac(k: bytes, d: bytes) -> bytes:
        return hmac.digest(k, d, hashlib.blake2b)
    t = mac(ck, ikm)
    o1 = mac(t, b"\x01")
    o2 = mac(t, o1 + b"\x02")
    return o1, o2, mac(t, o2 + b"\x03")


def test_key_schedule_matches_the_documented_derivation_and_needs_both_inputs() -> None:
    ck, h = bytes(range(64)), bytes(range(64, 128))
    es, ea = Ephemeral(bytes([1] * 32)), Ephemeral(bytes([2] * 32))
    dh = es.dh(ea.public)
    assert dh == ea.dh(es.public)
    keys = KeySchedule(ck, h).next(dh, es.public, ea.public)
    tag = b"sleeve rekey" + (1).to_bytes(8, "big")
    ck1, t1, t2 = _hkdf3(ck, dh + tag)
    h1 = hashlib.blake2b(h + tag + es.public + ea.public).digest()
    assert (keys.control_i2r, keys.control_r2i) == (t1[:32], t2[:32])
    assert (keys.data_i2r, keys.data_r2i) == derive_data_keys(t1[:32], t2[:32], h1)
    # the same DH on another connection (another ck), or another DH: other keys
    other_ck = KeySchedule(bytes(63) + b"\x01", h).next(dh, es.public, ea.public)
    other_dh = KeySchedule(ck, h).next(Ephemeral().dh(ea.public), es.public, ea.public)
    assert len({keys.data_i2r, other_ck.data_i2r, other_dh.data_i2r}) == 3
    # the second exchange chains from ck_1
    sched = KeySchedule(ck, h)
    sched.next(dh, es.public, ea.public)
    k2 = sched.next(dh, es.public, ea.public)
    ck2 = _hkdf3(ck1, dh + b"sleeve rekey" + (2).to_bytes(8, "big"))
    assert k2.control_i2r == ck2[1][:32] and k2.generation == 2


def test_secrets_are_wiped_and_never_shown() -> None:
    a, b, clock = link()
    exchange(a, b, clock)
    for side in (a, b):
        sched = side.rk._schedule
        text = repr(sched) + repr(side.rk) + repr(side.rk.status()) + repr(side.data)
        assert sched._ck.hex() not in text
        assert not side.rk._attempts  # ephemerals of finished exchanges are gone
        side.ch.wipe()
        assert not any(sched._ck)
    eph = Ephemeral()
    assert "secret" not in repr(eph) and eph._secret.hex() not in repr(eph)
    eph.wipe()
    assert not any(eph._secret)
    with pytest.raises(Exception, match="wiped"):
        eph.dh(Ephemeral().public)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64), st.integers(0, 3),
                   st.binary(max_size=40),
                   st.text(max_size=4), st.just(Ephemeral(bytes([3] * 32)).public))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["rk", "rk2", "rk3"]),
       st.fixed_dictionaries({}, optional={"n": VALUES, "e": VALUES, "s": VALUES}),
       st.sampled_from(["idle", "started", "answered"]), st.booleans())
def test_property_any_rekey_message_only_ever_raises_rekey_error(
        t: str, fields: dict[str, Any], where: str, initiator: bool) -> None:
    """Whatever an (authenticated) peer puts in rk/rk2/rk3, in any state, on either side of
    the connection: a Step or a RekeyError with a known reason, nothing else."""
    ck, h = bytes(range(64)), bytes(range(64, 128))
    a, b = (Rekeyer(initiator=i, schedule=KeySchedule(ck, h), interval=1.0,
                    data=DataSession(1, 2, bytes(32), bytes(32), True))
            for i in (True, False))
    me, peer = (a, b) if initiator else (b, a)
    if where == "started":
        start(me, 0.0)
    elif where == "answered":
        me.on_message(start(peer, 0.0))
    try:
        step = me.on_message({**fields, "t": t})
    except RekeyError as e:
        assert e.reason in {"bad_rekey", "protocol"}, e.reason
    else:
        assert isinstance(step.reply, dict | None)
        assert me.state in set(State)


def test_evicting_the_oldest_pending_key_keeps_the_newer_one() -> None:
    """The lookahead list shares KeyChain objects with the pending (spliced) keys: the
    eviction must not wipe one that is still pending (found in review)."""
    r = DataSession(1, 2, bytes(32), bytes(32), True)
    k2, k3, k5 = b"\x02" * 32, b"\x03" * 32, b"\x05" * 32
    r.install_recv(k2, 2)
    r.install_recv(k3, 3)
    r._lookahead(3)  # a trial decryption of epoch 3 derived the keys up to it
    r.install_recv(k5, 5)  # the peer moved on again: the oldest pending key (2) goes
    assert set(r._splices) == {3, 5}
    assert bytes(r._splices[3]._chain) == k3  # not zeroed
