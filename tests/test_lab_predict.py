"""NATs that change ports (issue 24): what the kernel does, then prediction.

The premise test measures, on this kernel, the public port Linux NAT gives each new
flow from one inside socket to different destinations: ``masquerade`` (keeps the
port unless the tuple clashes), ``masquerade fully-random`` (random per flow) and a
sequential allocator built from nftables (``sleeve.lab.nats.sequential_nat``: one
port after the other, as many consumer NATs do). ``docs/nat-behaviour.md`` records
the result.

Needs root and network namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from sleeve.lab import Lab
from sleeve.lab.nats import drop_unsolicited, sequential_nat, udp_mappings
from sleeve.lab.routers import Router, workdir
from tests.test_lab_traversal import direct, direct_transfer

pytestmark = pytest.mark.lab

S_UL = "198.18.60.1"
SEQ_START = 40000

# one socket bound to PORT sends one datagram to each of DPORTS on HOST
SEND_MANY = ("import socket, sys\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.bind(('', int(sys.argv[1])))\n"
             "for p in sys.argv[3:]:\n"
             "    s.sendto(b'x', (sys.argv[2], int(p)))\n")
METRICS = ("import urllib.request; print(urllib.request.urlopen("
           "'http://127.0.0.1:6782/metrics', timeout=5).read().decode())")
DPORTS = [7000, 7001, 7002, 7003, 7004]


def test_port_changing_nats_premise() -> None:
    """Per new flow from one socket: masquerade keeps the port (a clash moves it to a
    random one), fully-random gives random ports, the numgen allocator consecutive ones."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    py = sys.executable
    with Lab() as lab:
        pub = lab.switch("pub")
        s = lab.host("s")
        lab.connect(s, pub, f"{S_UL}/24")
        found = {}
        for i, kind in enumerate(("masquerade", "fully-random", "sequential"), start=1):
            gw, h = lab.router(f"gw{i}"), lab.host(f"h{i}")
            out = lab.connect(gw, pub, f"198.18.60.1{i}/24")
            inside, _ = lab.link(gw, h, f"198.18.6{i}.1/24", f"198.18.6{i}.2/24")
            if kind == "sequential":
                sequential_nat(gw, inside, out, f"198.18.60.1{i}", SEQ_START, 1000)
            else:
                lab.nat(gw, inside, out, fully_random=kind == "fully-random")
            h.route("198.18.60.0/24", f"198.18.6{i}.1")
            h.run(py, "-c", SEND_MANY, "5000", S_UL, *map(str, DPORTS))
            got = udp_mappings(gw, f"198.18.6{i}.2", 5000)
            found[kind] = [got.get(p) for p in DPORTS]
            if kind == "masquerade":
                # a second inside host with the same port to the same destinations:
                # its tuples clash with the first host's, so it is moved
                h2 = lab.host("h1b")
                lab.link(gw, h2, "198.18.64.1/24", "198.18.64.2/24")
                h2.route("198.18.60.0/24", "198.18.64.1")
                h2.run(py, "-c", SEND_MANY, "5000", S_UL, *map(str, DPORTS))
                got2 = udp_mappings(gw, "198.18.64.2", 5000)
                found["masquerade clash"] = [got2.get(p) for p in DPORTS]
        for kind, ports in found.items():
            print(f"\n{kind:>18}: inside port 5000 -> {ports}")
        assert found["masquerade"] == [5000] * len(DPORTS)
        clash = found["masquerade clash"]
        assert None not in clash and 5000 not in clash
        rnd = found["fully-random"]
        assert None not in rnd and len(set(rnd)) == len(rnd)
        assert sorted(rnd) != list(range(min(rnd), min(rnd) + len(rnd)))  # not consecutive
        assert found["sequential"] == list(range(SEQ_START, SEQ_START + len(DPORTS)))


S1_UL, S2_UL = "198.18.80.1", "198.18.80.2"
NAT1, NAT2 = "198.18.80.11", "198.18.90.12"
H1_OV, H2_OV = "198.19.80.11", "198.19.80.12"


