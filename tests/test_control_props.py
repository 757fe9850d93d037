"""Property tests for the control channel (``sleeve.proto.control.ControlChannel``).

Two real channels talk to each other through byte streams that hypothesis cuts at
arbitrary points, as TCP may:

- the handshake completes under any chunking, both sides agree on keys and identities,
  and sealed messages round-trip in both directions;
- garbage, truncation and bit flips fed to either side at any stage raise only
  ``ControlError`` (with a known reason), and a tampered message is never acted upon;
- a frame length prefix outside 1..MAX_FRAME (1..MAX_HANDSHAKE_FRAME before the channel
  is open) is rejected from its 5-byte header alone, and buffered memory only ever grows
  with bytes actually received;
- a Hello with a field of the wrong type or range is rejected in msg 3 and sealed alike,
  and so is one whose signing key does not certify the static key of the handshake;
- the hardening of issue 8: ERROR text is sanitized, ``seal`` refuses what the peer
  would refuse, a preamble mode other than 0/1 is refused.

Codec-level properties (unpack_message, Hello.from_wire on maps) are in test_codec_props;
Noise itself is in test_crypto. A fixed PSK stands in for the Argon2id-derived one:
derivation is slow and irrelevant to framing.
"""

from __future__ import annotations

import copy
import functools
import itertools
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleeve.crypto.keys import Signer
from sleeve.crypto.noise import KeyPair
from sleeve.proto import control as ctl
from sleeve.proto.control import (
    ControlChannel,
    ControlError,
    Established,
    Hello,
    MessageTooLarge,
    State,
)

PSK = bytes(range(32))
STATIC_I, STATIC_R = KeyPair.generate(), KeyPair.generate()
HELLO_I = Hello("dialler", 11, 101, 6783, "192.0.2.2:40000")
HELLO_R = Hello("listener", 22, 202, 6784)
REASONS = frozenset({
    "frame_size", "bad_magic", "version", "bad_mode", "encryption_mismatch", "rejected",
    "protocol", "decrypt", "handshake", "auth_failed", "bad_message", "bad_hello",
    "bad_identity",
})
# Handshakes cost a few ms each; on a loaded 2-core CI box hypothesis may call that slow.
PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

Fed = tuple[bytes, list[dict[str, Any]], Established | None]


