"""Property tests for the virtio-net header codec and its software fallback.

Super-frames are built with scapy the way the kernel hands them to us with TSO
on (one big TCP segment, NEEDS_CSUM, the folded pseudo-header sum in the TCP
checksum field); every segment ``to_frames`` cuts must parse, carry checksums
scapy agrees with, and together carry the original byte stream with the right
sequence numbers, flags and IPv4 ids. ``complete_csum`` matches scapy for TCP
and UDP over both IP versions; ``check`` takes what the kernel produces and
nothing else; arbitrary bytes only ever raise ``VnetError``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from sleeve.proto import vnet
from sleeve.proto.vnet import VnetError, VnetHeader

SRC4, DST4 = "10.1.2.3", "192.0.2.77"
SRC6, DST6 = "fd00::1:2:3", "fd00:ffff::77"
TcpOpts = list[tuple[str, object]]
TS_OPTS: TcpOpts = [("NOP", None), ("NOP", None), ("Timestamp", (0x01020304, 0xA0B0C0D0))]
SACK_OPTS: TcpOpts = [*TS_OPTS, ("NOP", None), ("NOP", None), ("SAck", (1000, 2000))]


def ref_sum(data: bytes) -> int:
    """Folded ones'-complement sum, the slow obvious way (independent of vnet's trick)."""
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(ip: Packet, proto: int, length: int) -> bytes:
    if isinstance(ip, IP):
        return (bytes(ip)[12:20] + bytes([0, proto]) + length.to_bytes(2, "big"))
    return bytes(ip)[8:40] + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def eth(vlan: int | None) -> Packet:
    frame = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    return frame / Dot1Q(vlan=vlan) if vlan is not None else frame


def partial(pkt: Packet, l4_layer: type[Packet], csum_offset: int) -> tuple[bytes, int, int]:
    """(frame with the L4 checksum field as the kernel leaves it, csum_start, scapy's checksum)."""
    raw = bytearray(bytes(pkt))
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = len(raw) - len(bytes(pkt[l4_layer]))
    at = l4 + csum_offset
    good = int.from_bytes(raw[at : at + 2], "big")
    proto = 6 if l4_layer is TCP else 17
    raw[at : at + 2] = ref_sum(pseudo(ip, proto, len(raw) - l4)).to_bytes(2, "big")
    return bytes(raw), l4, good


def same_csum(a: int, b: int) -> bool:
    return a == b or {a, b} == {0, 0xFFFF}  # one value in ones' complement


# ------------------------------------------------------------------ segmentation

FLAGS = st.sampled_from([("PA", 0), ("FA", 0), ("A", 0), ("FPA", 0), ("CPA", vnet.GSO_ECN),
                         ("CEA", vnet.GSO_ECN)])
TCP_OPTS = st.sampled_from([[], TS_OPTS, SACK_OPTS])
EXT: st.SearchStrategy[list[Callable[[], Packet]]] = st.sampled_from(
    [[], [IPv6ExtHdrHopByHop], [IPv6ExtHdrDestOpt], [IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt]])


def super_frame(v6: bool, vlan: int | None, flags: str, opts: TcpOpts,
                payload: bytes, seq: int, ident: int, ext: list[Callable[[], Packet]],
                mss: int, ecn: int) -> tuple[bytes, bytes, Packet]:
    tcp = TCP(sport=40000, dport=443, seq=seq, ack=99, flags=flags, window=500, options=opts)
    ip: Packet
    if v6:
        ip = IPv6(src=SRC6, dst=DST6, hlim=60, tc=2)
        for h in ext:
            ip = ip / h()
    else:
        ip = IP(src=SRC4, dst=DST4, id=ident, ttl=60, tos=2, flags="DF")
    pkt = eth(vlan) / ip / tcp / Raw(payload)
    frame, l4, _ = partial(pkt, TCP, 16)
    hdr_len = l4 + len(bytes(pkt[TCP])) - len(payload)
    gso = (vnet.GSO_TCPV6 if v6 else vnet.GSO_TCPV4) | ecn
    hdr = vnet.HDR.pack(vnet.F_NEEDS_CSUM, gso, hdr_len, mss, l4, 16)
    return hdr, frame, pkt


@settings(max_examples=50, deadline=None)
@given(v6=st.booleans(), vlan=st.none() | st.integers(1, 4094), fl=FLAGS, opts=TCP_OPTS,
       size=st.integers(1, 60000), mss=st.integers(500, 1448), seq=st.integers(0, 2**32 - 1),
       ident=st.integers(0, 0xFFFF), ext=EXT, seed=st.integers(0, 2**32))
def test_segments_are_correct_frames(v6: bool, vlan: int | None, fl: tuple[str, int],
                                     opts: TcpOpts, size: int, mss: int,
                                     seq: int, ident: int, ext: list[Callable[[], Packet]],
                                     seed: int) -> None:
    flags, ecn = fl
    payload = random.Random(seed).randbytes(size)
    hdr, frame, orig = super_frame(v6, vlan, flags, opts, payload, seq, ident, ext, mss, ecn)
    assert vnet.check(vnet.parse(hdr), len(frame)) is None
    segs = vnet.to_frames(hdr, frame)
    assert segs == vnet.to_frames(memoryview(hdr), memoryview(frame))
    assert len(segs) == -(-size // mss)
    l2 = 18 if vlan is not None else 14
    otcp = orig[TCP]
    got = b""
    for i, raw in enumerate(segs):
        first, last = i == 0, i == len(segs) - 1
        assert raw[:l2] == frame[:l2]
        p = Ether(raw)
        tcp = p[TCP]
        data = bytes(tcp.payload)
        assert len(data) == (mss if not last else size - mss * (len(segs) - 1))
        if v6:
            ip6 = p[IPv6]
            assert ip6.plen == len(raw) - l2 - 40
            assert (ip6.src, ip6.dst, ip6.hlim, ip6.tc) == (SRC6, DST6, 60, 2)
            l4 = vnet.parse(hdr).csum_start
            assert raw[l2 + 40 : l4] == frame[l2 + 40 : l4]  # extension headers as they were
            assert l4 - l2 - 40 == 8 * len(ext)
        else:
            ip4 = p[IP]
            assert ip4.len == len(raw) - l2
            assert ip4.id == (ident + i) & 0xFFFF
            assert (ip4.src, ip4.dst, ip4.ttl, ip4.tos, int(ip4.flags)) == (SRC4, DST4, 60, 2, 2)
            assert scapy_checksum(bytes(ip4)[:20]) == 0
            again = IP(bytes(ip4))
            del again.chksum
            assert IP(bytes(again)).chksum == ip4.chksum
        # TCP checksum: verifies to zero, and scapy recomputes the same value
        iplayer = p[IPv6] if v6 else p[IP]
        assert ref_sum(pseudo(iplayer, 6, len(bytes(tcp))) + bytes(tcp)) == 0xFFFF
        if first or last or i % 17 == 0:  # scapy's rebuild is slow; sample it
            rebuilt = p.copy()
            del rebuilt[TCP].chksum
            assert same_csum(Ether(bytes(rebuilt))[TCP].chksum, tcp.chksum)
        assert tcp.seq == (seq + i * mss) & 0xFFFFFFFF
        assert (tcp.sport, tcp.dport, tcp.ack, tcp.window) == (40000, 443, 99, 500)
        assert tcp.options == otcp.options
        want = int(otcp.flags)
        if not last:
            want &= ~0x09  # FIN, PSH
        if not first:
            want &= ~0x80  # CWR
        assert int(tcp.flags) == want
        got += data
    assert got == payload


def test_super_frame_within_one_mss_is_one_correct_frame() -> None:
    payload = bytes(range(256)) * 4
    hdr, frame, orig = super_frame(False, None, "PA", TS_OPTS, payload, 7, 9, [], 1448, 0)
    (seg,) = vnet.to_frames(hdr, frame)
    want = orig.copy()
    del want[TCP].chksum
    assert seg == bytes(Ether(bytes(want)))  # ident unchanged, full checksum
    assert seg != frame


def test_sequence_and_ident_wrap() -> None:
    payload = bytes(3000)
    hdr, frame, _ = super_frame(False, 5, "FPA", [], payload, 2**32 - 1000, 0xFFFF, [], 1000, 0)
    segs = [Ether(s) for s in vnet.to_frames(hdr, frame)]
    assert [s[TCP].seq for s in segs] == [2**32 - 1000, 0, 1000]
    assert [s[IP].id for s in segs] == [0xFFFF, 0, 1]
    assert [str(s[TCP].flags) for s in segs] == ["A", "A", "FPA"]


def test_odd_payload_and_tiny_mss() -> None:
    hdr, frame, _ = super_frame(True, None, "PA", [], bytes(257), 1, 0, [], 1, 0)
    with pytest.raises(VnetError) as e:
        vnet.to_frames(hdr, frame)
    assert e.value.reason == "too_many_segments"
    hdr, frame, _ = super_frame(True, None, "PA", [], b"\xff" * 255, 1, 0, [], 3, 0)
    segs = vnet.to_frames(hdr, frame)
    assert len(segs) == 85
    for s in segs:
        p = Ether(s)
        assert ref_sum(pseudo(p[IPv6], 6, len(bytes(p[TCP]))) + bytes(p[TCP])) == 0xFFFF


# ------------------------------------------------------------------ checksum completion

@settings(max_examples=50, deadline=None)
@given(v6=st.booleans(), udp=st.booleans(), vlan=st.none() | st.integers(1, 4094),
       payload=st.binary(max_size=3000))
def test_complete_csum_matches_scapy(v6: bool, udp: bool, vlan: int | None,
                                     payload: bytes) -> None:
    ip = IPv6(src=SRC6, dst=DST6) if v6 else IP(src=SRC4, dst=DST4)
    l4: Packet = UDP(sport=53, dport=5353) if udp else TCP(sport=1, dport=2, flags="PA")
    pkt = eth(vlan) / ip / l4 / Raw(payload)
    offset = 6 if udp else 16
    frame, start, good = partial(pkt, UDP if udp else TCP, offset)
    done = vnet.complete_csum(frame, start, offset)
    assert len(done) == len(frame)
    assert done[: start + offset] == frame[: start + offset]
    assert done[start + offset + 2 :] == frame[start + offset + 2 :]
    assert same_csum(int.from_bytes(done[start + offset : start + offset + 2], "big"), good)
    assert done == bytes(pkt) or good == 0  # scapy's own bytes, unless it stored 0 for TCP
    assert vnet.complete_csum(bytearray(frame), start, offset) == done
    assert vnet.complete_csum(memoryview(frame), start, offset) == done
    hdr = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, start, offset)
    assert vnet.check(vnet.parse(hdr), len(frame)) is None
    assert vnet.to_frames(hdr, frame) == [done]


def test_udp_checksum_zero_is_sent_as_ffff() -> None:
    # choose the last payload word so that the ones'-complement sum is 0xFFFF
    pkt = eth(None) / IP(src=SRC4, dst=DST4) / UDP(sport=7, dport=7) / Raw(b"hello!\x00\x00")
    frame, start, _ = partial(pkt, UDP, 6)
    s = ref_sum(frame[start:])  # the field holds the pseudo-header sum
    last = 0xFFFF - s
    fixed = frame[:-2] + last.to_bytes(2, "big")
    assert ref_sum(fixed[start:]) == 0xFFFF
    done = vnet.complete_csum(fixed, start, 6)
    assert done[start + 6 : start + 8] == b"\xff\xff"
    assert Ether(done)[UDP].chksum == 0xFFFF
    fixed_pkt = Ether(fixed)
    del fixed_pkt[UDP].chksum
    assert Ether(bytes(fixed_pkt))[UDP].chksum == 0xFFFF  # scapy agrees (RFC 768)


def test_no_csum_no_gso_is_unchanged() -> None:
    frame = bytes(eth(None) / IP(src=SRC4, dst=DST4) / UDP() / Raw(b"x"))
    assert vnet.to_frames(vnet.ZERO_HDR, frame) == [frame]
    out = vnet.to_frames(memoryview(vnet.ZERO_HDR), memoryview(frame))
    assert out == [frame] and type(out[0]) is bytes


def test_complete_csum_refuses_out_of_range() -> None:
    for start, off in ((0, 9), (9, 0), (-1, 0), (0, -1), (20, 20)):
        with pytest.raises(VnetError):
            vnet.complete_csum(bytes(10), start, off)


# ------------------------------------------------------------------ header, check, sanitize

def test_parse_and_constants() -> None:
    assert vnet.HDR.size == vnet.HDR_LEN == len(vnet.ZERO_HDR) == 10
    raw = bytes([1, 0x81, 0x36, 0x00, 0x4A, 0x05, 0x22, 0x00, 0x10, 0x00])
    assert vnet.parse(raw) == VnetHeader(1, 0x81, 0x36, 1354, 34, 16)
    assert vnet.parse(memoryview(raw + b"xyz")) == vnet.parse(raw)
    with pytest.raises(VnetError) as e:
        vnet.parse(raw[:9])
    assert e.value.reason == "bad_vnet"


def test_sanitized_clears_data_valid_only() -> None:
    raw = bytes([3, 4, 1, 2, 3, 4, 5, 6, 7, 8])
    assert vnet.sanitized(raw) == bytes([1]) + raw[1:]
    assert vnet.sanitized(memoryview(bytes([0xFF]) + raw[1:])) == bytes([0xFD]) + raw[1:]
    assert vnet.sanitized(vnet.ZERO_HDR) == vnet.ZERO_HDR
    with pytest.raises(VnetError):
        vnet.sanitized(b"\x00")


def kernel_like(v6: bool = False) -> tuple[VnetHeader, int]:
    hdr, frame, _ = super_frame(v6, None, "PA", TS_OPTS, bytes(5000), 1, 1, [], 1448, 0)
    return vnet.parse(hdr), len(frame)


def test_check_accepts_what_the_kernel_produces() -> None:
    for v6 in (False, True):
        h, n = kernel_like(v6)
        assert vnet.check(h, n) is None
        assert vnet.check(VnetHeader(h.flags, h.gso_type | vnet.GSO_ECN, *_rest(h)), n) is None
    assert vnet.check(vnet.parse(vnet.ZERO_HDR), 14) is None
    assert vnet.check(VnetHeader(vnet.F_DATA_VALID, 0, 0, 0, 0, 0), 60) is None
    assert vnet.check(VnetHeader(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 6), 42) is None  # UDP
    assert vnet.check(VnetHeader(vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID, 0, 0, 0, 34, 16),
                      54) is None


def _rest(h: VnetHeader) -> tuple[int, int, int, int]:
    return h.hdr_len, h.gso_size, h.csum_start, h.csum_offset


def test_check_rejects() -> None:
    h, n = kernel_like()
    t4 = vnet.GSO_TCPV4
    cases: list[tuple[VnetHeader, int, str]] = [
        (h, 13, "short_frame"),
        (VnetHeader(4, t4, *_rest(h)), n, "bad_vnet_flags"),
        (VnetHeader(0x81, t4, *_rest(h)), n, "bad_vnet_flags"),
        (VnetHeader(1, vnet.GSO_UDP, *_rest(h)), n, "bad_gso_type"),
        (VnetHeader(1, vnet.GSO_UDP_L4, *_rest(h)), n, "bad_gso_type"),
        (VnetHeader(1, 2, *_rest(h)), n, "bad_gso_type"),
        (VnetHeader(0, vnet.GSO_ECN, 0, 0, 0, 0), n, "bad_gso_type"),
        (VnetHeader(1, t4, h.hdr_len, h.gso_size, 13, 16), n, "bad_csum_start"),
        (VnetHeader(1, 0, 0, 0, n - 17, 16), n, "bad_csum_start"),
        (VnetHeader(1, 0, 0, 0, 34, 10), n, "bad_csum_offset"),
        (VnetHeader(1, 0, 0, 0, 34, 0), n, "bad_csum_offset"),
        (VnetHeader(0, t4, h.hdr_len, h.gso_size, 0, 0), n, "gso_without_csum"),
        (VnetHeader(1, t4, h.hdr_len, 0, h.csum_start, 16), n, "bad_gso_size"),
        (VnetHeader(1, t4, n + 1, h.gso_size, h.csum_start, 16), n, "bad_hdr_len"),
        (h, vnet.MAX_FRAME + 1, "oversize_gso"),
    ]
    for hh, length, reason in cases:
        assert vnet.check(hh, length) == reason, (hh, length)
    assert vnet.check(h, vnet.MAX_FRAME) is None


def test_to_frames_refusals() -> None:
    hdr, frame, _ = super_frame(False, None, "PA", [], bytes(3000), 1, 1, [], 1000, 0)
    h = vnet.parse(hdr)
    f = bytearray(frame)

    def reason(hh: bytes, ff: bytes | bytearray) -> str:
        with pytest.raises(VnetError) as e:
            vnet.to_frames(hh, bytes(ff))
        return e.value.reason

    def with_hdr(**kw: int) -> bytes:
        d = {"flags": h.flags, "gso_type": h.gso_type, "hdr_len": h.hdr_len,
             "gso_size": h.gso_size, "csum_start": h.csum_start, "csum_offset": h.csum_offset}
        d.update(kw)
        return vnet.HDR.pack(*d.values())

    def patched(at: int, val: bytes) -> bytes:
        g = bytearray(f)
        g[at : at + len(val)] = val
        return bytes(g)

    assert reason(hdr[:9], f) == "bad_vnet"
    assert reason(with_hdr(gso_type=vnet.GSO_UDP), f) == "bad_gso_type"
    assert reason(with_hdr(gso_type=vnet.GSO_ECN), f) == "bad_gso_type"
    assert reason(with_hdr(gso_type=vnet.GSO_TCPV6), f) == "gso_type_mismatch"
    assert reason(hdr, f[:10]) == "short_ethernet"
    assert reason(hdr, patched(12, b"\x08\x06")) == "gso_type_mismatch"  # ARP
    assert reason(hdr, f[:30]) == "short_ipv4"
    assert reason(hdr, patched(14, b"\x44")) == "bad_ipv4_header"
    assert reason(hdr, patched(14, b"\x65")) == "bad_ipv4_header"
    assert reason(hdr, patched(20, b"\x20\x00")) == "ipv4_fragment"
    assert reason(hdr, patched(23, b"\x11")) == "not_tcp"
    assert reason(with_hdr(csum_start=38), f) == "bad_csum_start"
    assert reason(hdr, patched(16, b"\xff\xff")) == "bad_ipv4_length"
    assert reason(hdr, patched(16, b"\x00\x20")) == "bad_ipv4_length"
    assert reason(with_hdr(csum_offset=6), f) == "bad_csum_offset"
    assert reason(hdr, patched(34 + 12, b"\x40")) == "bad_tcp_header"
    g = bytearray(patched(34 + 12, b"\xf0"))  # a 60-byte TCP header ...
    g[16:18] = (20 + 40).to_bytes(2, "big")  # ... in a 40-byte TCP segment
    assert reason(hdr, g) == "short_tcp"
    assert reason(with_hdr(gso_size=0), f) == "bad_gso_size"
    assert reason(with_hdr(gso_size=11), f) == "too_many_segments"

    hdr6, frame6, _ = super_frame(True, None, "PA", [], bytes(3000), 1, 1,
                                  [IPv6ExtHdrHopByHop], 1000, 0)
    h6 = vnet.parse(hdr6)
    f6 = bytearray(frame6)
    assert vnet.to_frames(hdr6, frame6)
    assert reason(hdr6, f6[:40]) == "short_ipv6"
    g = bytearray(f6)
    g[14] = 0x45
    assert reason(hdr6, g) == "bad_ipv6_header"
    g = bytearray(f6)
    g[18:20] = b"\x00\x00"
    assert reason(hdr6, g) == "bad_ipv6_length"
    g[18:20] = b"\xff\xff"
    assert reason(hdr6, g) == "bad_ipv6_length"
    g = bytearray(f6)
    g[54] = 17  # hop-by-hop's next header: UDP
    assert reason(hdr6, g) == "not_tcp"
    bad_start = vnet.HDR.pack(h6.flags, h6.gso_type, h6.hdr_len, h6.gso_size, 54, 16)
    assert reason(bad_start, f6) == "bad_csum_start"
    g = bytearray(f6)
    g[18:20] = (8 + 10).to_bytes(2, "big")  # TCP header cut short by the payload length
    assert reason(hdr6, g) == "bad_ipv6_length"


# ------------------------------------------------------------------ robustness

def _only_vnet_errors(hdr: bytes, frame: bytes) -> None:
    try:
        h = vnet.parse(hdr)
    except VnetError:
        return
    r = vnet.check(h, len(frame))
    assert r is None or (isinstance(r, str) and r)
    for f in (frame, memoryview(frame)):
        try:
            out = vnet.to_frames(hdr, f)
        except VnetError as e:
            assert e.reason and isinstance(e.reason, str)
        else:
            assert out and all(type(x) is bytes for x in out)


@settings(max_examples=300, deadline=None)
@given(hdr=st.binary(max_size=12), frame=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_vnet_error(hdr: bytes, frame: bytes) -> None:
    _only_vnet_errors(hdr, frame)


@settings(max_examples=200, deadline=None)
@given(v6=st.booleans(), vlan=st.none() | st.integers(1, 4094),
       hdr_edits=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 255)), max_size=3),
       edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 2000))
def test_mangled_super_frames_only_raise_vnet_error(v6: bool, vlan: int | None,
                                                    hdr_edits: list[tuple[int, int]],
                                                    edits: list[tuple[int, int]],
                                                    cut: int) -> None:
    hdr, frame, _ = super_frame(v6, vlan, "PA", TS_OPTS, bytes(1500), 5, 5,
                                [IPv6ExtHdrDestOpt] if v6 else [], 200, 0)
    h, f = bytearray(hdr), bytearray(frame[: len(frame) - cut])
    for at, val in hdr_edits:
        h[at] = val
    for at, val in edits:
        if at < len(f):
            f[at] = val
    _only_vnet_errors(bytes(h), bytes(f))
