"""MSS clamping (proto.mss) checked against scapy: checksums, values, what is left alone."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from sleeve.capture.memory import MemoryPort
from sleeve.node import Node
from sleeve.proto import mss
from sleeve.proto.pmtu import overlay_mtu
from tests.test_node_inproc import BCAST, established, frame, pair, wait_for

MACS: dict[str, Any] = {"dst": "02:00:00:00:00:02", "src": "02:00:00:00:00:01"}

options = st.lists(st.sampled_from([("NOP", None), ("SAckOK", b""), ("WScale", 7),
                                     ("Timestamp", (1, 0))]), max_size=3)  # <= 40 bytes


def syn_frame(v6: bool, old_mss: int, before: list[Any], flags: str = "S",
              ip_opts: bool = False, payload: bytes = b"") -> bytes:
    tcp = TCP(sport=40000, dport=80, flags=flags,
              options=[*before, ("MSS", old_mss), ("NOP", None)]) / Raw(payload)
    if v6:
        return bytes(Ether(**MACS) / IPv6(src="2001:db8::1", dst="2001:db8::2") / tcp)
    ip = IP(src="198.19.0.1", dst="198.19.0.2",
            options=[b"\x01\x01\x01\x00"] if ip_opts else [])
    return bytes(Ether(**MACS) / ip / tcp)


def tcp_of(frame: bytes) -> Any:
    return Ether(frame)[TCP]


def checksum_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    got = pkt[TCP].chksum
    del pkt[TCP].chksum
    return int(Ether(bytes(pkt))[TCP].chksum) == got


def mss_of(frame: bytes) -> int:
    return int(dict(tcp_of(frame).options)["MSS"])


@settings(max_examples=300, deadline=None)
@given(v6=st.booleans(), old=st.integers(1, 65535), mtu=st.integers(576, 9000),
       before=options, synack=st.booleans(), ip_opts=st.booleans(),
       payload=st.binary(max_size=3))
def test_clamp_lowers_mss_and_keeps_the_checksum_valid(
        v6: bool, old: int, mtu: int, before: list[Any], synack: bool, ip_opts: bool,
        payload: bytes) -> None:
    f = syn_frame(v6, old, before, "SA" if synack else "S", ip_opts and not v6, payload)
    assert mss.maybe_syn(f)  # the pre-filter never misses a SYN it could clamp
    out = mss.clamp(f, mtu)
    want = max(mss.MIN_MSS6 if v6 else mss.MIN_MSS, mtu - (60 if v6 else 40))
    if old <= want:
        assert out is None
        return
    assert out is not None and len(out) == len(f)
    assert mss_of(out) == want
    assert checksum_ok(out)
    # nothing else changed: the option's two bytes and the checksum's two
    diff = [i for i in range(len(f)) if f[i] != out[i]]
    assert len(diff) <= 4


def test_partial_checksum_frames_are_left_for_the_receiver_to_sum() -> None:
    f = syn_frame(False, 1460, [])
    out = mss.clamp(f, 700, fix_csum=False)
    assert out is not None and mss_of(out) == 660
    assert tcp_of(out).chksum == tcp_of(f).chksum


@given(st.binary(min_size=0, max_size=120), st.integers(0, 10000))
def test_garbage_never_raises(data: bytes, mtu: int) -> None:
    mss.maybe_syn(data)
    mss.clamp(data, mtu)


@given(st.binary(min_size=58, max_size=90), st.integers(0, 100))
def test_truncated_syn_options_never_raise(tail: bytes, cut: int) -> None:
    f = syn_frame(False, 1460, [("NOP", None), ("WScale", 7)])
    mss.clamp(f[:40] + tail, 700)
    mss.clamp(f[: len(f) - cut % len(f)], 700)


def test_what_is_left_alone() -> None:
    ack = bytes(Ether(**MACS) / IP(src="198.19.0.1", dst="198.19.0.2")
                / TCP(flags="A", options=[("MSS", 1460)]) / Raw(b"x" * 100))
    assert not mss.maybe_syn(ack) and mss.clamp(ack, 700) is None
    vlan = bytes(Ether(**MACS) / Dot1Q(vlan=5) / IP() / TCP(flags="S", options=[("MSS", 1460)]))
    assert mss.clamp(vlan, 700) is None
    ext = bytes(Ether(**MACS) / IPv6() / IPv6ExtHdrHopByHop()
                / TCP(flags="S", options=[("MSS", 1440)]))
    assert mss.clamp(ext, 700) is None
    frag = bytearray(syn_frame(False, 1460, []))
    frag[21] = 8  # a later fragment: what looks like TCP is payload
    assert mss.clamp(bytes(frag), 700) is None
    no_mss = bytes(Ether(**MACS) / IP() / TCP(flags="S", options=[("WScale", 7)] * 2)
                   / Raw(b"\x00" * 8))
    assert mss.clamp(no_mss, 700) is None
    udp_like = bytearray(syn_frame(False, 1460, []))
    udp_like[23] = 17
    assert mss.clamp(bytes(udp_like), 700) is None


def test_clamp_values_follow_the_link_overhead() -> None:
    # a 1472-byte datagram (1500-byte IPv4 underlay) carries 1422-byte IP packets direct
    assert overlay_mtu(1472) == 1472 - 36 - 14
    assert overlay_mtu(1472, peer_ids=2) == overlay_mtu(1472) - 16
    f = syn_frame(False, 1460, [])
    out = mss.clamp(f, overlay_mtu(672))
    assert out is not None and mss_of(out) == 672 - 50 - 40


def test_two_nodes_clamp_syn_and_synack_on_the_way_through() -> None:
    """Egress clamps what leaves for a link, ingress what arrives: both directions."""
    mac_a = bytes.fromhex(MACS["src"].replace(":", ""))
    mac_b = bytes.fromhex(MACS["dst"].replace(":", ""))

    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        # both searches complete, not just known: each end clamps to its own link's current
        # MTU, and a search still climbing on one side clamps below the other's
        await wait_for(lambda: established(a) and established(b)
                       and a.links[b.id].pmtu.status()["pmtu_state"] == "complete"
                       and b.links[a.id].pmtu.status()["pmtu_state"] == "complete")
        pa.inject(frame(BCAST, mac_a, b"arp"))  # b learns a's MAC, a learns b's below
        pb.inject(frame(BCAST, mac_b, b"arp"))
        await wait_for(lambda: len(pa.delivered) == 1 and len(pb.delivered) == 1)
        want = overlay_mtu(a.links[b.id].pmtu.current) - 40
        assert want > 1460  # loopback: jumbo-sized datagrams (the route MTU, capped)
        syn = syn_frame(False, 65000, [("SAckOK", b"")])
        pa.inject(syn)
        await wait_for(lambda: len(pb.delivered) == 2)
        assert mss_of(bytes(pb.delivered[1])) == want and checksum_ok(bytes(pb.delivered[1]))
        assert a.links[b.id].stats["mss_clamped"] == 1  # egress did it, ingress had nothing
        synack = bytes(Ether(dst=MACS["src"], src=MACS["dst"])
                       / IPv6(src="2001:db8::2", dst="2001:db8::1")
                       / TCP(flags="SA", options=[("MSS", 65000)]))
        pb.inject(synack)
        await wait_for(lambda: len(pa.delivered) == 2)
        want6 = overlay_mtu(b.links[a.id].pmtu.current) - 60
        assert mss_of(bytes(pa.delivered[1])) == want6
        assert checksum_ok(bytes(pa.delivered[1]))
        # --no-clamp-mss on b's side only: a's ingress still clamps what b sends it
        b.egress.clamp_mss = False
        pb.inject(synack)
        await wait_for(lambda: len(pa.delivered) == 3)
        assert a.links[b.id].stats["mss_clamped"] == 2
        # and with both off, nothing changes
        a.ingress.clamp_mss = False
        pb.inject(synack)
        await wait_for(lambda: len(pa.delivered) == 4)
        assert bytes(pa.delivered[3]) == synack

    asyncio.run(pair(body))
