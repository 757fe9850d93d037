"""Fuzz the UDP data plane decoders: header, records, data session and replay window.

The whole input is one received datagram, exactly as the node sees it off the socket:

- ``datagram.decode_header`` and ``datagram.iter_records`` (on bytes and on a memoryview,
  as the node hands over) may raise only ``datagram.DecodeError``; a successful parse must
  account for every byte and re-encode to records that parse back identically;
- ``DataSession.open`` (encrypted and --no-encryption) must return a drop reason, never
  raise, never return a body for bytes nobody sealed, and never move the replay window;
- the same bytes, read as a stream of counters, drive two ``ReplayWindow`` instances that
  must agree with a set-based reference model.

Run: ``python3 -m fuzz.fuzz_datagram [libFuzzer flags] [corpus dirs]`` (or fuzz.run).
"""

from __future__ import annotations

from fuzz.common import fuzz_main
from sleeve.proto import datagram as dg
from sleeve.proto.replay import MAX_COUNTER, WINDOW, ReplayWindow
from sleeve.proto.session import DataSession

# Fixed keys: fuzzing cannot forge a Poly1305 tag, it only has to show that no garbage
# makes open() raise or leak a body.
_K1, _K2 = bytes(range(32)), bytes(range(32, 64))


def _check_header(data: bytes) -> tuple[int, int] | None:
    try:
        receiver, counter = dg.decode_header(data)
    except dg.DecodeError as e:
        assert e.reason in ("short", "bad_type", "bad_version"), e.reason
        return None
    assert len(data) >= dg.HEADER_LEN + dg.TAG_LEN
    assert data[0] == dg.TYPE_DATA and data[1] == dg.VERSION
    assert 0 <= receiver < 1 << 32 and 0 <= counter < 1 << 64
    assert dg.encode_header(receiver, counter) == bytes([data[0], data[1], 0, 0]) + data[4:16]
    return receiver, counter


def _parse(body: bytes | memoryview) -> list[dg.Record] | None:
    try:
        return list(dg.iter_records(body))
    except dg.DecodeError as e:
        assert e.reason in ("truncated_record", "bad_auth_flags"), e.reason
        return None


def _check_records(data: bytes) -> None:
    recs = _parse(data)
    via_view = _parse(memoryview(data))
    # bytes and memoryview input must agree (the node passes views of its receive buffer)
    assert (recs is None) == (via_view is None)
    if recs is None or via_view is None:
        return
    assert [(r.kind, r.src, r.dst, r.hops, bytes(r.payload), r.bcast, r.auth) for r in recs] == [
        (r.kind, r.src, r.dst, r.hops, bytes(r.payload), r.bcast, r.auth) for r in via_view]
    used = 0
    for r in recs:
        assert 0 <= r.kind <= 255 and 0 <= r.hops <= dg.MAX_HOPS
        assert r.src is None or len(r.src) == dg.PEER_ID_LEN
        assert r.dst is None or len(r.dst) == dg.PEER_ID_LEN
        assert r.auth is None or (r.src is not None and len(r.auth) in (dg.AUTH_MAC_LEN,
                                                                         dg.AUTH_SIG_LEN))
        used += (dg.REC_LEN + len(r.payload) + 8 * (r.src is not None) + 8 * (r.dst is not None)
                 + len(r.auth or b""))
    assert used == len(data), "a successful parse must account for every byte"
    # Re-encoding keeps every flag; the result parses to the same records.
    again = b"".join(dg.encode_record(r.kind, r.payload, r.src, r.dst, r.hops, r.bcast, r.auth)
                     for r in recs)
    assert again == bytes(data)
    reparsed = list(dg.iter_records(again))
    assert [(r.kind, r.src, r.dst, r.hops, bytes(r.payload), r.bcast, r.auth)
            for r in reparsed] == [
        (r.kind, r.src, r.dst, r.hops, bytes(r.payload), r.bcast, r.auth) for r in recs]


def _check_session(data: bytes, header: tuple[int, int] | None) -> None:
    # With the header's counter (the node's path) and with a fixed one (open must not
    # trust the header either way).
    counters = ((header[1],) if header else ()) + (0,)
    for encrypt in (True, False):
        for counter in counters:
            s = DataSession(local_index=7, remote_index=9, send_key=_K2, recv_key=_K1,
                            encrypt=encrypt)
            got = s.open(counter, data)
            if isinstance(got, str):
                assert got == "auth", got  # a fresh window cannot call anything a replay
                assert s.replay.highest == -1, "a forgery moved the replay window"
                continue
            # Genuine: the fuzzer spliced in a seed sealed with the peer's key (it cannot
            # forge a tag). It opens exactly once, and its body is a record list to parse.
            assert len(got) == len(data) - dg.HEADER_LEN - dg.TAG_LEN
            assert s.replay.highest == counter
            assert s.open(counter, data) == "replay"
            _check_records(got)


# Counter stream: 4-byte items. 0xFF in the first byte means "near the top of the counter
# space" (MAX_COUNTER + 1 - next 3 bytes, so bad_counter is reachable); otherwise a signed
# 24-bit step from the highest counter seen, so the window edges are reachable.
def _counters(data: bytes) -> list[int]:
    out: list[int] = []
    highest = 0
    for i in range(0, len(data) - 3, 4):
        tag = data[i]
        rest = int.from_bytes(data[i + 1 : i + 4], "big")
        if tag == 0xFF:
            c = MAX_COUNTER + 1 - rest
        else:
            step = rest - (1 << 23) if tag & 1 else rest & 0xFFF
            c = highest + step
        out.append(c)
        if 0 <= c <= MAX_COUNTER:
            highest = max(highest, c)
    return out


def _check_replay(data: bytes) -> None:
    counters = _counters(data)
    for size in (64, WINDOW):
        w = ReplayWindow(size)
        seen: set[int] = set()
        highest = -1
        for c in counters:
            if c < 0 or c > MAX_COUNTER:
                want: str | None = "bad_counter"
            elif c > highest:
                want = None
            elif highest - c >= size:
                want = "too_old"
            elif c in seen:
                want = "replay"
            else:
                want = None
            got = w.accept(c)
            assert got == want, (size, c, highest, got, want)
            if want is None:
                seen.add(c)
                highest = max(highest, c)
            assert w.highest == highest


def test_one_input(data: bytes) -> None:
    header = _check_header(data)
    _check_records(data)
    if len(data) > dg.HEADER_LEN:
        _check_records(data[dg.HEADER_LEN :])  # the body position inside a datagram
    _check_session(data, header)
    _check_replay(data)


if __name__ == "__main__":
    fuzz_main(test_one_input)
