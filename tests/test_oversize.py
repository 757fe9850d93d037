"""Oversize frames: IP fragmentation, ICMP replies and sleeve-level fragments (pure)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, Ether
from scapy.layers.inet6 import IPv6

from sleeve.forward.batcher import pack
from sleeve.forward.oversize import record_source, shrink
from sleeve.forward.reassembly import MAX_SETS, TIMEOUT, Reassembler, fragment
from sleeve.proto import datagram as dg

SRC_PEER, DST_PEER = b"S" * 8, b"D" * 8
MACS = dict(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")


def ipv4(df: bool, size: int = 1400) -> bytes:
    pkt = Ether(**MACS) / IP(src="198.19.0.1", dst="198.19.0.2", flags="DF" if df else 0) \
        / UDP(sport=1, dport=2) / (b"x" * size)
    return bytes(pkt)


def test_ipv4_without_df_becomes_fragment_records_that_fit_and_keep_the_peer_ids() -> None:
    rec = dg.encode_record(dg.KIND_FRAME, ipv4(False), src=SRC_PEER, dst=DST_PEER, hops=9)
    frags, reply, outcome = shrink(rec, 600)
    assert outcome == "fragmented" and reply is None and len(frags) >= 3
    for f in frags:
        assert len(f) <= 600 - dg.HEADER_LEN - dg.TAG_LEN
        (r,) = dg.iter_records(f)
        assert (r.src, r.dst, r.hops, r.kind) == (SRC_PEER, DST_PEER, 9, dg.KIND_FRAME)
    assert record_source(rec) == SRC_PEER


def test_ipv4_with_df_gets_an_icmp_reply_to_the_sender() -> None:
    rec = dg.frame_record(ipv4(True))
    frags, reply, outcome = shrink(rec, 600)
    assert outcome == "too_big_reply" and not frags and reply is not None
    icmp = Ether(reply)
    assert icmp.dst == MACS["src"] and icmp[IP].dst == "198.19.0.1"
    assert icmp[IP].proto == 1 and icmp[IP].payload.type == 3 and icmp[IP].payload.code == 4


def test_flooded_and_small_ipv6_paths_get_no_icmp() -> None:
    rec = dg.encode_record(dg.KIND_FRAME, ipv4(True), hops=3, bcast=True)
    assert shrink(rec, 600)[1:] == (None, "too_big_flooded")
    v6 = bytes(Ether(**MACS) / IPv6(src="2001:2::1", dst="2001:2::2") / UDP() / (b"y" * 1300))
    # below IPv6's 1280 minimum no PTB may be sent: the node falls back to sleeve fragments
    assert shrink(dg.frame_record(v6), 600) == ([], None, "too_big")


def test_sleeve_fragments_reassemble_in_any_order() -> None:
    rec = dg.encode_record(dg.KIND_FRAME, bytes(range(256)) * 20, src=SRC_PEER)
    frags = fragment(rec, 7, 500)
    assert len(frags) > 5 and all(len(f) <= 500 for f in frags)
    random.Random(1).shuffle(frags)
    r = Reassembler()
    out = [r.add(next(dg.iter_records(f)).payload, 0.0) for f in frags]
    assert out[:-1] == [None] * (len(frags) - 1) and out[-1] == rec
    assert len(r) == 0
    _bodies, oversize = pack(frags, 500)
    assert not oversize


def test_reassembly_is_bounded_and_times_out() -> None:
    r = Reassembler()
    rec = b"z" * 3000
    for i in range(MAX_SETS + 10):  # only the first fragment of each set
        r.add(next(dg.iter_records(fragment(rec, i, 500)[0])).payload, 0.0)
    assert len(r) == MAX_SETS and r.drops["fragment_evicted"] == 10
    r.expire(TIMEOUT + 0.1)
    assert len(r) == 0 and r.drops["fragment_timeout"] == MAX_SETS
    assert r.add(b"\x00" * 6, 0.0) is None and r.drops["bad_fragment"] == 1


def test_fragment_refuses_what_cannot_be_carried() -> None:
    assert fragment(b"x" * 100, 1, 40) == []  # no room for a useful chunk
    assert fragment(b"x" * 70000, 1, 500) == []  # more than 64 pieces


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.floats(0, 10))
def test_garbage_fragments_never_raise(payload: bytes, now: float) -> None:
    r = Reassembler()
    for _ in range(3):
        out = r.add(payload, now)
        assert out is None or isinstance(out, bytes)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=3000), st.integers(548, 1472))
def test_shrink_never_raises_on_any_record(frame: bytes, datagram: int) -> None:
    frags, _reply, outcome = shrink(dg.frame_record(frame), datagram)
    assert isinstance(outcome, str)
    assert all(len(f) <= datagram - dg.HEADER_LEN - dg.TAG_LEN for f in frags)
