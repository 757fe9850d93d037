"""The fast datapath with real routers: kernel VXLAN carries unencrypted links.

Needs root and network namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.probes import Capture, FrameCounter, arp_storm
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

UL = ["198.18.40.1", "198.18.40.2", "198.18.40.3"]
OV = ["198.19.40.1", "198.19.40.2", "198.19.40.3"]


def paths(st: dict[str, Any]) -> dict[str, str]:
    return {c["nickname"]: c["path"] for c in st["connections"]}


def on_fastdp(st: dict[str, Any]) -> bool:
    return bool(st["connections"]) and all(c["path"] == "fastdp" for c in st["connections"])


def iperf(src: Host, dst: Host, ip: str, secs: int = 3) -> float:
    srv = dst.popen("iperf3", "-s", "-1", "-B", ip, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = src.run("iperf3", "-c", ip, "-t", str(secs), "-J", timeout=secs + 20).stdout
    finally:
        if srv.poll() is None:
            dst.stop(srv)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def ping_loss(h: Host, ip: str, secs: float) -> tuple[int, int]:
    """(sent, lost) of a ping every 50 ms for ``secs``."""
    n = int(secs / 0.05)
    r = h.run("ping", "-n", "-q", "-i", "0.05", "-W", "1", "-c", str(n), ip, check=False,
              timeout=secs + 15)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m, r.stdout
    sent, got = int(m.group(1)), int(m.group(2))
    return sent, sent - got


def test_two_unencrypted_hosts_use_the_kernel_and_fall_back_when_vxlan_is_blocked() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        if_a = lab.connect(a, sw, f"{UL[0]}/24")
        lab.connect(b, sw, f"{UL[1]}/24")
        wd = workdir()
        rb = Router(b, ["--ip", f"{OV[1]}/24"], wd, None)
        ra = Router(a, ["--ip", f"{OV[0]}/24", UL[1]], wd, None)
        t = time.monotonic()
        for r in (ra, rb):
            r.wait(established_with(1), 20, "link")
            st = r.wait(on_fastdp, 20, "fast datapath")
        print(f"\nfastdp reached {time.monotonic() - t:.1f}s after start; "
              f"{st['connections'][0]['path_reason']!r}")
        assert st["fastdp"]["active"] is True
        assert a.ping(OV[1], count=3)

        # the kernel carries it: VXLAN on the underlay, router frame counters flat
        cap = Capture(a, if_a, "udp port 6784", wd / "vxlan.txt", limit=200)
        before = ra.status()["counters"].get("port_rx_frames", 0)
        n = 20_000_000
        assert tcp_transfer(a, b, OV[1], n)[:2] == (n, expected_digest(n, "sleeve"))
        after = ra.status()["counters"].get("port_rx_frames", 0)
        vx = cap.count()
        print(f"20 MB over fastdp: router read {after - before} frames from its TAP, "
              f"{vx} VXLAN packets captured")
        assert after - before < 100 and vx >= 100

        # at least 0.8x a hand-made kernel VXLAN between the same hosts, same run
        for h, me, peer, ov in ((a, UL[0], UL[1], "198.19.41.1/24"),
                                (b, UL[1], UL[0], "198.19.41.2/24")):
            h.run("ip", "link", "add", "vxref", "type", "vxlan", "id", "99", "remote", peer,
                  "local", me, "dstport", "4789", timeout=15)
            h.set_mtu("vxref", 1406)
            h.addr("vxref", ov)
        # interleaved, best of two each: a 3 s iperf3 on 2 shared cores is noisy
        fast = ref = 0.0
        for _ in range(2):
            fast = max(fast, iperf(a, b, OV[1]))
            ref = max(ref, iperf(a, b, "198.19.41.2"))
        print(f"iperf3: fastdp {fast:.2f} Gbit/s, hand-made VXLAN {ref:.2f} Gbit/s "
              f"= {fast / ref:.2f}x")
        assert fast >= 0.8 * ref

        # block the VXLAN port: back to sleeve within 15 s, traffic continues
        blk = a.block(UL[1], proto="udp", port=6784)
        t = time.monotonic()
        sent, lost = ping_loss(a, OV[1], 3.0)
        ra.wait(lambda st: paths(st) == {"b": "sleeve"}, 15, "back on sleeve")
        down = time.monotonic() - t
        assert a.wait_ping(OV[1], timeout=5)
        print(f"VXLAN blocked: on sleeve after {down:.1f}s, ping loss {lost}/{sent} "
              f"during the first 3 s; reason "
              f"{ra.status()['connections'][0]['path_reason']!r}")
        got, digest, _ = tcp_transfer(a, b, OV[1], 5_000_000)
        assert (got, digest) == (5_000_000, expected_digest(5_000_000, "sleeve"))
        a.unblock(blk)
        t = time.monotonic()
        sent, lost = ping_loss(a, OV[1], 3.0)
        ra.wait(on_fastdp, 30, "back on fastdp")
        print(f"VXLAN unblocked: on fastdp after {time.monotonic() - t:.1f}s, ping loss "
              f"{lost}/{sent} during the switch")
        assert a.ping(OV[1], count=3)


def test_mixed_paths_deliver_exactly_once() -> None:
    """A-B on fastdp, B-C forced to sleeve (VXLAN blocked), A-C relayed (all blocked)."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        hosts = [lab.host(n) for n in ("a", "b", "c")]
        for h, ip in zip(hosts, UL, strict=True):
            lab.connect(h, sw, f"{ip}/24")
        a, b, c = hosts
        a.block(UL[2])  # A-C: nothing at all
        b.block(UL[2], proto="udp", port=6784)  # B-C: no VXLAN
        wd = workdir()
        rb = Router(b, ["--ip", f"{OV[1]}/24"], wd, None)
        ra = Router(a, ["--ip", f"{OV[0]}/24", UL[1]], wd, None)
        rc = Router(c, ["--ip", f"{OV[2]}/24", UL[1]], wd, None)
        ra.wait(lambda st: paths(st) == {"b": "fastdp"}, 30, "A-B on fastdp")
        rb.wait(lambda st: paths(st) == {"a": "fastdp", "c": "sleeve"}, 30, "B's links")
        rc.wait(lambda st: paths(st) == {"b": "sleeve"} and len(st["routes"]) == 2, 30,
                "C's view")
        ra.wait(lambda st: {r["destination"]: r["hops"] for r in st["routes"]}
                .get(rc.status()["name"]) == 2, 20, "A reaches C via B")
        for src, ip in ((a, OV[1]), (a, OV[2]), (b, OV[2]), (c, OV[0])):
            assert src.wait_ping(ip, timeout=10), f"{src.name} -> {ip}"
        # broadcast: exactly once everywhere
        n = 300
        counters = [FrameCounter(h, "sleeve0", 6, bytes([198, 19, 40, 250])) for h in hosts]
        arp_storm(a, "sleeve0", n, "198.19.40.250", OV[0])
        got = [fc.result() for fc in counters]
        print(f"\nmixed paths: {n} ARP broadcasts from a, copies per host {got}")
        assert got == [0, n, n]
        # unicast A->C (relayed through B, whose A side is the kernel): each echo once
        marker = bytes.fromhex("5a5a5a5a5a5a5a5a")
        cc = FrameCounter(c, "sleeve0", 6, marker)
        r = a.run("ping", "-n", "-q", "-c", "50", "-i", "0.02", "-p", "5a5a5a5a5a5a5a5a",
                  OV[2], check=False, timeout=20)
        assert " 0% packet loss" in r.stdout, r.stdout
        assert cc.result() == 50
        n5 = 5_000_000
        assert tcp_transfer(a, c, OV[2], n5)[:2] == (n5, expected_digest(n5, "sleeve"))


