"""Key rotation on real routers: a continuous ping across many rotations (fresh
Diffie-Hellman exchanges, issue 21) loses nothing, datagrams under a key older than its
grace period are refused as expired_key, control traffic (gossip) still flows, and after
a restart the old incarnation's datagrams are rejected.

Needs root; fails (never skips) without it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
from typing import Any

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from sleeve.lab import Lab
from sleeve.lab.netns import Host
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

A, B = "198.18.70.1", "198.18.70.2"
A_OV, B_OV = "198.19.70.1", "198.19.70.2"

_REPLAY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for hexdata in sys.argv[2:]:
    s.sendto(bytes.fromhex(hexdata), (sys.argv[1], 6783))
"""


def two_routers(lab: Lab, interval: str, password: str
                ) -> tuple[Host, Host, str, pathlib.Path, Router, Router]:
    """a dials b, both rekeying every ``interval`` s; returns a's underlay interface too."""
    sw = lab.switch()
    a, b = lab.host("a"), lab.host("b")
    if_a = lab.connect(a, sw, f"{A}/24")
    lab.connect(b, sw, f"{B}/24")
    wd = workdir()
    rb = Router(b, ["--ip", f"{B_OV}/24", "--rekey-interval", interval], wd, password)
    ra = Router(a, ["--ip", f"{A_OV}/24", "--rekey-interval", interval, B], wd, password)
    ra.wait(established_with(1), 20, "link")
    rb.wait(established_with(1), 20, "link")
    return a, b, if_a, wd, ra, rb


def ping_500_capturing(a: Host, if_a: str, pcap: pathlib.Path) -> tuple[int, int]:
    """500 pings a -> b every 20 ms while tcpdump keeps a's first 20 sealed datagrams."""
    cap = a.popen("tcpdump", "-n", "-i", if_a, "-c", "20", "-w", str(pcap), "-U",
                  f"udp and dst host {B} and dst port 6783")
    r = a.run("ping", "-n", "-q", "-i", "0.02", "-c", "500", "-W", "1", B_OV, check=False,
              timeout=60)
    if cap.poll() is None:
        a.stop(cap)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m, r.stdout
    return int(m.group(1)), int(m.group(2))


def captured(pcap: pathlib.Path) -> list[str]:
    return [bytes(p[UDP].payload).hex() for p in rdpcap(str(pcap)) if UDP in p]


def test_ping_across_rotations_and_no_replay_after_restart() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        a, b, if_a, wd, ra, rb = two_routers(lab, "0.5", "rekey pw")
        pcap = wd / "a.pcap"  # sealed datagrams a -> b for the replay below
        sent, got = ping_500_capturing(a, if_a, pcap)
        epochs = [r.status()["connections"][0]["key_epoch"] for r in (ra, rb)]
        print(f"\nping every 20 ms across key rotations every 0.5 s: {got}/{sent} answered; "
              f"key epochs a {epochs[0]}, b {epochs[1]}")
        assert got == sent == 500
        assert min(e["send"] for e in epochs) >= 12 and min(e["recv"] for e in epochs) >= 12
        n = 5_000_000
        assert tcp_transfer(a, b, B_OV, n)[:2] == (n, expected_digest(n, "sleeve"))
        assert rb.status()["drops"].get("expired_key", 0) == 0

        # restart a: fresh handshake, fresh keys; its old datagrams are refused
        old = captured(pcap)
        assert len(old) >= 10
        ra.stop()
        ra.start()
        ra.wait(established_with(1), 20, "link after restart")
        rb.wait(established_with(1), 20, "link after restart")
        before = rb.status()
        a.run(sys.executable, "-c", _REPLAY, B, *old)
        assert a.wait_ping(B_OV, timeout=5)
        after = rb.status()
        refused = sum(after["drops"].get(k, 0) - before["drops"].get(k, 0)
                      for k in ("unknown_session", "auth", "expired_key", "replay"))
        print(f"replayed {len(old)} datagrams of the old incarnation: {refused} refused, "
              f"drops now {after['drops']}")
        assert refused == len(old)
        assert after["drops"].get("internal_error", 0) == 0


def exchanges(st: dict[str, Any]) -> int:
    conns = st["connections"]
    assert len(conns) == 1, conns
    return int(conns[0]["key_exchanges"])


def test_fresh_dh_every_second_loses_no_ping_and_refuses_expired_keys() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        a, _b, if_a, wd, ra, rb = two_routers(lab, "1", "dh pw")
        assert a.wait_ping(B_OV, timeout=10)
        start = [exchanges(r.status()) for r in (ra, rb)]
        pcap = wd / "a.pcap"  # sealed datagrams a -> b under the keys of now
        sent, got = ping_500_capturing(a, if_a, pcap)
        st_a, st_b = ra.status(), rb.status()
        done = [exchanges(st_a) - start[0], exchanges(st_b) - start[1]]
        print(f"\nping every 20 ms, fresh DH every 1 s: {got}/{sent} answered across "
              f"{done} key exchanges (a, b); key epochs a "
              f"{st_a['connections'][0]['key_epoch']}, b {st_b['connections'][0]['key_epoch']}")
        assert got == sent == 500
        assert min(done) >= 5, done
        assert st_a["counters"].get("handshake_ok") == 1  # one connection all along
        assert st_b["counters"].get("handshake_ok") == 1

        # control traffic after the exchanges: a DNS name gossiped from a reaches b
        r = ra.cli("dns", "add", "rekeyed", "198.19.70.50", timeout=20)  # the API socket
        assert r.returncode == 0, r.stderr
        rb.wait(lambda st: any(rec["name"].startswith("rekeyed.")
                               for rec in st["dns"]["records"]), 10, "gossiped name")

        # datagrams of keys exchanged away (>= 5 exchanges, grace 1 s ago) are refused
        old = captured(pcap)
        assert len(old) >= 10
        before = rb.status()
        a.run(sys.executable, "-c", _REPLAY, B, *old)

        def expired_since(st: dict[str, Any]) -> int:
            return int(st["drops"].get("expired_key", 0) - before["drops"].get("expired_key", 0))
        with contextlib.suppress(TimeoutError):  # the count is asserted just below
            rb.wait(lambda st: expired_since(st) >= len(old), 5, "expired_key drops")
        after = rb.status()
        expired = expired_since(after)
        print(f"replayed {len(old)} datagrams sealed under keys since exchanged: "
              f"{expired} refused as expired_key")
        assert expired == len(old)
        assert a.wait_ping(B_OV, timeout=5)
        for st in (after, ra.status()):
            assert st["drops"].get("internal_error", 0) == 0
            assert not any(k.startswith("conn_fail") for k in st["counters"]), st["counters"]
