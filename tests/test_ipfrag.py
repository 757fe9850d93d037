"""Property tests for the oversize-frame codecs: IPv4 fragmentation and ICMP too-big replies.

Packets are built and checked with scapy (tests only): fragments fit, carry
valid header checksums, copy only the options marked for copying and
reassemble (our own reassembly and scapy's ``defragment``) to the original;
replies are well-formed ICMP / ICMPv6 with valid checksums, addressed back to
the sender; exclusions hold; arbitrary bytes never raise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Security,
    IPOption_Stream_Id,
    defragment,
)
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    in6_chksum,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from sleeve.proto.icmp import too_big_reply
from sleeve.proto.ipfrag import fragment_ipv4

UNICAST_MAC = st.binary(min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in bytes([b[0] & 0xFE]) + b[1:]))
IP4 = st.tuples(st.integers(1, 223).filter(lambda x: x != 127),
                *[st.integers(0, 255)] * 3).map(lambda t: ".".join(map(str, t)))
IP6 = st.binary(min_size=15, max_size=15).map(
    lambda b: str(ipaddress.IPv6Address(b"\xfd" + b)))
VLAN = st.none() | st.integers(1, 4094)
OPTION: st.SearchStrategy[Callable[[], Packet]] = st.sampled_from([
    IPOption_NOP,
    lambda: IPOption_RR(routers=["192.0.2.1"]),  # not copied
    IPOption_Security,  # copied
    IPOption_Router_Alert,  # copied
    lambda: IPOption_LSRR(routers=["192.0.2.7", "192.0.2.8"]),  # copied
    lambda: IPOption_Stream_Id(security=3),  # copied
])
OPTIONS = st.lists(OPTION, max_size=6).map(lambda fs: [f() for f in fs]).filter(
    lambda os: sum(len(bytes(o)) for o in os) <= 40)


def eth(dst: str, src: str, vlan: int | None) -> Packet:
    frame = Ether(dst=dst, src=src)
    return frame / Dot1Q(vlan=vlan) if vlan is not None else frame


def tags(vlan: int | None) -> int:
    return 0 if vlan is None else 4


def ip_layer(frame: bytes) -> bytes:
    """The IPv4 packet in a frame, exactly as on the wire."""
    pkt = Ether(frame)
    return bytes(pkt[IP])


# ------------------------------------------------------------------ fragmentation

@settings(max_examples=150, deadline=None)
@given(dst=UNICAST_MAC, src=UNICAST_MAC, vlan=VLAN, sip=IP4, dip=IP4, opts=OPTIONS,
       size=st.integers(0, 4000), mtu=st.integers(68, 1600), ident=st.integers(0, 0xFFFF),
       prior=st.sampled_from([(False, 0), (True, 0), (True, 100), (False, 37)]))
def test_fragments_fit_and_reassemble(dst: str, src: str, vlan: int | None, sip: str, dip: str,
                                      opts: list[Packet], size: int, mtu: int, ident: int,
                                      prior: tuple[bool, int]) -> None:
    more, offset = prior  # fragmenting a fragment must keep its place in the datagram
    payload = bytes((i * 7) & 0xFF for i in range(size))
    ip = IP(src=sip, dst=dip, id=ident, ttl=9, proto=17, options=opts,
            flags="MF" if more else 0, frag=offset) / Raw(payload)
    frame = bytes(eth(dst, src, vlan) / ip)
    orig = IP(bytes(ip))
    hlen = orig.ihl * 4
    l2len = 14 + tags(vlan)
    limit = mtu - tags(vlan)

    frags = fragment_ipv4(frame, mtu)
    if limit - hlen < 8 and len(orig) > limit:
        assert frags is None
        return
    assert frags is not None
    if len(orig) <= limit:
        assert frags == [frame]
        return
    copied = b"".join(bytes(o) for o in orig.options if o.copy_flag)
    copied += bytes(-len(copied) % 4)
    pos = 0
    for i, f in enumerate(frags):
        assert f[:l2len] == frame[:l2len]
        raw_ip = f[l2len:]
        assert len(raw_ip) <= limit
        p = IP(raw_ip)
        h = p.ihl * 4
        assert scapy_checksum(raw_ip[:h]) == 0, "header checksum"
        assert (p.id, p.ttl, p.proto, p.src, p.dst) == (ident, 9, 17, sip, dip)
        assert p.len == len(raw_ip)
        assert raw_ip[20:h] == (bytes(ip)[20:hlen] if i == 0 else copied)
        last = i == len(frags) - 1
        assert p.flags.DF == 0
        mf = bool(p.flags.MF)
        assert mf == (more or not last)
        assert p.frag * 8 == offset * 8 + pos
        chunk = raw_ip[h:]
        if not last:
            assert len(chunk) % 8 == 0 and chunk
        assert chunk == payload[pos : pos + len(chunk)]
        pos += len(chunk)
    assert pos == len(payload)
    if not more and offset == 0:
        whole = defragment([IP(f[l2len:]) for f in frags])  # type: ignore[no-untyped-call]
        assert len(whole) == 1
        assert bytes(whole[0])[hlen:] == bytes(orig)[hlen:]
        assert bytes(whole[0][IP].payload) == payload


def test_fragment_refusals() -> None:
    base = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    big = IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(bytes(2000))
    assert fragment_ipv4(bytes(base / big), 67) is None  # below the IPv4 minimum MTU
    df = IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / UDP() / Raw(bytes(2000))
    assert fragment_ipv4(bytes(base / df), 1400) is None
    v6 = IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(bytes(2000))
    assert fragment_ipv4(bytes(base / v6), 1400) is None
    bad = bytearray(bytes(base / big))
    bad[14 + 8] ^= 1  # TTL changed under the checksum
    assert fragment_ipv4(bytes(bad), 1400) is None
    cut = bytes(base / big)[:-1]  # total length beyond the frame
    assert fragment_ipv4(cut, 1400) is None
    # a frame that fits is returned as is (Ethernet padding stripped)
    small = bytes(base / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / UDP())
    assert fragment_ipv4(small + bytes(20), 1400) == [small]


def test_a_60_byte_header_still_fragments_at_mtu_68() -> None:
    opts = [IPOption_Security()] * 3 + [IPOption_NOP()] * 7  # 40 bytes of options
    frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=opts) / Raw(bytes(100)))
    frags = fragment_ipv4(frame, 68)
    assert frags is not None
    assert all(len(f) - 14 <= 68 for f in frags)
    data = [len(f) - 14 - IP(f[14:]).ihl * 4 for f in frags]
    assert data[0] == 8  # 60-byte header + 8 bytes: RFC 791's guarantee
    assert sum(data) == 100


# ------------------------------------------------------------------ ICMP too big

L4 = st.sampled_from([
    lambda: TCP(sport=443, dport=50000, flags="A", seq=12345),
    lambda: UDP(sport=5353, dport=9),
    lambda: ICMP(type=8, id=1, seq=2),  # an echo request is a query: it may get an error
])


@settings(max_examples=120, deadline=None)
@given(dst=UNICAST_MAC, src=UNICAST_MAC, vlan=VLAN, sip=IP4, dip=IP4, opts=OPTIONS, l4=L4,
       size=st.integers(100, 3000), data=st.data())
def test_icmpv4_frag_needed(dst: str, src: str, vlan: int | None, sip: str, dip: str,
                            opts: list[Packet], l4: Callable[[], Packet], size: int,
                            data: st.DataObject) -> None:
    ip = IP(src=sip, dst=dip, flags="DF", options=opts) / l4() / Raw(bytes(size))
    frame = bytes(eth(dst, src, vlan) / ip)
    orig = bytes(ip)
    limit_max = len(orig) - 1
    mtu = data.draw(st.integers(68 + tags(vlan), limit_max + tags(vlan)))
    reply = too_big_reply(frame, mtu)
    assert reply is not None
    r = Ether(reply)
    assert (r.dst, r.src) == (src, dst)
    if vlan is not None:
        assert r[Dot1Q].vlan == vlan
    rip = r[IP]
    raw_ip = bytes(rip)
    assert scapy_checksum(raw_ip[:20]) == 0, "IP header checksum"
    assert (rip.src, rip.dst, rip.proto, rip.ttl, rip.len) == (dip, sip, 1, 64, len(raw_ip))
    icmp = raw_ip[20:]
    assert scapy_checksum(icmp) == 0, "ICMP checksum"
    assert (rip[ICMP].type, rip[ICMP].code) == (3, 4)
    assert rip[ICMP].nexthopmtu == mtu - tags(vlan)
    hlen = IP(orig).ihl * 4
    assert icmp[8:] == orig[: hlen + 8]  # RFC 792: header + 64 bits of data


@settings(max_examples=80, deadline=None)
@given(dst=UNICAST_MAC, src=UNICAST_MAC, vlan=VLAN, sip=IP6, dip=IP6,
       ext=st.sampled_from([[], [IPv6ExtHdrHopByHop()], [IPv6ExtHdrDestOpt()],
                            [IPv6ExtHdrFragment(offset=0, m=1, id=5)]]),
       l4=st.sampled_from([lambda: UDP(sport=1, dport=2),
                           lambda: ICMPv6EchoRequest(id=3)]),
       size=st.integers(1300, 3000), data=st.data())
def test_icmpv6_packet_too_big(dst: str, src: str, vlan: int | None, sip: str, dip: str,
                               ext: list[Packet], l4: Callable[[], Packet], size: int,
                               data: st.DataObject) -> None:
    ip: Packet = IPv6(src=sip, dst=dip, hlim=3)
    for h in ext:
        ip = ip / h
    ip = ip / l4() / Raw(bytes(size))
    frame = bytes(eth(dst, src, vlan) / ip)
    orig = bytes(ip)
    mtu = data.draw(st.integers(1280 + tags(vlan), len(orig) - 1 + tags(vlan)))
    reply = too_big_reply(frame, mtu)
    assert reply is not None
    r = Ether(reply)
    assert (r.dst, r.src) == (src, dst)
    rip = r[IPv6]
    assert (rip.src, rip.dst, rip.nh, rip.hlim) == (dip, sip, 58, 64)
    assert len(bytes(rip)) <= 1280  # RFC 4443 2.4(c)
    ptb = rip[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, mtu - tags(vlan))
    body = bytes(rip)[40:]
    assert rip.plen == len(body)
    pseudo_sum = in6_chksum(58, ptb, body)  # type: ignore[no-untyped-call]
    assert pseudo_sum == 0, "ICMPv6 checksum with pseudo header"
    assert body[8:] == orig[: 1280 - 48]


def _v4(**kw: Any) -> Packet:
    ip: dict[str, Any] = {"src": "10.0.0.1", "dst": "10.0.0.2", "flags": "DF"}
    ip.update(kw)
    return IP(**ip)


ETH = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
PAD = Raw(bytes(2000))


@pytest.mark.parametrize(("frame", "mtu"), [
    (Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / _v4() / UDP() / PAD, 1400),
    (Ether(dst="01:00:5e:00:00:01", src="02:00:00:00:00:01") / _v4() / UDP() / PAD, 1400),
    (Ether(dst="02:00:00:00:00:02", src="03:00:00:00:00:01") / _v4() / UDP() / PAD, 1400),
    (ETH / _v4(dst="224.0.0.251") / UDP() / PAD, 1400),
    (ETH / _v4(dst="255.255.255.255") / UDP() / PAD, 1400),
    (ETH / _v4(src="0.0.0.0") / UDP() / PAD, 1400),
    (ETH / _v4(src="127.0.0.1") / UDP() / PAD, 1400),
    (ETH / _v4() / ICMP(type=3, code=4) / PAD, 1400),  # no ICMP about ICMP errors
    (ETH / _v4() / ICMP(type=11) / PAD, 1400),
    (ETH / _v4() / ICMP(type=5) / PAD, 1400),
    (ETH / _v4(frag=100) / PAD, 1400),  # not the first fragment
    (ETH / _v4(flags=0) / UDP() / PAD, 1400),  # no DF: fragment it instead
    (ETH / _v4() / UDP() / PAD, 2100),  # fits
    (ETH / _v4() / UDP() / PAD, 67),  # an MTU no IPv4 host may be told
    (ETH / IPv6(src="fd00::1", dst="ff02::1") / UDP() / PAD, 1400),
    (ETH / IPv6(src="::", dst="fd00::2") / UDP() / PAD, 1400),
    (ETH / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach() / PAD, 1400),
    (ETH / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6PacketTooBig() / PAD, 1400),
    (ETH / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=10) / PAD, 1400),
    (ETH / IPv6(src="fd00::1", dst="fd00::2") / UDP() / PAD, 1200),  # below the IPv6 minimum
    (ETH / IPv6(src="fd00::1", dst="fd00::2") / UDP() / PAD, 2100),  # fits
    (ETH / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / ICMPv6DestUnreach()
     / PAD, 1400),  # the error hides behind an extension header
    (Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x0806) / PAD, 1400),
])
def test_no_reply(frame: Packet, mtu: int) -> None:
    assert too_big_reply(bytes(frame), mtu) is None


def test_bad_checksum_and_truncation_get_no_reply() -> None:
    good = bytes(ETH / _v4() / UDP() / PAD)
    assert too_big_reply(good, 1400) is not None
    bad = bytearray(good)
    bad[14 + 8] ^= 1
    assert too_big_reply(bytes(bad), 1400) is None
    assert too_big_reply(good[:-1], 1400) is None
    v6 = bytes(ETH / IPv6(src="fd00::1", dst="fd00::2") / UDP() / PAD)
    assert too_big_reply(v6, 1400) is not None
    assert too_big_reply(v6[:-1], 1400) is None


# ------------------------------------------------------------------ robustness

SEEDS = [
    bytes(ETH / _v4() / UDP() / PAD),
    bytes(ETH / _v4(flags=0, options=[IPOption_Security(), IPOption_NOP()]) / UDP() / PAD),
    bytes(ETH / Dot1Q(vlan=5) / Dot1Q(vlan=6) / _v4() / TCP() / PAD),
    bytes(ETH / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop()
          / IPv6ExtHdrFragment() / ICMPv6EchoRequest() / PAD),
]


def _check_no_raise(frame: bytes, mtu: int) -> None:
    r = too_big_reply(frame, mtu)
    assert r is None or isinstance(r, bytes)
    f = fragment_ipv4(frame, mtu)
    assert f is None or all(isinstance(x, bytes) for x in f)


@settings(max_examples=500, deadline=None)
@given(frame=st.binary(max_size=120), mtu=st.integers(-5, 70000))
def test_random_bytes_never_raise(frame: bytes, mtu: int) -> None:
    _check_no_raise(frame, mtu)
    # the same after a plausible Ethernet/IP prefix, so the parsers go deeper
    for prefix in (bytes(12) + b"\x08\x00\x45", bytes(12) + b"\x86\xdd\x60",
                   bytes(12) + b"\x81\x00\x00\x05\x08\x00\x4f"):
        _check_no_raise(prefix + frame, mtu)


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 2100),
       flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
       mtu=st.integers(0, 2100))
def test_mutated_frames_never_raise(seed: bytes, cut: int, flips: list[tuple[int, int]],
                                    mtu: int) -> None:
    b = bytearray(seed[:cut])
    for i, v in flips:
        if i < len(b):
            b[i] = v
    _check_no_raise(bytes(b), mtu)
