"""TSO super-frames on real TAPs (issue 9): loss, mixed capabilities, the kernel's view.

Topology: a --- r --- b, r a plain IP router. A super-frame crosses as ~45 datagrams,
so one lost datagram loses the whole super-frame; the inner TCP must recover it like any
loss, without the flow stalling. A router with --no-offload still interworks (its peer
segments in software). Needs root; never skips.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sleeve.lab import Lab
from sleeve.lab.netns import Host
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer, tcp_transfer_gap

pytestmark = pytest.mark.lab

A_UL, RA_UL, RB_UL, B_UL = "198.18.9.1", "198.18.9.254", "198.18.10.254", "198.18.10.1"
A_OV, B_OV = "198.19.9.1", "198.19.9.2"
LOSS = 3  # percent, each direction of r's b-side interface


def link_of(st: dict[str, Any]) -> dict[str, Any]:
    (c,) = st["connections"]
    assert isinstance(c, dict)
    return c


@contextmanager
def lab_pair(loss: int, args_a: list[str], args_b: list[str],
             ) -> Iterator[tuple[Host, Host, Router, Router]]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        a, r, b = lab.host("a"), lab.router("r"), lab.host("b")
        lab.link(a, r, f"{A_UL}/24", f"{RA_UL}/24")
        b_if, rb_if = lab.link(b, r, f"{B_UL}/24", f"{RB_UL}/24")
        a.route("198.18.10.0/24", RA_UL)
        b.route("198.18.9.0/24", RB_UL)
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24", *args_b], wd, "offload pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", B_UL, *args_a], wd, "offload pw")
        ra.wait(established_with(1), 30, "link")
        rb.wait(established_with(1), 30, "link")
        if loss:
            # Inside one kernel a UDP GSO run crosses veths and r's forwarding as one
            # packet, so a drop rule would drop whole runs. Make r's egress cut runs into
            # datagrams, as a real link would carry them, and drop them one by one at b.
            r.run("ethtool", "-K", rb_if, "tx-udp-segmentation", "off", "gso", "off")
            b.loss(b_if, loss)
        yield a, b, ra, rb
        for router in (ra, rb):
            assert router.status()["drops"].get("internal_error", 0) == 0


def test_lost_datagrams_of_super_frames_do_not_stall_the_flow() -> None:
    with lab_pair(LOSS, [], []) as (a, b, ra, rb):
        assert "tcp-segmentation-offload: on" in a.run("ethtool", "-k", "sleeve0").stdout
        n = 30_000_000
        t = time.monotonic()
        got, digest, _, gap = tcp_transfer_gap(a, b, B_OV, n, timeout=120)
        secs = time.monotonic() - t
        assert (got, digest) == (n, expected_digest(n, "sleeve"))
        sent = link_of(ra.status())["counters"]["tx_superframes"]
        time.sleep(3)  # incomplete sets time out (reassembly.TIMEOUT) and are counted
        cb = link_of(rb.status())["counters"]
        hit = cb.get("drop_segment_set_incomplete", 0)
        print(f"\n{LOSS}% loss: 30 MB in {secs:.1f}s ({n * 8 / secs / 1e6:.0f} Mbit/s), "
              f"longest pause between reads {gap:.2f}s; a sent {sent} super-frames, "
              f"b wrote {cb['rx_superframes']} super-frames; {hit} sets arrived incomplete "
              f"({cb.get('drop_segments_lost', 0)} segments lost), the rest of them written")
        assert sent > 100 and cb["rx_superframes"] > 100
        assert hit > 0  # the loss did hit super-frames
        # A stall (whole super-frames lost, the bug this guards against) is seconds of
        # back-to-back retransmission timeouts. One segment's retransmissions lost
        # twice more in a row costs 0.2 + 0.4 (+ 0.8) s legitimately: with 3% loss and
        # ~750 lost segments a run that happens about once in 40 (a CI run paused
        # 1.19 s, with the VM loaded, and had lost nothing else unusual).
        assert gap < 2.0, f"the flow paused {gap:.2f}s"


@pytest.mark.parametrize("plain", ["a", "b"])
def test_a_router_without_offload_interworks(plain: str) -> None:
    off = ["--no-offload"]
    with lab_pair(0, off if plain == "a" else [], off if plain == "b" else []) as (
            a, b, ra, rb):
        n = 10_000_000
        for src, dst, ip, port in ((a, b, B_OV, 5201), (b, a, A_OV, 5202)):
            got, digest, _ = tcp_transfer(src, dst, ip, n, port=port, timeout=60)
            assert (got, digest) == (n, expected_digest(n, "sleeve"))
        offloaded, other = (rb, ra) if plain == "a" else (ra, rb)
        lk = link_of(offloaded.status())
        assert lk["offload"] == "per frame" and link_of(other.status())["offload"] == "per frame"
        c = offloaded.status()["counters"]
        assert c.get("tx_segmented", 0) > 0  # its TAP's super-frames were cut in software
        assert lk["counters"].get("tx_superframes", 0) == 0


_UDP_RECV = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: the test counts the router
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(10.0)
seen, bad = [], 0
try:
    while True:
        d = s.recv(2048)
        s.settimeout(2.0)
        seq = int.from_bytes(d[:4], "big")
        bad += d != seq.to_bytes(4, "big") + bytes([seq % 251]) * 60
        seen.append(seq)
except TimeoutError:
    pass
print(json.dumps({"seen": seen, "bad": bad}))
"""

