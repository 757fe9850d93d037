"""Getting through: NAT (with the mapping flushed mid-flow) and UDP blocked entirely.

Needs root and network namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from sleeve.lab import Lab
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab


def only_link(st: dict[str, Any]) -> dict[str, Any]:
    (c,) = st["connections"]
    return c


@pytest.mark.parametrize("fully_random", [False, True], ids=["masquerade", "random-ports"])
def test_host_behind_nat_dials_out_and_survives_a_mapping_flush(fully_random: bool) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        s, gw, h = lab.host("s"), lab.router("gw"), lab.host("h")
        lab.connect(s, sw, "198.18.7.1/24")
        gw_out = lab.connect(gw, sw, "198.18.7.254/24")
        gw_in, _ = lab.link(gw, h, "198.18.8.1/24", "198.18.8.2/24")
        lab.nat(gw, gw_in, gw_out, fully_random=fully_random)
        h.route("198.18.7.0/24", "198.18.8.1")
        wd = workdir()
        rs = Router(s, ["--ip", "198.19.7.1/24"], wd, "nat pw")
        rh = Router(h, ["--ip", "198.19.7.2/24", "198.18.7.1"], wd, "nat pw")
        st = rs.wait(established_with(1), 20, "link s-h")
        rh.wait(established_with(1), 20, "link h-s")
        # s knows h only by the mapping the NAT made, learnt from authenticated datagrams
        assert only_link(st)["udp"].startswith("198.18.7.254:")
        assert only_link(st)["path"] == "sleeve"
        assert s.ping("198.19.7.2", count=3) and h.ping("198.19.7.1", count=3)
        n = 5_000_000
        assert tcp_transfer(s, h, "198.19.7.2", n)[:2] == (n, expected_digest(n, "sleeve"))

        before = only_link(rs.status())
        if not fully_random:
            # Plain masquerade keeps the source port when it is free, so a flush alone
            # may give the same mapping back; new ports make the rebinding certain.
            gw.nft("flush chain ip slv_nat nat_post\n"
                   f'add rule ip slv_nat nat_post oifname "{gw_out}" meta l4proto udp '
                   "masquerade to :40000-40999\n"
                   f'add rule ip slv_nat nat_post oifname "{gw_out}" masquerade\n')
        gw.run("conntrack", "-F")  # the NAT forgets every mapping
        t = time.monotonic()
        assert h.wait_ping("198.19.7.1", timeout=15), "no traffic 15 s after the flush"
        assert s.wait_ping("198.19.7.2", timeout=15 - (time.monotonic() - t) + 1)
        took = time.monotonic() - t
        after = only_link(rs.wait(established_with(1), 20, "link after flush"))
        print(f"\nNAT ({'fully random' if fully_random else 'masquerade'}) flushed: traffic "
              f"back in {took:.1f}s; s sees h at {before['udp']} -> {after['udp']}")
        assert took < 15
        # the rebinding happened and s followed it, learning h's new mapping from
        # authenticated datagrams alone
        assert after["udp"] != before["udp"], (before["udp"], after["udp"])
        assert after["udp"].startswith("198.18.7.254:")
        if not fully_random:
            assert 40000 <= int(after["udp"].rsplit(":", 1)[1]) <= 40999
        # learnt from authenticated datagrams (a change counted on the link; where the
        # flush also broke the control connection, whose TCP mapping went too, the new
        # link counts its own change)
        assert after["counters"].get("endpoint_changes", 0) >= 1
        assert tcp_transfer(h, s, "198.19.7.1", n)[:2] == (n, expected_digest(n, "sleeve"))


def test_udp_blocked_entirely_falls_back_to_tcp() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        lab.connect(a, sw, "198.18.9.1/24")
        lab.connect(b, sw, "198.18.9.2/24")
        a.block("198.18.9.2", proto="udp", port=6783)  # TCP 6783 stays open
        wd = workdir()
        rb = Router(b, ["--ip", "198.19.9.2/24"], wd, "tcp pw")
        ra = Router(a, ["--ip", "198.19.9.1/24", "198.18.9.2"], wd, "tcp pw")
        for r in (ra, rb):
            st = r.wait(established_with(1), 20, "link over TCP")
            assert only_link(st)["path"] == "tcp", only_link(st)
        assert a.ping("198.19.9.2", count=3) and b.ping("198.19.9.1", count=3)
        n = 5_000_000
        got, digest, secs = tcp_transfer(a, b, "198.19.9.2", n)
        assert (got, digest) == (n, expected_digest(n, "sleeve"))
        c = only_link(ra.status())
        print(f"\nUDP blocked: 5 MB over the TCP fallback in {secs:.2f}s; link says "
              f"{c['reason']!r}")
        assert c["counters"]["tx_tcp_bytes"] > n
        assert c["counters"].get("tx_packets", 0) < 200  # UDP: heartbeats and probes only
