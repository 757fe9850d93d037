"""Offloaded super-frames between routers (issue 9): the codec and two nodes on loopback.

The nodes use in-memory ports that behave like a TAP with IFF_VNET_HDR (or not), so
every combination of capabilities runs without root; the lab tests cover real TAPs.
"""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sleeve.capture.memory import MemoryPort
from sleeve.config import Target
from sleeve.forward import superframe
from sleeve.node import Node
from sleeve.proto import datagram as dg
from sleeve.proto import vnet
from sleeve.status.metrics import metrics_route
from tests.test_node_inproc import MAC_A, MAC_B, established, frame, wait_for
from tests.test_offload import make

MSS = 1348


def super_frame(payload_len: int, dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    """Virtio header + a TCP/IPv4 super-frame as the kernel's TSO hands it to a TAP."""
    payload = random.Random(payload_len).randbytes(payload_len)
    pkt = (Ether(dst=dst, src=src) / IP(src="198.19.0.1", dst="198.19.0.2", id=7)
           / TCP(sport=5001, dport=40000, seq=1000, ack=1, flags="PA",
                 options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
           / payload)
    f = bytearray(bytes(pkt))
    l4 = 34
    hdr_len = l4 + 32
    # the TCP checksum field as CHECKSUM_PARTIAL leaves it: the folded pseudo-header sum
    tcp_len = len(f) - l4
    pseudo = f[26:34] + bytes((0, 6)) + tcp_len.to_bytes(2, "big")
    s = int.from_bytes(pseudo, "big") % 0xFFFF or 0xFFFF
    f[l4 + 16:l4 + 18] = s.to_bytes(2, "big")
    hdr = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, hdr_len, MSS, l4, 16)
    return hdr + bytes(f)


def test_small_frames_go_as_one_record_super_frames_as_segments() -> None:
    one = vnet.HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 16) + super_frame(100)[10:]
    (rec,) = superframe.cut(one, 1, 1440) or []
    assert rec[2] == superframe.KIND_VNET and rec[4:] == one
    assert superframe.cut(one[:10] + bytes(1500), 1, 1440) is None  # a single frame too big
    big = super_frame(60000)
    recs = superframe.cut(big, 9, 1440)
    assert recs is not None and len(recs) == -(-60000 // MSS)
    assert all(len(r) <= 1440 and r[2] == superframe.KIND_VNET_SEG for r in recs)
    sets = superframe.SegmentSets()
    order = list(range(len(recs)))
    random.Random(1).shuffle(order)  # datagrams of one set may be reordered
    out = [sets.add(recs[i][4:], 0.0) for i in order]
    assert all(o == [] for o in out[:-1]) and len(sets) == 0
    (hdr, f), = out[-1]
    assert hdr + f == big  # merged back into the very super-frame the sender's kernel made


def test_cut_refuses_segments_the_path_cannot_carry() -> None:
    assert superframe.cut(super_frame(60000), 1, 1000) is None  # MSS 1348 > the room


def salvage_check(writes: list[superframe.Write], sent: bytes, lost: set[int]) -> None:
    """The runs written are valid frames holding exactly the segments that arrived."""
    orig = Ether(sent[vnet.HDR_LEN:])
    data = bytes(orig[TCP].payload)
    got: list[tuple[int, bytes]] = []
    want = b"".join(data[i * MSS:(i + 1) * MSS] for i in range(-(-len(data) // MSS))
                    if i not in lost)
    for hdr, f in writes:
        h = vnet.parse(hdr)
        assert vnet.check(h, len(f)) is None and h.flags == vnet.F_NEEDS_CSUM
        p = Ether(vnet.complete_csum(f, h.csum_start, h.csum_offset))
        c_ip, c_tcp = p[IP].chksum, p[TCP].chksum
        del p[IP].chksum, p[TCP].chksum
        q = Ether(bytes(p))
        assert (q[IP].chksum, q[TCP].chksum) == (c_ip, c_tcp)
        off = (p[TCP].seq - orig[TCP].seq) & 0xFFFFFFFF
        assert bytes(p[TCP].payload) == data[off:off + len(p[TCP].payload)]
        got.append((off, bytes(p[TCP].payload)))
    assert b"".join(g for _, g in sorted(got)) == want


def test_a_lost_datagram_costs_one_segment_not_the_super_frame() -> None:
    sets = superframe.SegmentSets()
    first, second = super_frame(20000), super_frame(30000)
    r1 = superframe.cut(first, 1, 1440) or []
    r2 = superframe.cut(second, 2, 1440) or []
    lost = {3, len(r1) - 1}  # one in the middle, and the last
    for i, rec in enumerate(r1):
        if i not in lost:
            assert sets.add(rec[4:], 0.0) == []
    out = []
    for rec in r2:
        out += sets.add(rec[4:], 0.001)
    # set 2 completing writes what arrived of set 1 first (three runs), then set 2 whole
    assert len(out) == 3 and len(sets) == 0
    salvage_check(out[:2], first, lost)
    assert out[2][0] + out[2][1] == second
    assert sets.drops == {"segment_set_incomplete": 1, "segments_lost": 2}
    # a straggler of set 1 after all: written on its own, not kept
    straggler = sets.add(r1[3][4:], 0.002)
    assert vnet.parse(straggler[0][0]).gso_type == vnet.GSO_NONE and len(sets) == 0
    salvage_check(out[:2] + straggler, first, {len(r1) - 1})


def test_an_incomplete_set_is_written_after_salvage_time() -> None:
    sets = superframe.SegmentSets()
    sent = super_frame(40000)
    recs = superframe.cut(sent, 5, 1440) or []
    for rec in recs[:-1]:
        assert sets.add(rec[4:], 0.0) == []
    assert sets.expire(superframe.SALVAGE_AFTER / 2) == []
    out = sets.expire(superframe.SALVAGE_AFTER)
    salvage_check(out, sent, {len(recs) - 1})
    assert len(out) == 1 and vnet.parse(out[0][0]).gso_type == vnet.GSO_TCPV4


def test_segment_sets_are_bounded() -> None:
    sets = superframe.SegmentSets()
    out = []
    for set_id in range(superframe.MAX_SETS + 5):
        recs = superframe.cut(super_frame(5000), set_id, 1440) or []
        out += sets.add(recs[0][4:], 0.0)  # only the first segment of each arrives
    assert len(sets) == superframe.MAX_SETS
    assert sets.drops["segment_set_evicted"] == 5 and len(out) == 5  # written, not lost
    assert sets.add(bytes(10), 0.0) == [] and sets.drops["bad_segment"] == 1


def plain(port: MemoryPort, f: bytes) -> bytes:
    return vnet.ZERO_HDR + f if port.vnet else f


async def pair(body: Any, vnet_a: bool, vnet_b: bool) -> None:
    b, pb = make(True, vnet=vnet_b)
    tb = asyncio.create_task(b.run())
    await wait_for(lambda: b.udp is not None and b.port is not None)
    a, pa = make(True, (Target("127.0.0.1", b.udp_port),), vnet=vnet_a)
    ta = asyncio.create_task(a.run())
    try:
        await wait_for(lambda: established(a) and established(b))
        await wait_for(lambda: a.links[b.id].usable and b.links[a.id].usable)
        # b's host MAC becomes known to a (else a floods, and floods are segmented)
        pb.inject(plain(pb, frame(MAC_A, MAC_B)))
        await wait_for(lambda: len(pa.delivered) == 1)
        await body(a, pa, b, pb)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb), 5)


def check_segments(frames: list[bytes], sent: bytes) -> None:
    """Ordinary frames whose checksums verify and whose payloads add up to the original."""
    orig = Ether(sent[vnet.HDR_LEN:])
    data = b""
    seq = orig[TCP].seq
    for f in frames:
        p = Ether(f)
        assert len(f) <= 14 + 20 + 32 + MSS
        ip, tcp = p[IP], p[TCP]
        c_ip, c_tcp = ip.chksum, tcp.chksum
        del ip.chksum, tcp.chksum
        q = Ether(bytes(p))
        assert (q[IP].chksum, q[TCP].chksum) == (c_ip, c_tcp)
        assert tcp.seq == seq
        seq += len(bytes(tcp.payload))
        data += bytes(tcp.payload)
    assert data == bytes(orig[TCP].payload)


@pytest.mark.parametrize("size", [200, 1300, 20000, 64000])
def test_super_frames_cross_whole_between_offload_peers(size: int) -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        la, lb = a.links[b.id], b.links[a.id]
        assert la.peer_vnet and lb.peer_vnet
        sent = [super_frame(size + i) for i in range(5)]
        for s in sent:
            pa.inject(s)
        await wait_for(lambda: len(pb.delivered) == 5)
        assert list(pb.delivered) == sent  # header and frame as the sender's kernel gave them
        assert la.stats["tx_superframes"] == 5 and lb.stats["rx_superframes"] == 5
        assert a.link_status(la)["offload"] == "super-frames"
        assert set(b.drops.snapshot()) <= {"unknown_session"}
        text = metrics_route(b.status)({})[1].decode()
        assert next(ln for ln in text.splitlines() if ln.startswith(
            "sleeve_link_superframes_total") and 'direction="rx"' in ln).endswith(" 5.0")

    asyncio.run(pair(body, True, True))


@pytest.mark.parametrize(("vnet_a", "vnet_b"), [(True, False), (False, True)],
                         ids=["receiver-plain", "sender-plain"])
def test_peers_without_offload_get_ordinary_frames(vnet_a: bool, vnet_b: bool) -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        la = a.links[b.id]
        assert la.peer_vnet == vnet_b and b.links[a.id].peer_vnet == vnet_a
        assert a.link_status(la)["offload"] == "per frame"
        if vnet_a:
            sent = super_frame(30000)
            pa.inject(sent)
            n = -(-30000 // MSS)
            await wait_for(lambda: len(pb.delivered) == n)
            check_segments(list(pb.delivered), sent)
            assert a.stats["tx_segmented"] == 1 and la.stats["tx_superframes"] == 0
        else:
            f = frame(MAC_B, MAC_A, b"\x45" + bytes(1000))
            pa.inject(f)
            await wait_for(lambda: len(pb.delivered) == 1)
            assert pb.delivered[0] == vnet.ZERO_HDR + f  # "nothing offloaded" to b's kernel

    asyncio.run(pair(body, vnet_a, vnet_b))


def test_bad_offloaded_records_are_dropped_and_counted() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        la = a.links[b.id]
        good = super_frame(3000)
        bad_type = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_UDP, 0, 1000, 34, 6) + good[10:]
        valid_flag = bytes([vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID]) + good[1:]
        relayed = dg.encode_record(superframe.KIND_VNET, good, src=a.id, dst=b.id, hops=3)
        a.egress.queue(la, dg.REC.pack(len(bad_type), superframe.KIND_VNET, 0) + bad_type)
        a.egress.queue(la, relayed)
        a.egress.queue(la, dg.REC.pack(len(valid_flag), superframe.KIND_VNET, 0) + valid_flag)
        a.egress.flush_touched()
        await wait_for(lambda: len(pb.delivered) == 1)
        assert pb.delivered[0] == good  # DATA_VALID cleared: our kernel checks for itself
        drops = b.drops.snapshot()
        assert drops.get("bad_offload_record") == 1
        assert sum(v for k, v in drops.items() if k not in ("unknown_session",)) == 2

    asyncio.run(pair(body, True, True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 4),
                          st.binary(max_size=200)), max_size=30))
def test_segment_sets_take_any_authenticated_garbage(parts: list[tuple[int, int, int, bytes]],
                                                     ) -> None:
    """A peer that sends nonsense in KIND_VNET_SEG records gets drops, never an exception;
    what is written is (10-byte header, frame)."""
    good = superframe.cut(super_frame(3000), 1, 1440) or []
    sets = superframe.SegmentSets()
    now = 0.0
    for set_id, index, count, tail in parts:
        body = (struct.pack("!IBB", set_id, index, count) + good[0][10:26] + tail
                if tail[:1] != b"!" else good[index % len(good)][4:] + tail[1:])
        for hdr, f in sets.add(body, now) + sets.expire(now + 0.005):
            assert len(hdr) == vnet.HDR_LEN and isinstance(f, bytes)
        now += 0.004
    assert len(sets) <= superframe.MAX_SETS
