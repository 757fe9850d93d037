"""Two peers joined over an IPv6-only underlay (the original did IPv4 only).

Needs root and network namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import os

import pytest

from sleeve.lab import Lab
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

A6, B6 = "2001:2:0:1801::1", "2001:2:0:1801::2"  # underlay: no IPv4 at all


def test_ipv6_underlay() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        if_a = lab.connect(a, sw, None)
        if_b = lab.connect(b, sw, None)
        a.addr(if_a, f"{A6}/64")
        b.addr(if_b, f"{B6}/64")
        assert a.ipv4(if_a) == [] and b.ipv4(if_b) == []
        wd = workdir()
        rb = Router(b, ["--ip", "198.19.11.2/24"], wd, "v6 pw")
        ra = Router(a, ["--ip", "198.19.11.1/24", f"[{B6}]:6783"], wd, "v6 pw")
        for r, peer in ((ra, B6), (rb, A6)):
            st = r.wait(established_with(1), 20, "link over IPv6")
            (c,) = st["connections"]
            assert c["udp"] == f"[{peer}]:6783" and c["path"] == "sleeve", c
            assert c["pmtu"] == 1500 - 48  # IPv6 + UDP headers
        assert a.ping("198.19.11.2", count=3) and b.ping("198.19.11.1", count=3)
        n = 20_000_000
        got, digest, secs = tcp_transfer(a, b, "198.19.11.2", n)
        assert (got, digest) == (n, expected_digest(n, "sleeve"))
        print(f"\nIPv6 underlay: 20 MB in {secs:.2f}s ({n * 8 / secs / 1e6:.0f} Mbit/s)")