def pair(encrypted: bool = True, hello_i: Hello = HELLO_I, hello_r: Hello = HELLO_R
         ) -> tuple[ControlChannel, ControlChannel]:
    psk = PSK if encrypted else None
    return (ControlChannel(initiator=True, static=STATIC_I, psk=psk, hello=hello_i),
            ControlChannel(initiator=False, static=STATIC_R, psk=psk, hello=hello_r))


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points`` (taken modulo len+1, so any list of ints is valid)."""
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


def feed(ch: ControlChannel, data: bytes, points: list[int]) -> Fed:
    out = bytearray()
    msgs: list[dict[str, Any]] = []
    est: Established | None = None
    for piece in cut(data, points):
        o, m, e = ch.feed(piece)
        out += o
        msgs += m
        if e is not None:
            assert est is None, "established twice"
            est = e
    return bytes(out), msgs, est


CUTS = st.lists(st.integers(0, 1 << 16), max_size=8)


def handshake(ini: ControlChannel, resp: ControlChannel, cuts: list[list[int]]
              ) -> tuple[Established, Established]:
    """Run the 4 flights (preamble+msg1, msg2, msg3+hello, sealed hello), each cut."""
    m0 = ini.start()
    m1, msgs, est = feed(resp, m0, cuts[0])
    assert not msgs and est is None and state(resp) is State.WAIT_MSG3
    m2, msgs, est = feed(ini, m1, cuts[1])
    assert not msgs and est is None and state(ini) is State.WAIT_HELLO
    m3, msgs, est_r = feed(resp, m2, cuts[2])
    assert not msgs and est_r is not None and state(resp) is State.OPEN
    m4, msgs, est_i = feed(ini, m3, cuts[3])
    assert not msgs and not m4 and est_i is not None and state(ini) is State.OPEN
    return est_i, est_r


def state(ch: ControlChannel) -> State:
    return ch.state  # a call, so mypy does not keep a narrowed state across feed()


# ---------------------------------------------------------------------------- handshake

@settings(PROPS, max_examples=60)
@given(encrypted=st.booleans(), cuts=st.lists(CUTS, min_size=4, max_size=4))
def test_handshake_completes_under_any_chunking(encrypted: bool, cuts: list[list[int]]
                                                ) -> None:
    ini, resp = pair(encrypted)
    est_i, est_r = handshake(ini, resp, cuts)
    assert est_i.remote_static == STATIC_R.public and est_r.remote_static == STATIC_I.public
    sign_i, sign_r = Signer.from_static(STATIC_I), Signer.from_static(STATIC_R)
    assert est_i.remote_key == sign_r.public and est_r.remote_key == sign_i.public
    assert est_i.remote_id == sign_r.peer_id
    assert est_r.remote_id == sign_i.peer_id
    assert est_i.hello == HELLO_R and est_r.hello == HELLO_I
    assert est_i.handshake_hash == est_r.handshake_hash
    # data-plane keys: one per direction, crosswise equal
    assert est_i.data_send == est_r.data_recv and est_i.data_recv == est_r.data_send
    assert est_i.data_send != est_i.data_recv
    assert ini.established is est_i and resp.established is est_r


# Values that survive a msgpack round trip unchanged (lists, not tuples; no NaN).
LEAF = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=60))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=20)
MESSAGE = st.builds(lambda t, rest: {**rest, "t": t}, st.text(min_size=1, max_size=12),
                    st.dictionaries(st.text(max_size=10), VALUE, max_size=6))


@functools.cache
def open_pair_template(encrypted: bool) -> tuple[ControlChannel, ControlChannel]:
    ini, resp = pair(encrypted)
    handshake(ini, resp, [[], [], [], []])
    return ini, resp


def open_pair(encrypted: bool = True) -> tuple[ControlChannel, ControlChannel]:
    return copy.deepcopy(open_pair_template(encrypted))


@settings(PROPS, max_examples=60)
@given(encrypted=st.booleans(), to_dialler=st.booleans(),
       msgs=st.lists(MESSAGE, min_size=1, max_size=6), cuts=CUTS)
def test_sealed_messages_round_trip_under_any_chunking(
        encrypted: bool, to_dialler: bool, msgs: list[dict[str, Any]], cuts: list[int]) -> None:
    ini, resp = open_pair(encrypted)
    sender, receiver = (resp, ini) if to_dialler else (ini, resp)
    stream = b"".join(sender.seal(m) for m in msgs)
    out, got, est = feed(receiver, stream, cuts)
    assert got == msgs and out == b"" and est is None
    # and the channel keeps working afterwards (nonces stayed in step)
    assert feed(receiver, sender.seal({"t": "after"}), [])[1] == [{"t": "after"}]


def test_seal_before_open_is_a_local_error() -> None:
    ini, _ = pair()
    with pytest.raises(RuntimeError):
        ini.seal({"t": "x"})


# ---------------------------------------------------------------------------- bad input

# Every stage either side can be in while receiving, in transcript order.
STAGES = ("r_fresh", "r_wait_msg1", "r_wait_msg3", "r_open",
          "i_started", "i_wait_hello", "i_open")


@functools.cache
def transcript(encrypted: bool) -> tuple[dict[str, ControlChannel], tuple[bytes, ...]]:
    """Snapshots of both sides at every stage, and the honest bytes each one expects next."""
    ini, resp = pair(encrypted)
    snaps = {"r_fresh": copy.deepcopy(resp)}
    m0 = ini.start()
    snaps["i_started"] = copy.deepcopy(ini)
    resp.feed(m0[: ctl.PREAMBLE_LEN])
    snaps["r_wait_msg1"] = copy.deepcopy(resp)
    m1 = resp.feed(m0[ctl.PREAMBLE_LEN :])[0]
    snaps["r_wait_msg3"] = copy.deepcopy(resp)
    m2 = ini.feed(m1)[0]
    snaps["i_wait_hello"] = copy.deepcopy(ini)
    m3 = resp.feed(m2)[0]
    snaps["r_open"] = copy.deepcopy(resp)
    ini.feed(m3)
    snaps["i_open"] = copy.deepcopy(ini)
    m4, m5 = ini.seal({"t": "ping"}), resp.seal({"t": "pong"})
    expected = {"r_fresh": m0, "r_wait_msg1": m0[ctl.PREAMBLE_LEN :], "r_wait_msg3": m2,
                "r_open": m4, "i_started": m1, "i_wait_hello": m3, "i_open": m5}
    return snaps, tuple(expected[s] for s in STAGES)


def at(stage: str, encrypted: bool = True) -> ControlChannel:
    return copy.deepcopy(transcript(encrypted)[0][stage])


def honest(stage: str, encrypted: bool = True) -> bytes:
    return transcript(encrypted)[1][STAGES.index(stage)]


def feed_expecting_nothing(ch: ControlChannel, data: bytes, cuts: list[int]) -> str | None:
    """Feed bad input: the channel raises ControlError or waits, but never acts on it."""
    try:
        out, msgs, est = feed(ch, data, cuts)
    except ControlError as e:
        assert e.reason in REASONS, e.reason
        return e.reason
    assert out == b"" and msgs == [] and est is None
    return None


# Garbage of three shapes: raw bytes, well-framed frames of any type (reach _on_frame),
# and both behind a valid preamble (so a fresh responder gets past it).
FRAMED = st.builds(ctl.frame, st.integers(0, 255), st.binary(max_size=200))
GARBAGE = st.lists(st.binary(max_size=120) | FRAMED, min_size=1, max_size=4).map(b"".join)


@settings(PROPS, max_examples=150)
@given(stage=st.sampled_from(STAGES), encrypted=st.booleans(), garbage=GARBAGE,
       with_preamble=st.booleans(), cuts=CUTS)
def test_garbage_at_any_stage_raises_only_control_error(
        stage: str, encrypted: bool, garbage: bytes, with_preamble: bool, cuts: list[int]
) -> None:
    if with_preamble and stage == "r_fresh":
        garbage = ctl.preamble(encrypted) + garbage
    feed_expecting_nothing(at(stage, encrypted), garbage, cuts)


@settings(PROPS, max_examples=150)
@given(stage=st.sampled_from(STAGES), encrypted=st.booleans(), data=st.data(), cuts=CUTS)
def test_bit_flips_in_any_message_are_never_acted_upon(
        stage: str, encrypted: bool, data: st.DataObject, cuts: list[int]) -> None:
    msg = bytearray(honest(stage, encrypted))
    bits = data.draw(st.lists(st.integers(0, 8 * len(msg) - 1), min_size=1, max_size=4,
                              unique=True), label="bits")
    for bit in bits:
        msg[bit // 8] ^= 0x80 >> (bit % 8)
    reason = feed_expecting_nothing(at(stage, encrypted), bytes(msg), cuts)
    # Only a flip that made a length prefix claim more bytes may leave the channel waiting.
    if reason is None:
        assert any(b // 8 < 4 or (stage == "r_fresh" and 8 <= b // 8 < 12) for b in bits)


@settings(PROPS, max_examples=100)
@given(stage=st.sampled_from(STAGES), encrypted=st.booleans(), data=st.data(), cuts=CUTS)
def test_truncated_messages_wait_and_the_rest_completes_them(
        stage: str, encrypted: bool, data: st.DataObject, cuts: list[int]) -> None:
    msg = honest(stage, encrypted)
    n = data.draw(st.integers(0, len(msg) - 1), label="kept")
    ch = at(stage, encrypted)
    assert feed(ch, msg[:n], cuts) == (b"", [], None)  # nothing acted upon, no error
    out, msgs, est = feed(ch, msg[n:], [])
    assert out or msgs or est is not None  # the completed message takes effect


@settings(PROPS, max_examples=80)
@given(stage=st.sampled_from(STAGES), data=st.data())
def test_extra_bytes_after_an_honest_message_only_raise_control_error(
        stage: str, data: st.DataObject) -> None:
    ch = at(stage)
    out, msgs, est = feed(ch, honest(stage), [])
    assert out or msgs or est is not None
    feed_expecting_nothing(ch, data.draw(GARBAGE, label="extra"), [])


# ---------------------------------------------------------------------------- frame bounds

def stream_prefix(stage: str) -> bytes:
    """What must precede a frame at this stage (a fresh responder needs the preamble)."""
    return ctl.preamble(True) if stage == "r_fresh" else b""


def frame_limit(stage: str) -> int:
    return ctl.MAX_FRAME if stage.endswith("open") else ctl.MAX_HANDSHAKE_FRAME


@settings(PROPS, max_examples=100)
@given(stage=st.sampled_from(STAGES),
       length=st.just(0) | st.integers(ctl.MAX_HANDSHAKE_FRAME + 1, (1 << 32) - 1),
       typ=st.integers(0, 255), tail=st.binary(max_size=64))
def test_out_of_bounds_length_prefix_rejected_from_the_header(
        stage: str, length: int, typ: int, tail: bytes) -> None:
    if stage.endswith("open") and 0 < length <= ctl.MAX_FRAME:
        length = ctl.MAX_FRAME + 1 + length % 1000  # in bounds once open: move it out
    ch = at(stage)
    header = ctl.FRAME_HDR.pack(length, typ)
    ch.feed(stream_prefix(stage) + header[:-1])  # 4 bytes: not yet decidable
    tracemalloc.start()
    try:
        with pytest.raises(ControlError) as ei:
            ch.feed(header[-1:] + tail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.reason == "frame_size"
    assert peak < 64 * 1024, f"rejecting a {length}-byte claim allocated {peak} bytes"


@pytest.mark.parametrize("stage", STAGES)
def test_buffer_grows_only_with_received_bytes(stage: str) -> None:
    """A frame claiming the maximum size costs only what has actually arrived."""
    ch = at(stage)
    ch.feed(stream_prefix(stage) + ctl.FRAME_HDR.pack(frame_limit(stage), ctl.T_SEALED))
    tracemalloc.start()
    try:
        for _ in range(16):
            assert ch.feed(bytes(1024)) == (b"", [], None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 128 * 1024, peak


@pytest.mark.parametrize("stage", ["r_wait_msg1", "r_open", "i_started", "i_open"])
def test_a_maximal_frame_is_accepted_by_framing_then_judged(stage: str) -> None:
    ch = at(stage)
    body = bytes(frame_limit(stage) - 1)
    with pytest.raises(ControlError) as ei:
        ch.feed(ctl.frame(ctl.T_HANDSHAKE if stage.endswith(("msg1", "started"))
                          else ctl.T_SEALED, body))
    # past framing: the Noise or AEAD layer refused it, not the length check
    assert ei.value.reason in ("handshake", "decrypt")


# ---------------------------------------------------------------------------- Hello

def valid_str(x: object) -> bool:
    return isinstance(x, str) and len(x) <= 64


def valid_int(x: object, hi: int) -> bool:
    return type(x) is int and 0 < x < hi


# Each field: a valid value or something of the wrong type or range (all msgpack-encodable).
WRONG = (st.none() | st.booleans() | st.floats(allow_nan=False) | st.binary(max_size=8)
         | st.lists(st.integers(0, 3), max_size=2) | st.integers(-(1 << 63), 0))
NICK = st.text(max_size=64) | st.text(min_size=65, max_size=80) | WRONG | st.integers(1, 9)
UID = st.integers(1, (1 << 64) - 1) | WRONG | st.text(max_size=3)
IDX = st.integers(1, (1 << 32) - 1) | st.integers(1 << 32, (1 << 64) - 1) | WRONG
UDP = st.integers(1, 65535) | st.integers(65536, 1 << 20) | WRONG
SEEN = st.text(max_size=64) | st.text(min_size=65, max_size=70) | WRONG
HELLOS = st.builds(Hello, NICK, UID, IDX, UDP, SEEN)


def hello_is_valid(h: Hello) -> bool:
    return (valid_str(h.nickname) and valid_int(h.uid, 1 << 64) and valid_int(h.index, 1 << 32)
            and valid_int(h.udp_port, 65536) and valid_str(h.seen))


@settings(PROPS, max_examples=100)
@given(hello=HELLOS, from_dialler=st.booleans())
def test_hello_with_wrong_types_is_rejected_in_msg3_and_sealed(hello: Hello,
                                                               from_dialler: bool) -> None:
    ini, resp = pair(hello_i=hello) if from_dialler else pair(hello_r=hello)
    try:
        est_i, est_r = handshake(ini, resp, [[], [], [], []])
    except ControlError as e:
        assert e.reason == "bad_hello", e.reason
        assert not hello_is_valid(hello)
        # the side that received the bad hello is the one that stopped
        stuck = resp if from_dialler else ini
        assert stuck.state is not State.OPEN and stuck.established is None
        return
    assert hello_is_valid(hello)
    assert (est_r.hello if from_dialler else est_i.hello) == hello


# ---------------------------------------------------------------------------- identity

def test_hello_identity_fields_are_required_and_exact() -> None:
    sig = Signer.from_static(STATIC_I)
    good = ctl.hello_message(HELLO_I, sig, STATIC_I.public)
    assert ctl.read_hello(good, STATIC_I.public) == (HELLO_I, sig.public)
    for field, value in (("key", None), ("key", sig.public[:-1]), ("key", "k" * 32),
                         ("cert", None), ("cert", good["cert"] + b"x"), ("cert", 7)):
        m = dict(good)
        if value is None:
            del m[field]
        else:
            m[field] = value
        with pytest.raises(ControlError) as ei:
            ctl.read_hello(m, STATIC_I.public)
        assert ei.value.reason == "bad_hello"
    with pytest.raises(ControlError) as ei:  # a valid certificate, for another static key
        ctl.read_hello(good, STATIC_R.public)
    assert ei.value.reason == "bad_identity"


class StolenIdentity(Signer):
    """Mallory presents the victim's signing key and the certificate she saw it send.

    (The object holds the victim's key only because a Signer must hold one; it never
    signs with it: the certificate is replayed.)
    """

    def __init__(self, victim: KeyPair) -> None:
        real = Signer.from_static(victim)
        super().__init__(b"\x00" * 32)
        self.public, self.peer_id = real.public, real.peer_id
        self._stolen = real.certify(victim.public)

    def certify(self, static_public: bytes) -> bytes:
        return self._stolen


@pytest.mark.parametrize("liar", ["dialler", "listener"])
def test_a_peer_cannot_claim_another_peers_identity(liar: str) -> None:
    mallory, victim = KeyPair.generate(), KeyPair.generate()
    thief = StolenIdentity(victim)
    if liar == "dialler":
        ini = ControlChannel(initiator=True, static=mallory, psk=PSK, hello=HELLO_I,
                             signer=thief)
        resp = ControlChannel(initiator=False, static=STATIC_R, psk=PSK, hello=HELLO_R)
    else:
        ini = ControlChannel(initiator=True, static=STATIC_I, psk=PSK, hello=HELLO_I)
        resp = ControlChannel(initiator=False, static=mallory, psk=PSK, hello=HELLO_R,
                              signer=thief)
    m1, _, _ = resp.feed(ini.start())
    m2, _, _ = ini.feed(m1)
    if liar == "dialler":
        with pytest.raises(ControlError) as ei:
            resp.feed(m2)
        assert resp.established is None and resp.state is not State.OPEN
    else:
        m3, _, est_r = resp.feed(m2)
        assert est_r is not None
        with pytest.raises(ControlError) as ei:
            ini.feed(m3)
        assert ini.established is None and ini.state is not State.OPEN
    assert ei.value.reason == "bad_identity"


def test_an_explicit_signer_is_the_identity_the_peer_sees() -> None:
    other = Signer(bytes(range(32)))  # any key may certify our static key: it is then us
    ini = ControlChannel(initiator=True, static=STATIC_I, psk=PSK, hello=HELLO_I,
                         signer=other)
    resp = ControlChannel(initiator=False, static=STATIC_R, psk=PSK, hello=HELLO_R)
    _, est_r = handshake(ini, resp, [[], [], [], []])
    assert est_r.remote_key == other.public and est_r.remote_id == other.peer_id


# ---------------------------------------------------------------------------- hardening

def test_error_frame_text_is_sanitized_and_bounded() -> None:
    ch = at("i_started")
    evil = b"wrong password\n2026-01-01 INFO all good\x1b[2J\r\x00\xc3\xa9" + b"A" * 1000
    with pytest.raises(ControlError) as ei:
        ch.feed(ctl.frame(ctl.T_ERROR, evil))
    detail = ei.value.detail
    assert ei.value.reason == "rejected"
    assert all(0x20 <= ord(c) < 0x7F for c in detail), detail
    assert "wrong password?2026-01-01 INFO all good?[2J???" in detail
    assert detail.count("A") <= ctl.MAX_ERROR_TEXT and len(detail) < 300
    # what we send is sanitized the same way
    body = ctl.error_frame("bad\npassword\x1b" + "x" * 500)[ctl.FRAME_HDR.size :]
    assert body == b"bad?password?" + b"x" * (ctl.MAX_ERROR_TEXT - 13)


def test_printable() -> None:
    assert ctl.printable(bytes(range(256)), 1000) == (
        "?" * 32 + "".join(map(chr, range(32, 127))) + "?" * 129)
    assert ctl.printable(b"abc", 2) == "ab"


@pytest.mark.parametrize("stage", ["r_wait_msg1", "r_wait_msg3", "i_started", "i_wait_hello"])
def test_pre_authentication_frames_are_bounded_by_the_largest_noise_message(stage: str) -> None:
    assert ctl.MAX_HANDSHAKE_FRAME == 1 + 65535
    ch = at(stage)
    with pytest.raises(ControlError) as ei:
        ch.feed(ctl.FRAME_HDR.pack(ctl.MAX_HANDSHAKE_FRAME + 1, ctl.T_HANDSHAKE))
    assert ei.value.reason == "frame_size"
    # the same header is fine once open (gossip may need up to MAX_FRAME)
    ch = at("r_open" if stage.startswith("r") else "i_open")
    assert ch.feed(ctl.FRAME_HDR.pack(ctl.MAX_HANDSHAKE_FRAME + 1, ctl.T_SEALED)) == (
        b"", [], None)


def test_seal_refuses_a_frame_the_peer_would_refuse_and_stays_usable() -> None:
    ini, resp = open_pair()
    # the largest message that fits: frame length = type + plaintext + tag = MAX_FRAME
    overhead = len(ctl.pack_message({"t": "x", "b": bytes(1 << 17)})) - (1 << 17)
    fits = {"t": "x", "b": bytes(ctl.MAX_FRAME - 1 - 16 - overhead)}
    wire = ini.seal(fits)
    assert len(wire) == ctl.FRAME_HDR.size - 1 + ctl.MAX_FRAME
    assert feed(resp, wire, [])[1] == [fits]
    too_big = {"t": "x", "b": bytes(ctl.MAX_FRAME - 1 - 16 - overhead + 1)}
    with pytest.raises(MessageTooLarge) as ei:
        ini.seal(too_big)
    assert isinstance(ei.value, ValueError) and "'x'" in str(ei.value)
    # nothing was consumed: the next message still opens (nonces in step)
    assert feed(resp, ini.seal({"t": "after"}), [])[1] == [{"t": "after"}]


@pytest.mark.parametrize("mode", [2, 3, 0x80, 0xFF])
def test_preamble_mode_other_than_0_or_1_is_refused(mode: int) -> None:
    for encrypted in (True, False):
        ch = at("r_fresh", encrypted)
        with pytest.raises(ControlError) as ei:
            ch.feed(ctl.MAGIC + bytes((ctl.VERSION, mode)))
        assert ei.value.reason == "bad_mode" and str(mode) in ei.value.detail


def test_preamble_of_the_previous_version_is_refused_by_version() -> None:
    ch = at("r_fresh")
    with pytest.raises(ControlError) as ei:
        ch.feed(ctl.MAGIC + bytes((ctl.VERSION - 1, 1)))
    # 4: topology by digest; 5: control heartbeats only while needed
    assert ei.value.reason == "version" and ctl.VERSION == 5
    assert ei.value.detail == "peer speaks control protocol version 4, we speak 5"
