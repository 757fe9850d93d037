"""Key rotation on real routers: a continuous ping across many rotations loses nothing,
and after a restart the old incarnation's datagrams are rejected.

Needs root; fails (never skips) without it.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from sleeve.lab import Lab
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


def test_ping_across_rotations_and_no_replay_after_restart() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        if_a = lab.connect(a, sw, f"{A}/24")
        lab.connect(b, sw, f"{B}/24")
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24", "--rekey-seconds", "0.5"], wd, "rekey pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", "--rekey-seconds", "0.5", B], wd, "rekey pw")
        ra.wait(established_with(1), 20, "link")
        rb.wait(established_with(1), 20, "link")

        # capture some sealed datagrams a -> b for the replay below
        pcap = wd / "a.pcap"
        cap = a.popen("tcpdump", "-n", "-i", if_a, "-c", "20", "-w", str(pcap), "-U",
                      f"udp and dst host {B} and dst port 6783")
        r = a.run("ping", "-n", "-q", "-i", "0.02", "-c", "500", "-W", "1", B_OV, check=False,
                  timeout=60)
        if cap.poll() is None:
            a.stop(cap)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
        assert m, r.stdout
        sent, got = int(m.group(1)), int(m.group(2))
        epochs = [r.status()["connections"][0]["key_epoch"] for r in (ra, rb)]
        print(f"\nping every 20 ms across key rotations every 0.5 s: {got}/{sent} answered; "
              f"key epochs a {epochs[0]}, b {epochs[1]}")
        assert got == sent == 500
        assert min(e["send"] for e in epochs) >= 12 and min(e["recv"] for e in epochs) >= 12
        n = 5_000_000
        assert tcp_transfer(a, b, B_OV, n)[:2] == (n, expected_digest(n, "sleeve"))
        assert rb.status()["drops"].get("expired_key", 0) == 0

        # restart a: fresh handshake, fresh keys; its old datagrams are refused
        old = [bytes(p[UDP].payload).hex() for p in rdpcap(str(pcap)) if UDP in p]
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
