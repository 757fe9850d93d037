"""Measured hop limits for the punch (issue 24, ``traversal.hops``), on real kernels.

h1 and h2 each sit two hops behind their NAT (a LAN router, then the NAT gateway),
and an ISP router joins the two NATs' public segments (s, the public peer, is on
gw1's). So k_min (the smallest TTL crossing one's own NAT) is 3 on both sides and the
far NAT is 4 hops away: a low TTL can open one's own NAT without reaching the far
one. The routers must measure exactly these numbers, punch with them, and no
datagram from either NAT may ever arrive at the other without a mapping
(an nft counter of new conntrack entries from the other NAT, on each gateway).
The unmeasured first guess (h = 1: TTL 2) dies at the opener's LAN router, whichever
side opens: the first crossing then misses. Needs root; fails (never skips) without it.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.nats import two_segments
from sleeve.lab.routers import Router, direct, link_to, workdir

pytestmark = pytest.mark.lab

S_UL, NAT1, NAT2 = "198.18.60.1", "198.18.60.11", "198.18.70.12"
H1_OV, H2_OV = "198.19.60.11", "198.19.60.12"


def count_unsolicited(gw: Host, outside_if: str, other_nat: str) -> None:
    """Count datagrams from the other NAT to the punch port that arrive at gw matching
    no mapping (the d_far probes go to other ports: not the punch tuple)."""
    gw.nft("add table ip slv_hops\n"
           "add chain ip slv_hops pre { type filter hook prerouting priority 0; }\n"
           f'add rule ip slv_hops pre iifname "{outside_if}" ip saddr {other_nat} '
           "udp dport 6783 ct state new counter\n")


def unsolicited(gw: Host) -> int:
    out = gw.run("nft", "list", "table", "ip", "slv_hops").stdout
    m = re.search(r"counter packets (\d+)", out)
    assert m, out
    return int(m.group(1))


def test_measured_hop_limits_cross_our_nat_and_never_reach_the_far_one() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        pub1, pub2 = two_segments(lab, "198.18.60", "198.18.70")
        s = lab.host("s")
        lab.connect(s, pub1, f"{S_UL}/24")
        s.route("198.18.70.0/24", "198.18.60.254")
        # h1 -- lan1 -- gw1 (NAT) -- pub1 -- isp -- pub2 -- gw2 (NAT) -- lan2 -- h2
        sides = []
        for i, nat_ip, seg, other in ((1, NAT1, 60, 70), (2, NAT2, 70, 60)):
            gw, lan, h = lab.router(f"gw{i}"), lab.router(f"lan{i}"), lab.host(f"h{i}")
            out = lab.connect(gw, pub1 if i == 1 else pub2, f"{nat_ip}/24")
            gw.route(f"198.18.{other}.0/24", f"198.18.{seg}.254")
            gw_in, _ = lab.link(gw, lan, f"198.18.{seg + 1}.1/24", f"198.18.{seg + 1}.2/24")
            lab.link(lan, h, f"198.18.{seg + 2}.1/24", f"198.18.{seg + 2}.2/24")
            gw.route(f"198.18.{seg + 2}.0/24", f"198.18.{seg + 1}.2")
            for net in (f"198.18.{seg}.0/24", f"198.18.{other}.0/24"):
                lan.route(net, f"198.18.{seg + 1}.1")
            for net in (f"198.18.{seg}.0/24", f"198.18.{other}.0/24", f"198.18.{seg + 1}.0/24"):
                h.route(net, f"198.18.{seg + 2}.1")
            lab.nat(gw, gw_in, out)
            sides.append((gw, h, out))
        (gw1, h1, gw1_out), (gw2, h2, gw2_out) = sides
        count_unsolicited(gw1, gw1_out, NAT2)
        count_unsolicited(gw2, gw2_out, NAT1)
        assert h1.wait_ping(S_UL, timeout=10) and h2.wait_ping(S_UL, timeout=10)

        wd = workdir()
        Router(s, ["--ip", "198.19.60.1/24"], wd, "hops pw")
        r1 = Router(h1, ["--ip", f"{H1_OV}/24", S_UL], wd, "hops pw")
        # each measures its k_min with s before h2 appears (k_min is per host, cached)
        st1 = r1.wait(lambda st: st["traversal"]["hop_limit"]["k_min"] is not None, 30, "k_min h1")
        r2 = Router(h2, ["--ip", f"{H2_OV}/24", S_UL], wd, "hops pw")
        st2 = r2.wait(lambda st: st["traversal"]["hop_limit"]["k_min"] is not None, 30, "k_min h2")
        print(f"\nk_min: h1 {st1['traversal']['hop_limit']}, h2 {st2['traversal']['hop_limit']}")
        assert st1["traversal"]["hop_limit"]["k_min"] == 3  # LAN router, gw1: 2 hops, + 1
        assert st2["traversal"]["hop_limit"]["k_min"] == 3
        n1, n2 = st1["name"], st2["name"]
        t = time.monotonic()
        r1.wait(lambda st: direct(st, n2), 30, "punched link h1-h2")
        r2.wait(lambda st: direct(st, n1), 10, "punched link h2-h1")
        took = time.monotonic() - t
        tried = {}
        for r, peer in ((r1, n2), (r2, n1)):
            (entry,) = [p for p in r.status()["traversal"]["peers"] if p["peer"] == peer]
            tried[r.host.name] = entry["tried"][0]
        print(f"direct after {took:.1f}s; attempts: {tried}")
        for r in (r1, r2):
            print(r.host.name, [ln for ln in r.log().splitlines() if "hop limit" in ln])
        first = tried["h1"] if tried["h1"]["plan"].startswith("opener") else tried["h2"]
        assert first["result"].startswith("direct after "), tried
        assert float(first["result"].split()[2]) < 5.0, tried  # the first crossing worked
        assert tried["h1"]["hops"] is not None and tried["h2"]["hops"] is not None, tried
        assert (tried["h1"]["hops"]["k_min"], tried["h1"]["hops"]["d_far"]) == (3, 4), tried
        assert (tried["h2"]["hops"]["k_min"], tried["h2"]["hops"]["d_far"]) == (3, 4), tried
        for name in ("h1", "h2"):
            assert tried[name]["hops"]["ttl"] == tried[name]["hops"]["k_min"]
            assert "expires before the far NAT" in tried[name]["hops"]["why"], tried
        # the opener's TTL crossed its NAT (the crosser's datagrams got in) and none of
        # its datagrams reached the far NAT without a mapping (no poisoning)
        c1 = link_to(r1.status(), n2)
        assert c1 is not None and c1["udp"] == f"{NAT2}:6783", c1
        assert (unsolicited(gw1), unsolicited(gw2)) == (0, 0)
