"""Floods at a router from a lab host: unauthenticated UDP, then a TCP handshake flood.

The established link keeps carrying traffic (goodput ratio reported), accepts are
rate-limited, half-open handshakes are bounded, memory stays flat. Every flood is
bounded in time and count. Needs root; fails (never skips) without it.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from sleeve.lab import Lab
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

A, B, C = "198.18.50.1", "198.18.50.2", "198.18.50.3"
A_OV, B_OV = "198.19.50.1", "198.19.50.2"

# Random-looking datagrams at the router's port as fast as one process can, for SECS.
_UDP_FLOOD = r"""
import os, socket, sys, time
dst, secs = (sys.argv[1], 6783), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
junk = [os.urandom(n) for n in (32, 100, 600, 1400)]
end = time.monotonic() + secs; n = 0
while time.monotonic() < end and n < 5_000_000:
    for j in junk:
        try:
            s.sendto(j, dst); n += 1
        except OSError:
            pass
print(n)
"""

# Open TCP connections, send a little garbage, keep them open; at most N, for SECS.
_TCP_FLOOD = r"""
import os, socket, sys, time
dst, secs, limit = (sys.argv[1], 6783), float(sys.argv[2]), int(sys.argv[3])
socks = []; n = 0; end = time.monotonic() + secs
while time.monotonic() < end and n < limit:
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect(dst)
    except BlockingIOError:
        pass
    except OSError:
        s.close(); continue
    try:
        s.send(os.urandom(32))
    except OSError:
        pass
    socks.append(s); n += 1
    if len(socks) > 800:
        socks.pop(0).close()
    time.sleep(0.002)
time.sleep(max(0.0, end - time.monotonic()))
for s in socks:
    s.close()
print(n)
"""


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_floods_do_not_stop_an_established_link() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
        for h, ip in ((a, A), (b, B), (c, C)):
            lab.connect(h, sw, f"{ip}/24")
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24"], wd, "flood pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", B], wd, "flood pw")
        rb.wait(established_with(1), 20, "link")
        ra.wait(established_with(1), 20, "link")
        pid = rb.status()["pid"]
        n = 20_000_000
        got, digest, base = tcp_transfer(a, b, B_OV, n)
        assert (got, digest) == (n, expected_digest(n, "sleeve"))
        rss0 = rss_kib(pid)

        flood = c.popen(sys.executable, "-c", _UDP_FLOOD, B, "10", stdout=-1)
        try:
            got, digest, secs = tcp_transfer(a, b, B_OV, n, timeout=60)
            assert (got, digest) == (n, expected_digest(n, "sleeve"))
            assert a.ping(B_OV, count=3)
        finally:
            out, _ = flood.communicate(timeout=30)
        sent = int(out)
        st = rb.status()
        junk = sum(v for k, v in st["drops"].items() if k in ("bad_type", "short",
                                                              "unknown_session", "bad_version"))
        print(f"\nUDP flood of {sent} junk datagrams: goodput {base / secs:.2f}x of the "
              f"unflooded transfer ({n * 8 / secs / 1e6:.0f} vs {n * 8 / base / 1e6:.0f} "
              f"Mbit/s); router dropped {junk} as junk, drops {st['drops']}")
        assert junk > 0
        assert st["connections"][0]["state"] == "established"

        flood = c.popen(sys.executable, "-c", _TCP_FLOOD, B, "8", "3000", stdout=-1)
        peak = 0
        try:
            for _ in range(5):
                st = rb.status()
                peak = max(peak, st["handshakes_in_progress"])
                assert a.ping(B_OV, count=1)
            got, digest, secs = tcp_transfer(a, b, B_OV, n, timeout=60)
            assert (got, digest) == (n, expected_digest(n, "sleeve"))
        finally:
            out, _ = flood.communicate(timeout=30)
        st = rb.status()
        rss1 = rss_kib(pid)
        print(f"TCP flood of {out.decode().strip()} connections: goodput {base / secs:.2f}x; "
              f"accepts refused {st['drops'].get('accept_rate_limited', 0)} (rate) + "
              f"{st['drops'].get('handshake_limit', 0)} (in progress), peak handshakes "
              f"{peak}, RSS {rss0 // 1024} -> {rss1 // 1024} MiB")
        assert st["drops"].get("accept_rate_limited", 0) > 0
        assert peak <= 32
        assert rss1 - rss0 < 64 * 1024, (rss0, rss1)
        assert st["connections"][0]["state"] == "established"
        assert rb.running and ra.running
