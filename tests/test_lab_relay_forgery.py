"""A member that forges relayed sources and claims MACs, in real namespaces.

Victims A, B, C and EVIL on one switch. A's firewall lets it talk only to EVIL, so A
reaches B and C only through EVIL (A - EVIL - C, A - EVIL - B); B and C also talk
directly. EVIL is a real router with the network password (``tests/evil_router.py``):
it relays honestly, and once the victims have talked it also sends, every 0.25 s, MAC
claims under its own name, records naming A, B or C as source without proof or with
its own tag, and broadcasts in their name signed by itself (``tests.evil``).

Must hold: pings between every pair of victims lose nothing while EVIL forges (A's
go through EVIL); each victim counts the forgeries it got as ``mac_takeover``,
``origin_unauthenticated`` and ``origin_forged``; no victim's MAC ends up owned by
EVIL in another victim's table. Needs root; fails (never skips) without it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from sleeve.lab import Lab
from sleeve.lab.netns import Host
from sleeve.lab.routers import Router, workdir

pytestmark = pytest.mark.lab

A_UL, B_UL, C_UL, E_UL = "198.18.21.1", "198.18.21.2", "198.18.21.3", "198.18.21.9"
A_OV, B_OV, C_OV, E_OV = "198.19.21.1", "198.19.21.2", "198.19.21.3", "198.19.21.9"
PINGS = 20


def ping_received(h: Host, dst: str, count: int = PINGS) -> int:
    r = h.run("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", dst, check=False,
              timeout=count * 0.2 + 10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m is not None, r.stdout + r.stderr
    return int(m.group(2))


def route_via(st: dict[str, Any], dest: str) -> str | None:
    for r in st["routes"]:
        if r["destination"] == dest:
            return str(r["via"])
    return None


def test_forging_relay_is_dropped_and_counted_and_victims_unaffected() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b, c, e = lab.host("a"), lab.host("b"), lab.host("c"), lab.host("evil")
        for h, ip in ((a, A_UL), (b, B_UL), (c, C_UL), (e, E_UL)):
            lab.connect(h, sw, f"{ip}/24")
        a.block(B_UL)
        a.block(C_UL)
        wd = workdir()
        trigger = wd / "forge-now"
        re_ = Router(e, ["--ip", f"{E_OV}/24"], wd, "forge pw",
                     env={"EVIL_TRIGGER": str(trigger), "EVIL_ROUNDS": "100"},
                     module="tests.evil_router")
        rb = Router(b, ["--ip", f"{B_OV}/24", E_UL], wd, "forge pw")
        rc = Router(c, ["--ip", f"{C_OV}/24", E_UL, B_UL], wd, "forge pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", E_UL], wd, "forge pw")
        names = {k: r.wait(lambda st: bool(st["name"]), 20, "status")["name"]
                 for k, r in (("a", ra), ("b", rb), ("c", rc), ("e", re_))}
        ra.wait(lambda st: route_via(st, names["c"]) == names["e"]
                and route_via(st, names["b"]) == names["e"], 30, "A's routes via EVIL")
        rc.wait(lambda st: route_via(st, names["a"]) == names["e"]
                and route_via(st, names["b"]) == names["b"], 30, "C's routes")
        victims = ((a, A_OV, ra), (b, B_OV, rb), (c, C_OV, rc))
        # the victims talk (ARP both ways): everyone, EVIL included, learns their MACs
        for h, _ip, _r in victims:
            for _h2, ip2, _r2 in victims:
                if ip2 != _ip:
                    assert h.wait_ping(ip2, timeout=20), f"{h.name} -> {ip2} before forging"
        trigger.touch()
        re_.wait(lambda st: st["counters"].get("relayed_frames", 0) > 0, 10, "EVIL relays")
        # while EVIL forges: every pair, both directions where A is involved, no loss
        lost = {f"{h.name}->{ip2}": PINGS - ping_received(h, ip2)
                for h, ip2 in ((a, C_OV), (c, A_OV), (a, B_OV), (b, C_OV))}
        print(f"\nping loss while EVIL forges: {lost}")
        assert "EVIL round" in re_.log(), "EVIL did not forge"
        sent = re.findall(r"EVIL round \d+: sent (.*)", re_.log())
        print(f"EVIL sent: {sent[-1] if sent else None}")
        assert lost == dict.fromkeys(lost, 0), lost
        evil_local = {m["mac"] for m in re_.status()["macs"] if m["peer"] == "local"}
        for _h, _ip, r in victims:
            st = r.status()
            d = st["drops"]
            mine = {k: v for k, v in d.items() if "origin" in k or "mac" in k}
            print(f"{r.host.name} drops: {mine}")
            assert d.get("mac_takeover", 0) > 0, (r.host.name, d)
            assert d.get("origin_unauthenticated", 0) > 0, (r.host.name, d)
            assert d.get("origin_forged", 0) > 0, (r.host.name, d)
            assert d.get("internal_error", 0) == 0
            by_evil = {m["mac"] for m in st["macs"] if m["peer"] == names["e"]}
            assert by_evil <= evil_local, (r.host.name, by_evil - evil_local)
        for r in (ra, rb, rc, re_):
            assert r.running