def test_encrypted_network_stays_on_sleeve_and_says_why() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        lab.connect(a, sw, f"{UL[0]}/24")
        lab.connect(b, sw, f"{UL[1]}/24")
        wd = workdir()
        rb = Router(b, ["--ip", f"{OV[1]}/24"], wd, "secret")
        ra = Router(a, ["--ip", f"{OV[0]}/24", UL[1]], wd, "secret")
        rb.wait(established_with(1), 20, "link")
        st = ra.wait(established_with(1), 20, "link")
        (c,) = st["connections"]
        assert c["path"] == "sleeve" and c["path_reason"] == "sleeve: encryption required"
        assert st["fastdp"]["active"] is False
        assert "no such device" in a.run("ip", "link", "show", "vxsleeve", check=False).stderr \
            .lower() or a.run("ip", "link", "show", "vxsleeve", check=False).returncode != 0


def test_trusted_subnets_put_only_their_links_on_the_kernel() -> None:
    """Encrypted network, --trusted-subnets 198.18.40.0/24: a-b (both inside) go on the
    fast datapath, b-c (c outside, at 198.18.41.3) stay encrypted on sleeve, and say why."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b, c = (lab.host(n) for n in ("a", "b", "c"))
        for h, ip in ((a, UL[0]), (b, UL[1]), (c, "198.18.41.3")):
            lab.connect(h, sw, f"{ip}/16")
        wd = workdir()
        trust = ["--trusted-subnets", "198.18.40.0/24", "--no-discovery"]  # a-c: no link
        rb = Router(b, ["--ip", f"{OV[1]}/24", *trust], wd, "trust pw")
        ra = Router(a, ["--ip", f"{OV[0]}/24", *trust, UL[1]], wd, "trust pw")
        rc = Router(c, ["--ip", f"{OV[2]}/24", *trust, UL[1]], wd, "trust pw")
        ra.wait(lambda st: paths(st) == {"b": "fastdp"}, 30, "a-b on fastdp")
        st = rb.wait(lambda st: paths(st) == {"a": "fastdp", "c": "sleeve"}, 30, "b's links")
        stc = rc.wait(lambda st: paths(st) == {"b": "sleeve"}, 30, "c's link")
        why = {cn["nickname"]: cn["path_reason"] for cn in st["connections"]}
        assert why["c"] == "sleeve: encryption required", why
        assert all(cn["encrypted"] for cn in st["connections"] + stc["connections"])
        for src, ip in ((a, OV[1]), (b, OV[2]), (c, OV[0])):
            assert src.wait_ping(ip, timeout=10), f"{src.name} -> {ip}"
        n = 5_000_000
        assert tcp_transfer(a, b, OV[1], n)[:2] == (n, expected_digest(n, "sleeve"))
        assert tcp_transfer(c, b, OV[1], n, port=5202)[:2] == (n, expected_digest(n, "sleeve"))
        # still on their paths after traffic: nothing fell back or crossed over
        assert paths(rb.status()) == {"a": "fastdp", "c": "sleeve"}
        print(f"\ntrusted subnets: b's paths {paths(rb.status())}, why {why}")
