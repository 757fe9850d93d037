"""A jumbo-frame underlay (MTU 9000 veths): the PMTU search goes above 1500 and is used.

The search's limit is the MTU of the route to the peer (read with IP_MTU), not a fixed
1500, so two hosts on a 9000-byte link find 8972-byte datagrams. Throughput is measured
with the default overlay MTU (more frames per datagram) and a jumbo overlay MTU (one
big frame per datagram). Needs root; never skips.
"""

from __future__ import annotations

import os

import pytest

from sleeve.lab import Lab
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

A_UL, B_UL = "198.18.9.1", "198.18.9.2"
A_OV, B_OV = "198.19.9.1", "198.19.9.2"


@pytest.mark.parametrize(("underlay_mtu", "overlay_mtu"),
                         [(1500, None), (9000, None), (9000, 8900)],
                         ids=["1500-baseline", "9000", "9000-overlay8900"])
def test_jumbo_underlay_pmtu_above_1500(underlay_mtu: int, overlay_mtu: int | None) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    extra = [] if overlay_mtu is None else ["--mtu", str(overlay_mtu)]
    with Lab() as lab:
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b, f"{A_UL}/24", f"{B_UL}/24", mtu=underlay_mtu)
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24", *extra], wd, "jumbo pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", *extra, B_UL], wd, "jumbo pw")
        for r in (ra, rb):
            r.wait(established_with(1), 30, "link")
            st = r.wait(lambda st: st["connections"][0]["pmtu_state"] == "complete", 60, "PMTU")
            c = st["connections"][0]
            assert c["pmtu"] == underlay_mtu - 28, c  # IPv4 + UDP headers off the route's MTU
        n = 50_000_000
        got, digest, secs = tcp_transfer(a, b, B_OV, n, timeout=120)
        assert (got, digest) == (n, expected_digest(n, "sleeve"))
        print(f"\nunderlay MTU {underlay_mtu}, overlay MTU {overlay_mtu or 'default'}: PMTU "
              f"{c['pmtu']} ({c['pmtu_reason']}); 50 MB in {secs:.2f}s = "
              f"{n * 8 / secs / 1e6:.0f} Mbit/s")
        for r in (ra, rb):
            assert r.status()["drops"].get("internal_error", 0) == 0
