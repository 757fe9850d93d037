"""Port mapping against Debian's miniupnpd: a mapping peers use where punching cannot work.

s public (mediator; also the STUN server miniupnpd checks its address with), h1 and h3
behind gw1 (a masquerading NAT running miniupnpd), h2 behind gw2 (a port-randomising
NAT that maps nothing). gw1 filters by address and port and gw2 picks a new port per
destination, so hole punching between h1 and h2 fails; with a mapping on gw1, h2
reaches h1 straight at the mapped endpoint. h3 shares gw1 but runs with
``--no-port-mapping``: h2-h3 stays relayed in the same lab, in the same time.

Needs root, network namespaces, miniupnpd and stund; fails (never skips) without them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, direct, link_to, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer
from sleeve.lab.upnp import Miniupnpd, start_stund

pytestmark = pytest.mark.lab

S_UL, S_ALT, NAT1, NAT2 = "198.18.40.1", "198.18.40.2", "198.18.40.11", "198.18.40.12"
H1_OV, H2_OV, H3_OV = "198.19.40.11", "198.19.40.12", "198.19.40.13"
H1, H3 = "198.18.41.2", "198.18.43.2"


def gateways(lab: Lab, *, natpmp: bool, upnp: bool
             ) -> tuple[Host, Host, Host, Host, Miniupnpd, Any]:
    """(s, h1, h2, h3, gw1's miniupnpd, the working directory)."""
    pub = lab.switch("pub")
    s = lab.host("s")
    s.addr(lab.connect(s, pub, f"{S_UL}/24"), f"{S_ALT}/24")
    gw1, gw2 = lab.router("gw1"), lab.router("gw2")
    out1 = lab.connect(gw1, pub, f"{NAT1}/24")
    out2 = lab.connect(gw2, pub, f"{NAT2}/24")
    h1, h2, h3 = lab.host("h1"), lab.host("h2"), lab.host("h3")
    in1, _ = lab.link(gw1, h1, "198.18.41.1/24", f"{H1}/24")
    in3, _ = lab.link(gw1, h3, "198.18.43.1/24", f"{H3}/24")
    in2, _ = lab.link(gw2, h2, "198.18.42.1/24", "198.18.42.2/24")
    lab.nat(gw1, in1, out1)
    gw1.nft(f'add rule ip slv_nat nat_post oifname "{out1}" ip saddr 198.18.43.0/24 '
            "masquerade\n")  # h3 goes out masqueraded as well (lab.nat names one inside)
    lab.nat(gw2, in2, out2, fully_random=True)
    for h, gw in ((h1, "198.18.41.1"), (h2, "198.18.42.1"), (h3, "198.18.43.1")):
        h.route("198.18.40.0/24", gw)
    wd = workdir()
    start_stund(s, S_UL, S_ALT)
    time.sleep(0.3)  # stund binds its four sockets; miniupnpd's STUN check needs them
    gw = Miniupnpd(gw1, out1, [in1, in3], wd, S_UL, natpmp=natpmp, upnp=upnp)
    gw.wait_forwarding()
    return s, h1, h2, h3, gw, wd


def mapping_used(protocol: str, natpmp: bool, upnp: bool, block_pcp: bool = False) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        s, h1, h2, h3, gw, wd = gateways(lab, natpmp=natpmp, upnp=upnp)
        if block_pcp:  # a gateway that speaks NAT-PMP only and ignores PCP (version 2)
            gw.gw.nft("add table inet slv_nopcp\n"
                      "add chain inet slv_nopcp in { type filter hook input priority 0; }\n"
                      "add rule inet slv_nopcp in udp dport 5351 @th,64,8 2 drop\n")
        t0 = time.monotonic()
        rs = Router(s, ["--ip", "198.19.40.1/24"], wd, "map pw")
        r1 = Router(h1, ["--ip", f"{H1_OV}/24", S_UL], wd, "map pw")
        r2 = Router(h2, ["--ip", f"{H2_OV}/24", S_UL], wd, "map pw")
        r3 = Router(h3, ["--ip", f"{H3_OV}/24", "--no-port-mapping", S_UL], wd, "map pw")
        n1 = r1.wait(lambda st: True, 20, "status")["name"]
        n3 = r3.wait(lambda st: True, 20, "status")["name"]
        try:
            st1 = r1.wait(lambda st: st["traversal"]["port_mapping"]["mapped"] is not None,
                          25, f"a {protocol} mapping from miniupnpd")
            pm = st1["traversal"]["port_mapping"]
            print(f"\n{protocol}: after {time.monotonic() - t0:.1f}s: {pm}")
            assert pm["protocol"] == protocol and pm["gateway"] == "198.18.41.1"
            assert pm["mapped"].startswith(NAT1 + ":") and pm["lifetime_s"] > 0
            mapped = pm["mapped"]
            ext_port = int(mapped.split(":")[1])
            # the gateway forwards it: miniupnpd's DNAT rule to h1's router port
            assert f"dport {ext_port} dnat ip to {H1}:6783" in gw.rules()
            st2 = r2.wait(lambda st: direct(st, n1), 30, "h2's direct link to h1")
            r1.wait(lambda st: direct(st, r2.status()["name"]), 10, "h1's direct link to h2")
        except (AssertionError, TimeoutError):
            print(gw.log()[-3000:])
            for r in (r1, r2):
                print(r.host.name, r.status().get("traversal"), r.log()[-2500:])
            raise
        took = time.monotonic() - t0
        c2 = link_to(st2, n1)
        assert c2 is not None
        print(f"h2 -> h1 direct after {took:.1f}s at {c2['udp']} (h1's mapping {mapped})")
        assert c2["udp"] == mapped and c2["path"] == "sleeve"  # the mapped endpoint, UDP
        r2.wait(lambda st: next(r for r in st["routes"] if r["destination"] == n1)["via"]
                == n1, 10, "direct route h2-h1")
        before = rs.status()["counters"].get("relayed_frames", 0)
        n = 10_000_000
        assert tcp_transfer(h2, h1, H1_OV, n)[:2] == (n, expected_digest(n, "sleeve"))
        relayed = rs.status()["counters"].get("relayed_frames", 0) - before
        print(f"10 MB h2->h1 intact; frames relayed by s {relayed}")
        assert relayed < 50
        ctr = r1.status()["counters"]
        key = {"pcp": "pcp", "nat-pmp": "pmp", "upnp": "upnp"}[protocol]
        assert ctr.get(f"{key}_requests", 0) >= 1 and ctr.get(f"{key}_mappings", 0) == 1
        # h3, behind the same gateway without port mapping: still relayed to h2, never
        # asked the gateway (the punching alone cannot cross gw2's random ports)
        # h3 punches only once its first direct dial to h2 has failed (up to the 10 s
        # connect timeout where gw2 drops the SYN): wait for its first attempt
        n2 = r2.status()["name"]
        st3 = r3.wait(lambda st: any(p["peer"] == n2 and p["attempts"]
                                     for p in st["traversal"]["peers"]),
                      40, "h3's punch attempt to h2")
        assert st3["traversal"]["port_mapping"]["enabled"] is False
        assert not any(st3["counters"].get(f"{k}_requests", 0) for k in ("pcp", "pmp", "upnp"))
        assert not direct(st3, n2), link_to(st3, n2)
        tried = [p for p in st3["traversal"]["peers"] if p["peer"] == n2]
        assert tried and tried[0]["attempts"] >= 1, st3["traversal"]  # punching was tried
        assert not direct(r2.status(), n3)
        assert not any(k.startswith(("pcp_bad", "pmp_bad", "upnp_bad"))
                       for k in r1.status()["drops"])


def test_nat_pmp_mapping_is_used_by_a_peer() -> None:
    mapping_used("nat-pmp", natpmp=True, upnp=False, block_pcp=True)


def test_pcp_mapping_is_used_by_a_peer() -> None:
    mapping_used("pcp", natpmp=True, upnp=False)


def test_upnp_igd_mapping_is_used_by_a_peer() -> None:
    mapping_used("upnp", natpmp=False, upnp=True)
