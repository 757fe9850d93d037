"""Property tests for the wire codecs and the data-plane session.

- datagram records round-trip (with and without peer ids, every hop count);
- ``batcher.pack`` preserves bytes and order, respects ``max_body``, reports oversize;
- malformed input only ever raises the codec's own error type;
- a sealed datagram opens on the other side, any single bit flip is a drop reason
  (never an exception, never a body) and an accepted datagram replays as "replay".
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sleeve.crypto.aead import COUNTER_LIMIT
from sleeve.forward.batcher import pack
from sleeve.proto import datagram as dg
from sleeve.proto.control import ControlError, Hello, pack_message, unpack_message
from sleeve.proto.session import DataSession

PEER = st.binary(min_size=dg.PEER_ID_LEN, max_size=dg.PEER_ID_LEN)
KIND = st.integers(0, 255)
HOPS = st.integers(0, dg.MAX_HOPS)
PAYLOAD = st.binary(max_size=300)

RecordSpec = tuple[int, bytes, bytes | None, bytes | None, int]
RECORD = st.tuples(KIND, PAYLOAD, st.none() | PEER, st.none() | PEER, HOPS)


def as_tuple(r: dg.Record) -> RecordSpec:
    return (r.kind, bytes(r.payload), r.src, r.dst, r.hops)


# ------------------------------------------------------------------------- records

@settings(max_examples=200, deadline=None)
@given(specs=st.lists(RECORD, max_size=12))
def test_records_round_trip(specs: list[RecordSpec]) -> None:
    body = b"".join(dg.encode_record(k, p, s, d, h) for k, p, s, d, h in specs)
    assert [as_tuple(r) for r in dg.iter_records(body)] == specs
    # the same through a memoryview (what the node hands over)
    assert [as_tuple(r) for r in dg.iter_records(memoryview(body))] == specs


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.binary(max_size=1600), max_size=10))
def test_frame_record_round_trip(frames: list[bytes]) -> None:
    body = b"".join(dg.frame_record(f) for f in frames)
    assert len(body) == sum(len(f) + dg.REC_LEN for f in frames)
    got = list(dg.iter_records(body))
    assert [(r.kind, r.src, r.dst, r.hops, bytes(r.payload)) for r in got] == [
        (dg.KIND_FRAME, None, None, 0, f) for f in frames
    ]
    # frame_record is the fast path of encode_record for a direct frame
    assert all(dg.frame_record(f) == dg.encode_record(dg.KIND_FRAME, f) for f in frames)


def test_record_length_limits() -> None:
    big = bytes(65535)
    (r,) = dg.iter_records(dg.frame_record(big))
    assert len(r.payload) == 65535
    assert list(dg.iter_records(b"")) == []


# Records with their source's proof: relayed unicast (src + dst, 24 bytes) and
# broadcast (src, 72 bytes), mixed with ordinary ones.
AUTHED = st.one_of(
    st.tuples(KIND, PAYLOAD, PEER, PEER, HOPS, st.just(False),
              st.binary(min_size=dg.AUTH_MAC_LEN, max_size=dg.AUTH_MAC_LEN)),
    st.tuples(KIND, PAYLOAD, PEER, st.none() | PEER, HOPS, st.just(True),
              st.binary(min_size=dg.AUTH_SIG_LEN, max_size=dg.AUTH_SIG_LEN)),
    st.tuples(KIND, PAYLOAD, st.none() | PEER, st.none() | PEER, HOPS, st.booleans(),
              st.none()),
)


@settings(max_examples=200, deadline=None)
@given(specs=st.lists(AUTHED, max_size=8))
def test_records_with_auth_round_trip(specs: list[Any]) -> None:
    body = b"".join(dg.encode_record(k, p, s, d, h, b, a) for k, p, s, d, h, b, a in specs)
    got = [(r.kind, bytes(r.payload), r.src, r.dst, r.hops, r.bcast, r.auth)
           for r in dg.iter_records(memoryview(body))]
    assert got == specs
    # head_len agrees with the parser on where each payload starts
    off = 0
    for (_k, p, _s, _d, _h, _b, _a) in specs:
        head = dg.head_len(body[off + 3])
        assert body[off + head:off + head + len(p)] == p
        off += head + len(p)


def test_auth_needs_a_source_and_the_right_length() -> None:
    peer = b"p" * 8
    with pytest.raises(ValueError):
        dg.encode_record(dg.KIND_FRAME, b"x", dst=peer, auth=bytes(dg.AUTH_MAC_LEN))
    with pytest.raises(ValueError):
        dg.encode_record(dg.KIND_FRAME, b"x", src=peer, dst=peer, auth=bytes(dg.AUTH_SIG_LEN))
    with pytest.raises(ValueError):
        dg.encode_record(dg.KIND_FRAME, b"x", src=peer, auth=bytes(dg.AUTH_MAC_LEN))
    # on the wire: A without S, or A on a record that is neither relayed nor broadcast
    for flags in (dg.FLAG_AUTH | dg.FLAG_DST, dg.FLAG_AUTH | dg.FLAG_SRC):
        body = dg.REC.pack(1, dg.KIND_FRAME, flags) + bytes(100)
        with pytest.raises(dg.DecodeError) as ei:
            list(dg.iter_records(body))
        assert ei.value.reason == "bad_auth_flags"
        assert dg.head_len(flags) == -1
    # a truncated proof is a truncated record
    rec = dg.encode_record(dg.KIND_FRAME, b"", src=peer, dst=peer, auth=bytes(24))
    with pytest.raises(dg.DecodeError) as ei:
        list(dg.iter_records(rec[:-1]))
    assert ei.value.reason == "truncated_record"


def record_bounds(specs: list[RecordSpec]) -> tuple[bytes, set[int]]:
    body = b""
    bounds = {0}
    for k, p, s, d, h in specs:
        body += dg.encode_record(k, p, s, d, h)
        bounds.add(len(body))
    return body, bounds


@settings(max_examples=100, deadline=None)
@given(specs=st.lists(RECORD, min_size=1, max_size=6), data=st.data())
def test_truncation_is_decode_error_or_a_prefix(specs: list[RecordSpec], data: st.DataObject
                                                ) -> None:
    body, bounds = record_bounds(specs)
    cut = data.draw(st.integers(0, len(body) - 1), label="cut")
    if cut in bounds:
        got = [as_tuple(r) for r in dg.iter_records(body[:cut])]
        assert got == specs[: len(got)]
        assert len(got) == sorted(bounds).index(cut)
    else:
        with pytest.raises(dg.DecodeError) as ei:
            list(dg.iter_records(body[:cut]))
        assert ei.value.reason == "truncated_record"


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200))
def test_iter_records_random_bytes(body: bytes) -> None:
    try:
        recs = list(dg.iter_records(body))
    except dg.DecodeError as e:
        assert e.reason in ("truncated_record", "bad_auth_flags")
        return
    # a successful parse accounts for every byte
    used = sum(
        dg.REC_LEN + len(r.payload) + (r.src is not None) * 8 + (r.dst is not None) * 8
        + len(r.auth or b"") for r in recs
    )
    assert used == len(body)
    assert all(0 <= r.hops <= dg.MAX_HOPS for r in recs)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_decode_header_random_bytes(data: bytes) -> None:
    try:
        receiver, counter = dg.decode_header(data)
    except dg.DecodeError as e:
        assert e.reason in ("short", "bad_type", "bad_version")
        return
    assert len(data) >= dg.HEADER_LEN + dg.TAG_LEN
    assert data[0] == dg.TYPE_DATA and data[1] == dg.VERSION
    assert 0 <= receiver < 2**32 and 0 <= counter < 2**64


@settings(max_examples=100, deadline=None)
@given(receiver=st.integers(0, 2**32 - 1), counter=st.integers(0, 2**64 - 1),
       rest=st.binary(min_size=dg.TAG_LEN, max_size=40))
def test_header_round_trip(receiver: int, counter: int, rest: bytes) -> None:
    h = dg.encode_header(receiver, counter)
    assert len(h) == dg.HEADER_LEN
    assert dg.decode_header(h + rest) == (receiver, counter)
    with pytest.raises(dg.DecodeError, match="short"):
        dg.decode_header((h + rest)[: dg.HEADER_LEN + dg.TAG_LEN - 1])


# ------------------------------------------------------------------------- batcher

@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.binary(max_size=400), max_size=40), max_body=st.integers(1, 1500))
def test_pack_preserves_bytes_and_order(records: list[bytes], max_body: int) -> None:
    bodies, oversize = pack(records, max_body)
    kept = [r for r in records if len(r) <= max_body]
    assert b"".join(bodies) == b"".join(kept)
    assert oversize == [r for r in records if len(r) > max_body]
    assert all(len(b) <= max_body for b in bodies)
    assert (len(bodies) == 0) == (len(kept) == 0)


@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.binary(min_size=1, max_size=400), min_size=5, max_size=40),
       max_body=st.integers(1, 1500))
def test_pack_never_splits_a_record_and_fills_greedily(records: list[bytes], max_body: int
                                                       ) -> None:
    bodies, _ = pack(records, max_body)
    kept = iter(r for r in records if len(r) <= max_body)
    groups: list[list[bytes]] = []
    for body in bodies:
        group: list[bytes] = []
        while sum(map(len, group)) < len(body):
            group.append(next(kept))
        assert b"".join(group) == body  # records are whole inside one body
        groups.append(group)
    assert next(kept, None) is None
    for prev, nxt in itertools.pairwise(groups):
        # a new body is started only when the next record did not fit
        assert sum(map(len, prev)) + len(nxt[0]) > max_body


@settings(max_examples=50, deadline=None)
@given(frames=st.lists(st.binary(min_size=14, max_size=1500), max_size=64))
def test_pack_then_parse_gives_frames_in_order(frames: list[bytes]) -> None:
    max_body = 1500 - dg.UDP4_OVERHEAD - dg.HEADER_LEN - dg.TAG_LEN
    bodies, oversize = pack([dg.frame_record(f) for f in frames], max_body)
    fits = [f for f in frames if len(f) + dg.REC_LEN <= max_body]
    got = [bytes(r.payload) for b in bodies for r in dg.iter_records(b)]
    assert got == fits
    assert len(oversize) == len(frames) - len(fits)


# ------------------------------------------------------------------------- control plane

@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100))
def test_unpack_message_random_bytes(data: bytes) -> None:
    try:
        m = unpack_message(data)
    except ControlError as e:
        assert e.reason == "bad_message"
        return
    assert isinstance(m, dict) and isinstance(m["t"], str)


SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10,
)
HELLO_KEYS = st.sampled_from(["t", "nick", "uid", "idx", "udp", "seen"]) | st.text(max_size=6)
MAP = st.dictionaries(HELLO_KEYS, VALUE | st.integers(0, 2**64 + 5), max_size=8)


@settings(max_examples=200, deadline=None)
@given(m=MAP)
def test_hello_from_wire_random_maps(m: dict[str, Any]) -> None:
    try:
        h = Hello.from_wire(m)
    except ControlError as e:
        assert e.reason == "bad_hello"
        return
    assert 0 < h.index < 2**32 and 0 < h.udp_port < 65536 and 0 < h.uid < 2**64


@settings(max_examples=200, deadline=None)
@given(m=MAP)
def test_unpack_message_random_maps(m: dict[str, Any]) -> None:
    try:
        wire = pack_message(m)
    except (OverflowError, ValueError, TypeError):
        assume(False)  # msgpack cannot encode it: not a valid input to the decoder test
        return
    try:
        got = unpack_message(wire)
    except ControlError as e:
        assert e.reason == "bad_message"
        assert not isinstance(m.get("t"), str)
        return
    assert isinstance(got["t"], str)
    try:
        Hello.from_wire(got)
    except ControlError as e:
        assert e.reason == "bad_hello"


@settings(max_examples=100, deadline=None)
@given(nick=st.text(max_size=64), uid=st.integers(1, 2**64 - 1), idx=st.integers(1, 2**32 - 1),
       udp=st.integers(1, 65535), seen=st.text(max_size=64))
def test_hello_round_trip(nick: str, uid: int, idx: int, udp: int, seen: str) -> None:
    h = Hello(nick, uid, idx, udp, seen)
    assert Hello.from_wire(unpack_message(pack_message(h.to_wire()))) == h


# ------------------------------------------------------------------------- data session

K1, K2 = bytes(range(32)), bytes(range(32, 64))


def session_pair(encrypt: bool) -> tuple[DataSession, DataSession]:
    a = DataSession(local_index=7, remote_index=9, send_key=K1, recv_key=K2, encrypt=encrypt)
    b = DataSession(local_index=9, remote_index=7, send_key=K2, recv_key=K1, encrypt=encrypt)
    return a, b


def receive(s: DataSession, dgram: bytes) -> bytes | str:
    """What the node does with a datagram: parse the header, then open."""
    try:
        index, counter = dg.decode_header(dgram)
    except dg.DecodeError as e:
        return e.reason
    if index != s.local_index:
        return "unknown_session"
    return s.open(counter, dgram)


@pytest.mark.parametrize("encrypt", [True, False])
@settings(max_examples=60, deadline=None)
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_session_round_trip_and_replay(encrypt: bool, bodies: list[bytes]) -> None:
    a, b = session_pair(encrypt)
    for i, body in enumerate(bodies):
        d1 = a.seal(body)
        assert len(d1) == dg.HEADER_LEN + len(body) + dg.TAG_LEN
        assert dg.decode_header(d1) == (9, i)
        if not encrypt:
            assert body in d1
        assert receive(b, d1) == body
        assert receive(b, d1) == "replay"
        # and the other direction
        d2 = b.seal(body)
        assert receive(a, d2) == body
        assert receive(a, d2) == "replay"
        assert receive(b, d2) == "unknown_session"
    assert a.sent == b.sent == len(bodies)


@pytest.mark.parametrize("encrypt", [True, False])
@settings(max_examples=40, deadline=None)
@given(order=st.permutations(range(12)))
def test_session_reordering_inside_window(encrypt: bool, order: list[int]) -> None:
    a, b = session_pair(encrypt)
    dgrams = [a.seal(bytes([i]) * 20) for i in range(12)]
    for i in order:
        assert receive(b, dgrams[i]) == bytes([i]) * 20
    for i in order:
        assert receive(b, dgrams[i]) == "replay"


@pytest.mark.parametrize("encrypt", [True, False])
@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200), data=st.data())
def test_session_bit_flip_is_a_drop(encrypt: bool, body: bytes, data: st.DataObject) -> None:
    a, b = session_pair(encrypt)
    d = a.seal(body)
    flips = data.draw(st.lists(st.integers(0, len(d) * 8 - 1), min_size=1, max_size=3,
                               unique=True), label="bits")
    bad = bytearray(d)
    for bit in flips:
        bad[bit // 8] ^= 0x80 >> (bit % 8)
    got = receive(b, bytes(bad))
    assert isinstance(got, str)
    # with the genuine counter too (open must not trust the header either way)
    got2 = b.open(0, bytes(bad))
    assert isinstance(got2, str) and got2 == "auth"
    # a forgery never moves the replay window: the genuine datagram still opens
    assert b.replay.highest == -1
    assert receive(b, d) == body


@pytest.mark.parametrize("encrypt", [True, False])
def test_session_every_single_bit_flip(encrypt: bool) -> None:
    a, b = session_pair(encrypt)
    body = bytes(range(40))
    a.seal(b"x")  # counter 0 used up, so the datagram below has counter 1
    d = a.seal(body)
    for bit in range(len(d) * 8):
        bad = bytearray(d)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        got = receive(b, bytes(bad))
        assert isinstance(got, str), bit
        assert got in ("auth", "bad_type", "bad_version", "unknown_session"), (bit, got)
        assert b.open(1, bytes(bad)) == "auth"
    assert receive(b, d) == body


@pytest.mark.parametrize("encrypt", [True, False])
@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=80), counter=st.integers(0, 2**64 - 1))
def test_session_open_random_bytes(encrypt: bool, junk: bytes, counter: int) -> None:
    _a, b = session_pair(encrypt)
    assert b.open(counter, junk) == "auth"
    assert isinstance(receive(b, junk), str)


@pytest.mark.parametrize("encrypt", [True, False])
def test_session_truncations_and_wrong_key(encrypt: bool) -> None:
    a, b = session_pair(encrypt)
    d = a.seal(b"payload" * 10)
    for n in range(len(d)):
        assert isinstance(receive(b, d[:n]), str)
        assert b.open(0, d[:n]) == "auth"
    other = DataSession(9, 7, os.urandom(32), os.urandom(32), encrypt)
    assert other.open(0, d) == "auth"
    # a counter no sender could have produced never reaches the replay window
    assert b.open(COUNTER_LIMIT, d) == "auth"
    assert b.open(2**64 - 1, d) == "auth"
    assert b.replay.highest == -1
    assert receive(b, d) == b"payload" * 10


def test_session_clear_mode_is_readable_but_authenticated() -> None:
    a, _b = session_pair(False)
    secret = b"visible on the wire"
    assert secret in a.seal(secret)
    e, _ = session_pair(True)
    assert secret not in e.seal(secret)


def test_hello_rejects_booleans_and_encode_record_checks_inputs() -> None:
    from sleeve.proto.control import ControlError, Hello
    from sleeve.proto.datagram import encode_record

    with pytest.raises(ControlError):
        Hello.from_wire({"nick": "a", "uid": True, "idx": True, "udp": True})
    with pytest.raises(ValueError):
        encode_record(0, b"xy", src=b"abc")
    with pytest.raises(ValueError):
        encode_record(0, b"xy", hops=16)
