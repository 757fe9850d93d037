"""Runs of small UDP frames joined into one USO super-frame (sleeve.forward.udpruns),
checked against scapy: the IPv4 header (length, checksum), the UDP length and the
pseudo-header sum a NEEDS_CSUM frame carries, the payloads in order; what may not join."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import checksum

from sleeve.capture.memory import MemoryPort
from sleeve.forward import udpruns
from sleeve.node import Node
from sleeve.proto import vnet
from tests.test_node_inproc import MAC_A, MAC_B, wait_for
from tests.test_superframe import pair

NEEDS = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 34, 6)


def _fold_pseudo(src: str, dst: str, ulen: int) -> int:
    """What a sender's kernel leaves in the check field of a CHECKSUM_PARTIAL datagram:
    the pseudo-header sum, folded, not complemented."""
    words = struct.unpack("!4H", socket.inet_aton(src) + socket.inet_aton(dst))
    s = sum(words) + 17 + ulen
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def frame(i: int, size: int = 64, sport: int = 4000, ttl: int = 64, tos: int = 0,
          src: str = "198.19.0.1", flags: str = "DF") -> bytes:
    payload = struct.pack("!I", i) + bytes(size - 4)
    pkt = (Ether(src="02:00:00:00:01:01", dst="02:00:00:00:00:02")
           / IP(src=src, dst="198.19.0.2", id=100 + i, ttl=ttl, tos=tos, flags=flags)
           / UDP(sport=sport, dport=5201, chksum=_fold_pseudo(src, "198.19.0.2", 8 + size))
           / payload)
    return bytes(pkt)


def test_join_gives_what_the_kernel_expects() -> None:
    frames = [frame(i) for i in range(5)] + [frame(5, size=20)]  # the last one shorter
    hdr, sup = udpruns.join(frames)
    flags, gso, hdr_len, gso_size, cstart, coff = vnet.HDR.unpack(hdr)
    assert (flags, gso, hdr_len, gso_size, cstart, coff) == (
        vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, 42, 64, 34, 6)
    assert vnet.check_raw(hdr, len(sup)) == "bad_gso_type"  # made here, never taken from peers
    p = Ether(sup)
    assert p[IP].len == 20 + 8 + 5 * 64 + 20 and p[IP].id == 100
    assert checksum(bytes(p[IP])[:20]) == 0  # a valid header checksum
    assert p[UDP].len == 8 + 5 * 64 + 20
    assert p[UDP].chksum == _fold_pseudo("198.19.0.1", "198.19.0.2", p[UDP].len)
    body = bytes(p[UDP].payload)
    assert [struct.unpack("!I", body[k:k + 4])[0] for k in range(0, len(body), 64)] == list(
        range(6))
    assert body == b"".join(f[42:] for f in frames)


def test_runs_of_one_flow_only() -> None:
    runs = udpruns.UdpRuns()
    f0 = frame(0)
    k0 = udpruns.run_key(NEEDS, f0)
    assert k0 is not None and runs.add(k0, NEEDS, f0)
    f1 = frame(1)
    k1 = udpruns.run_key(NEEDS, f1)
    assert k1 == k0 and runs.add(k1, NEEDS, f1)  # only the IP ID differs
    for other in (frame(2, sport=4001), frame(2, ttl=3), frame(2, tos=4),
                  frame(2, src="198.19.0.9"), frame(2, size=65)):
        k = udpruns.run_key(NEEDS, other)
        assert k is not None and not runs.add(k, NEEDS, other)
    short = frame(2, size=10)
    assert runs.add(udpruns.run_key(NEEDS, short) or b"", NEEDS, short)  # shorter: the end
    f3 = frame(3)
    assert not runs.add(udpruns.run_key(NEEDS, f3) or b"", NEEDS, f3)  # closed by the short
    assert runs.take() == (NEEDS, [f0, f1, short]) and not runs
    assert runs.take() is None


def test_bounded_run() -> None:
    runs = udpruns.UdpRuns()
    k = udpruns.run_key(NEEDS, frame(0)) or b""
    taken = sum(runs.add(k, NEEDS, frame(i)) for i in range(udpruns.MAX_SEGS + 5))
    assert taken == udpruns.MAX_SEGS
    big = frame(0, size=1400)
    kb = udpruns.run_key(NEEDS, big) or b""
    runs2 = udpruns.UdpRuns()
    n = sum(runs2.add(kb, NEEDS, big) for _ in range(60))
    assert n * 1400 <= udpruns.MAX_PAYLOAD < (n + 1) * 1400


def test_what_never_joins() -> None:
    good = frame(0)
    assert udpruns.run_key(vnet.ZERO_HDR, good) is None  # checksum already done
    gso = vnet.HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1448, 34, 6)
    assert udpruns.run_key(gso, good) is None
    tcp_csum = vnet.HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 34, 16)
    assert udpruns.run_key(tcp_csum, good) is None
    frag = bytes(Ether() / IP(dst="198.19.0.2", flags="MF") / UDP() / bytes(64))
    assert udpruns.run_key(NEEDS, frag) is None
    opts = bytes(Ether() / IP(dst="198.19.0.2", options=b"\x01\x01\x01\x00") / UDP()
                 / bytes(64))
    assert udpruns.run_key(NEEDS, opts) is None
    padded = good + bytes(4)  # lengths that disagree with the frame
    assert udpruns.run_key(NEEDS, padded) is None
    assert udpruns.run_key(NEEDS, good[:42]) is None  # no payload


# ---------------------------------------------------------------- through two nodes




def _vnet_udp(i: int, size: int = 64) -> bytes:
    """What a TAP with IFF_VNET_HDR hands the router for a locally sent small datagram."""
    f = frame(i, size)
    return NEEDS + MAC_B + MAC_A + f[12:]


def _refuse_uso(port: MemoryPort) -> None:
    """Make ``port`` act like a TAP whose kernel refuses GSO_UDP_L4 writes (EINVAL, which
    the TAP port counts as dropped)."""
    real = port.write_vnet

    def write_vnet(hdr: bytes | memoryview, frame: bytes | memoryview) -> None:
        if hdr[1] == vnet.GSO_UDP_L4:
            port.tx_dropped += 1
            return
        real(hdr, frame)

    port.write_vnet = write_vnet  # type: ignore[method-assign]


def _split(delivered: list[bytes]) -> list[bytes]:
    """The datagram payloads the receiving kernel would get, super-frames cut up."""
    out = []
    for d in delivered:
        hdr, f = d[:vnet.HDR_LEN], d[vnet.HDR_LEN:]
        if hdr[1] == vnet.GSO_UDP_L4:
            seg = vnet.HDR.unpack(hdr)[3]
            out += [f[k:k + seg] for k in range(42, len(f), seg)]
        else:
            out.append(f[42:])
    return out


@pytest.mark.parametrize("join", [True, False], ids=["joined", "one-by-one"])
def test_small_udp_frames_written_as_one_super_frame(join: bool) -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        b.ingress.join_udp = join
        sent = [_vnet_udp(i) for i in range(20)]
        for f in sent:
            pa.inject(f)
        await wait_for(lambda: sum(len(_split([d])) for d in pb.delivered) >= 20)
        got = list(pb.delivered)
        assert _split(got) == [f[vnet.HDR_LEN + 42:] for f in sent]  # all, in order
        joined = [d for d in got if d[1] == vnet.GSO_UDP_L4]
        if join:
            assert joined and b.stats["rx_udp_joined"] == 20 - (len(got) - len(joined))
            assert b.stats["rx_udp_joined_writes"] == len(joined) < 20
        else:
            assert not joined and len(got) == 20 and b.stats["rx_udp_joined"] == 0

    asyncio.run(pair(body, True, True))


def test_a_kernel_refusing_the_join_gets_every_frame_one_by_one() -> None:
    async def body(a: Node, pa: MemoryPort, b: Node, pb: MemoryPort) -> None:
        _refuse_uso(pb)
        sent = [_vnet_udp(i) for i in range(20)]
        for f in sent:
            pa.inject(f)
        await wait_for(lambda: len(pb.delivered) >= 20)
        assert _split(list(pb.delivered)) == [f[vnet.HDR_LEN + 42:] for f in sent]
        assert not b.ingress.join_udp and pb.tx_dropped == 0

    asyncio.run(pair(body, True, True))