def punch_past(nat1: str, pw: str, within: float) -> None:
    """h1 behind a NAT of kind ``nat1``, h2 behind a port-keeping one: a direct link.

    An ISP router sits between the NATs (the opener's hop-limited datagrams die there).
    Two public peers, s1 and s2, each tell h1 the UDP source they see, so h1 knows
    how its NAT allocates ports before h2 (linked to s1 only) joins. The link must be
    direct within ``within`` s and carry 10 MB intact, crossing between the NATs.
    """
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        isp = lab.router("isp")
        pub1, pub2 = lab.switch("pub1"), lab.switch("pub2")
        lab.connect(isp, pub1, "198.18.80.254/24")
        lab.connect(isp, pub2, "198.18.90.254/24")
        s1, s2 = lab.host("s1"), lab.host("s2")
        for s, ip in ((s1, S1_UL), (s2, S2_UL)):
            lab.connect(s, pub1, f"{ip}/24")
            s.route("198.18.90.0/24", "198.18.80.254")
        gw1, h1 = lab.router("gw1"), lab.host("h1")
        gw1_out = lab.connect(gw1, pub1, f"{NAT1}/24")
        gw1.route("198.18.90.0/24", "198.18.80.254")
        inside1, _ = lab.link(gw1, h1, "198.18.81.1/24", "198.18.81.2/24")
        if nat1 == "sequential":
            sequential_nat(gw1, inside1, gw1_out, NAT1, SEQ_START, 2000)
        else:
            lab.nat(gw1, inside1, gw1_out, fully_random=True)
        gw2, h2 = lab.router("gw2"), lab.host("h2")
        gw2_out = lab.connect(gw2, pub2, f"{NAT2}/24")
        gw2.route("198.18.80.0/24", "198.18.90.254")
        inside2, _ = lab.link(gw2, h2, "198.18.92.1/24", "198.18.92.2/24")
        lab.nat(gw2, inside2, gw2_out)
        # both gateways drop unsolicited datagrams to themselves, as home routers do:
        # what the observers see is then the NATs' allocation, not a race with them
        for gw, out in ((gw1, gw1_out), (gw2, gw2_out)):
            drop_unsolicited(gw, out)
        for h, gw_in in ((h1, "198.18.81.1"), (h2, "198.18.92.1")):
            for net in ("198.18.80.0/24", "198.18.90.0/24"):
                h.route(net, gw_in)
        wd = workdir()
        rs1 = Router(s1, ["--ip", "198.19.80.1/24"], wd, pw)
        Router(s2, ["--ip", "198.19.80.2/24", S1_UL], wd, pw)
        r1 = Router(h1, ["--ip", f"{H1_OV}/24", S1_UL, S2_UL], wd, pw)
        # h1 learns its NAT's behaviour from what s1 and s2 see of it
        st = r1.wait(lambda st: st["traversal"]["nat"]["kind"] == nat1, 20,
                     "h1's NAT classified from two observers")
        print(f"\nh1's NAT: {st['traversal']['nat']}")
        r2 = Router(h2, ["--ip", f"{H2_OV}/24", S1_UL], wd, pw)
        n1 = r1.wait(lambda st: True, 20, "status")["name"]
        n2 = r2.wait(lambda st: True, 20, "status")["name"]
        r2.wait(lambda st: st["traversal"]["nat"]["kind"] == "preserving", 20, "h2's NAT")
        r1.wait(lambda st: any(r["destination"] == n2 for r in st["routes"]), 20, "route h1-h2")
        t = time.monotonic()
        try:
            r1.wait(lambda st: direct(st, n2), within, "punched link h1-h2")
            r2.wait(lambda st: direct(st, n1), within + 5 - (time.monotonic() - t),
                    "punched h2-h1")
        except (AssertionError, TimeoutError):
            print(gw1.run("conntrack", "-C", check=False).stdout)
            for r in (r1, r2):
                print(r.host.name, r.status().get("traversal"), r.log()[-2500:])
            raise
        print(f"{nat1} NAT: direct link after {time.monotonic() - t:.1f}s")
        _, c2 = direct_transfer(r1, r2, rs1, (NAT1, NAT2), (gw1, gw1_out), H2_OV,
                                wd / "cap-pred.txt")
        if nat1 == "sequential":
            assert int(c2["udp"].rsplit(":", 1)[1]) > SEQ_START  # a port the NAT counted to
        # status and metrics say which method did it, on both sides
        method = "predict" if nat1 == "sequential" else "spray"
        for r, peer in ((r1, n2), (r2, n1)):
            st = r.status()
            assert st["counters"].get(f"punch_{method}_attempts", 0) >= 1
            assert st["counters"].get(f"punch_{method}_successes", 0) == 1
            (entry,) = [p for p in st["traversal"]["peers"] if p["peer"] == peer]
            last = entry["tried"][-1]
            key = "prediction" if method == "predict" else "spray"
            assert entry["state"] == "direct" and last[key], entry
            print(f"{r.host.name}: {last}")
        metrics = h2.run(sys.executable, "-c", METRICS).stdout
        assert f'sleeve_events_total{{event="punch_{method}_successes"}} 1.0' in metrics
        if method == "spray":  # the spray sockets are closed but the one the link keeps
            print("h1 UDP sockets after:", h1.run("ss", "-uanH", check=False).stdout)
            assert len(h1.run("ss", "-uanH", check=False).stdout.splitlines()) < 10


def test_sequential_nat_is_crossed_by_port_prediction() -> None:
    """h1's NAT counts its ports up: h1 predicts its next mapping, opens it first, and h2
    crosses to the predicted ports. Without prediction nothing finds the new mapping."""
    punch_past("sequential", "pred pw", 50)


def test_random_nat_is_crossed_by_a_birthday_spray() -> None:
    """h1's NAT draws a random port per flow: h1 opens 128 spray sockets (hop-limited),
    h2 sprays 4096 probes at random ports of h1's NAT; P(no hit) < 0.0003."""
    punch_past("random", "spray pw", 30)
