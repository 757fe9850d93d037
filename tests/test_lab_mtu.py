"""Small, black-holed and lossy underlay paths, on real kernels.

Topology: a --- r --- b, r a plain IP router. Per scenario the r-b segment gets a
small MTU (r answers with ICMP "fragmentation needed"), a firewall that silently
drops UDP datagrams above 700 bytes (a black hole: no ICMP), or 5% random loss.
Over each: ping -s 8000, a 20 MB IPv4 TCP transfer and an IPv6 transfer arrive
intact, and the link's probed path MTU is the real one. Where the overlay path is
smaller than the TAP, a DF ping gets the router's ICMP frag-needed / packet-too-big
(captured and checked with scapy) and the sender's route cache adopts its MTU.
Needs root; never skips.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, IPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6, IPv6
from scapy.layers.l2 import Ether

from sleeve.lab import Lab
from sleeve.lab.netns import Host
from sleeve.lab.probes import IcmpFrames
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer
from sleeve.proto.inet import IPV4_MIN_MTU, IPV6_MIN_MTU
from sleeve.proto.pmtu import overlay_mtu

pytestmark = pytest.mark.lab

A_UL, RA_UL, RB_UL, B_UL = "198.18.5.1", "198.18.5.254", "198.18.6.254", "198.18.6.1"
A_OV, B_OV = "198.19.5.1", "198.19.5.2"
A_OV6, B_OV6 = "2001:2:0:1905::1", "2001:2:0:1905::2"

SCENARIOS = {
    # name: (r-b MTU, black hole above this IP length, loss %, expected datagram PMTU)
    "mtu1400": (1400, None, 0, 1400 - 28),  # overlay 1322: ICMP for IPv4 and IPv6 alike
    "mtu1280": (1280, None, 0, 1280 - 28),
    "mtu576": (576, None, 0, 576 - 28),
    "blackhole700": (1500, 700, 0, 700 - 28),
    "loss5": (1500, None, 5, 1500 - 28),
}


def too_big(a: Host, v6: bool, overlay: int) -> None:
    """A DF ping bigger than the overlay path: the router's ICMP, checked, and adopted.

    The ICMP frag-needed (IPv4) or packet-too-big (IPv6) is captured on a's TAP as it
    arrives from the router, parsed with scapy (type, code, MTU, checksum, the quoted
    packet is ours), and a's route cache must then show that MTU for the destination.
    """
    dst = B_OV6 if v6 else B_OV
    # a clean route cache: what the kernel learnt earlier in the test (e.g. IPv4's 552
    # floor) would stop a DF ping above it from leaving at all
    a.run("ip", "-6" if v6 else "-4", "route", "flush", "cache")
    cap = IcmpFrames(a, "sleeve0", 4.0)
    # a packet over the path, under the TAP's 1406 and under anything still cached
    cached = re.search(r"mtu (\d+)", a.run("ip", "-6" if v6 else "-4", "route", "get", dst).stdout)
    packet = min(overlay + 30, int(cached.group(1)) if cached else 1406)
    size = packet - (48 if v6 else 28)
    a.run("ping", "-6" if v6 else "-4", "-M", "do", "-c", "2", "-i", "0.3", "-W", "1",
          "-s", str(size), dst, check=False, timeout=15)
    frames = [Ether(f) for f in cap.frames()]
    if v6:
        layer, mtu_field, sum_field, ip, quoted, me = (
            ICMPv6PacketTooBig, "mtu", "cksum", IPv6, IPerror6, A_OV6)
    else:
        layer, mtu_field, sum_field, ip, quoted, me = (
            ICMP, "nexthopmtu", "chksum", IP, IPerror, A_OV)
    got = [f for f in frames if layer in f and (v6 or (f[ICMP].type, f[ICMP].code) == (3, 4))]
    assert got, [f.summary() for f in frames]
    icmp = got[0][layer]
    assert getattr(icmp, mtu_field) == overlay
    assert got[0][ip].dst == me and quoted in icmp and icmp[quoted].dst == dst
    cksum = getattr(icmp, sum_field)
    delattr(icmp, sum_field)  # scapy recomputes it: the router's must be the same
    assert getattr(Ether(bytes(got[0]))[layer], sum_field) == cksum
    route = a.run("ip", "-6" if v6 else "-4", "route", "get", dst).stdout
    adopted = overlay
    if not v6:  # Linux never goes below net.ipv4.route.min_pmtu (552) for IPv4
        floor = int(a.run("sysctl", "-n", "net.ipv4.route.min_pmtu").stdout)
        adopted = max(overlay, floor)
    assert re.search(rf"mtu (lock )?{adopted}\b", route), route  # the route cache adopted it
    print(f"{'IPv6 packet-too-big' if v6 else 'IPv4 frag-needed'} mtu {overlay} captured; "
          f"route: {route.strip()}")


def link_of(st: dict[str, Any]) -> dict[str, Any]:
    (c,) = st["connections"]
    return c


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_path(name: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    mtu, hole, loss, want_pmtu = SCENARIOS[name]
    with Lab() as lab:
        a, r, b = lab.host("a"), lab.router("r"), lab.host("b")
        lab.link(a, r, f"{A_UL}/24", f"{RA_UL}/24")
        _, rb_if = lab.link(b, r, f"{B_UL}/24", f"{RB_UL}/24", mtu=mtu)
        a.route("198.18.6.0/24", RA_UL)
        b.route("198.18.5.0/24", RB_UL)
        if hole is not None:
            # drop big UDP silently; r also sends no ICMP about anything (suppressed)
            r.nft("add table inet hole\n"
                  "add chain inet hole hfwd { type filter hook forward priority 0; }\n"
                  f"add rule inet hole hfwd meta l4proto udp ip length > {hole} drop\n"
                  "add chain inet hole hout { type filter hook output priority 0; }\n"
                  "add rule inet hole hout meta l4proto icmp drop\n")
        if loss:
            r.loss(rb_if, loss)
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24"], wd, "mtu pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", B_UL], wd, "mtu pw")
        ra.wait(established_with(1), 30, "link")
        rb.wait(established_with(1), 30, "link")
        # the overlay addresses live on the router's bridge (the TAP is one of its ports)
        a.addr("sleeve", f"{A_OV6}/64")
        b.addr("sleeve", f"{B_OV6}/64")
        t = time.monotonic()
        st = ra.wait(lambda st: link_of(st)["pmtu_state"] == "complete", 60, "PMTU search")
        print(f"\n{name}: path MTU {link_of(st)['pmtu']} found "
              f"({time.monotonic() - t:.1f}s after the link came up)")
        assert link_of(st)["pmtu"] == want_pmtu, link_of(st)

        # with 5% loss an 8000-byte ping (6 fragments each way) gets through ~54% of the
        # time: ask for 10 so that a miss means broken, not unlucky (p = 0.0004)
        assert a.ping(B_OV, count=10 if loss else 3, size=8000, timeout=30), "ping -s 8000"
        n = 20_000_000
        got, digest, secs = tcp_transfer(a, b, B_OV, n, timeout=120)
        assert (got, digest) == (n, expected_digest(n, "sleeve"))
        n6 = 5_000_000
        got6, digest6, secs6 = tcp_transfer(a, b, B_OV6, n6, port=5202, timeout=120)
        assert (got6, digest6) == (n6, expected_digest(n6, "sleeve"))
        print(f"{name}: 20 MB IPv4 in {secs:.1f}s ({n * 8 / secs / 1e6:.0f} Mbit/s), "
              f"5 MB IPv6 in {secs6:.1f}s")
        c = link_of(ra.status())["counters"]
        print(f"{name}: a's link counters {c}")
        overlay = overlay_mtu(want_pmtu)
        if overlay < 1406:
            # big frames were handled, not lost: ping -s 8000 leaves fragments without DF
            assert c.get("fragmented", 0) > 0
        if IPV4_MIN_MTU <= overlay < 1406:
            # a DF packet too big for the path: the router answers ICMP frag-needed naming
            # the overlay MTU, and the sender's kernel adopts it
            too_big(a, False, overlay)
        if overlay < IPV6_MIN_MTU:
            # IPv6 below its 1280 minimum: no ICMP can help; sleeve fragments, or with
            # offloads (TSO on the TAPs) the super-frames themselves cross in parts
            assert c.get("sleeve_fragmented", 0) + c.get("tx_superframes", 0) > 0
        elif overlay < 1406:
            too_big(a, True, overlay)
        for router in (ra, rb):
            assert router.status()["drops"].get("internal_error", 0) == 0