_UDP_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = int(sys.argv[3])
for i in range(n):
    s.sendto(i.to_bytes(4, "big") + bytes([i % 251]) * 60, (sys.argv[1], int(sys.argv[2])))
    if i % 50 == 49:
        time.sleep(0.002)  # bursts: the receiving host, not the router, is never the limit
"""


def test_small_udp_datagrams_reach_the_far_tap_joined_and_intact() -> None:
    """64-byte datagrams of one flow: b's router writes runs of them to its TAP as UDP
    super-frames (forward/udpruns.py); the receiving socket gets every datagram once, in
    order, with its payload, and the router counts the joined frames."""
    n = 3000
    with lab_pair(0, [], []) as (a, b, ra, rb):
        recv = b.popen(sys.executable, "-c", _UDP_RECV, B_OV, "5301",
                       stdout=subprocess.PIPE)
        assert recv.stdout is not None
        assert recv.stdout.readline().strip() == b"ready"
        # Runs form from datagrams that arrive in one read of the underlay. On a quiet
        # machine b's router keeps up and reads them one at a time, so hold it stopped
        # while a sends: the datagrams queue in its (forced 4 MB+) socket buffer and are
        # read in batches, as they are under load. Bounded: a's send takes well under 1 s.
        # Frames carry their virtio header (and so can be joined) once each side has seen
        # the other's caps; ARP resolved before b's router stops.
        for r in (ra, rb):
            r.wait(lambda st: link_of(st)["offload"] == "super-frames", 15, "caps")
        a.run("ping", "-c", "1", "-W", "5", B_OV)
        assert rb.proc is not None
        rb.proc.send_signal(signal.SIGSTOP)
        try:
            a.run(sys.executable, "-c", _UDP_SEND, B_OV, "5301", str(n), timeout=60)
            time.sleep(0.2)  # a's router has sealed and sent the last of them
        finally:
            rb.proc.send_signal(signal.SIGCONT)
        out, _ = recv.communicate(timeout=30)
        got = json.loads(out.decode().strip().splitlines()[-1])
        seen = got["seen"]
        c = rb.status()["counters"]
        print(f"\n{len(seen)} of {n} datagrams received; b joined {c.get('rx_udp_joined', 0)}"
              f" frames in {c.get('rx_udp_joined_writes', 0)} writes")
        assert got["bad"] == 0 and seen == sorted(set(seen))  # intact, once, in order
        assert len(seen) >= n * 0.98
        assert c.get("rx_udp_joined", 0) > n // 10 and c.get("rx_udp_joined_writes", 0) > 0
