"""The first encrypted link, on real kernels: two lab hosts running `sleeve launch`.

These tests need root and network namespaces; they fail (never skip) without them.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

A_UL, B_UL, C_UL = "198.18.0.1", "198.18.0.2", "198.18.0.3"
A_OV, B_OV, C_OV = "198.19.0.1", "198.19.0.2", "198.19.0.3"


@dataclass
class Pair:
    lab: Lab
    a: Host
    b: Host
    c: Host
    if_b: str
    ra: Router
    rb: Router


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
        lab.connect(a, sw, f"{A_UL}/24")
        if_b = lab.connect(b, sw, f"{B_UL}/24")
        lab.connect(c, sw, f"{C_UL}/24")
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24"], wd, "correct horse")
        ra = Router(a, ["--ip", f"{A_OV}/24", B_UL], wd, "correct horse")
        ra.wait(established_with(1), 20, "link a-b")
        rb.wait(established_with(1), 20, "link b-a")
        yield Pair(lab, a, b, c, if_b, ra, rb)
        assert ra.running and rb.running, "a router died during the tests"


def test_ping_both_ways_and_arp_resolves(pair: Pair) -> None:
    assert pair.a.ping(B_OV, count=3)
    assert pair.b.ping(A_OV, count=3)
    neigh = pair.a.run("ip", "neigh", "show", B_OV).stdout
    assert "lladdr" in neigh, neigh
    # the MAC a learnt by ARP is the TAP of b
    b_mac = pair.b.run("cat", "/sys/class/net/sleeve0/address").stdout.strip()
    assert b_mac in neigh


def _link_counters(r: Router) -> dict[str, int]:
    (link,) = r.status()["connections"]
    counters: dict[str, int] = link["counters"]
    return counters


def test_20mb_tcp_transfer_arrives_intact_and_is_counted(pair: Pair) -> None:
    n = 20_000_000
    before = _link_counters(pair.rb)
    got, digest, secs = tcp_transfer(pair.a, pair.b, B_OV, n, timeout=60)
    after = _link_counters(pair.rb)
    assert got == n
    assert digest == expected_digest(n, "sleeve")
    print(f"20 MB in {secs:.2f}s = {n * 8 / secs / 1e9:.2f} Gbit/s")
    # status counts what crossed the underlay: the payload plus TCP/IP/Ethernet/sleeve overhead
    rx = after["rx_bytes"] - before["rx_bytes"]
    assert n < rx < n * 1.10, rx


def _metrics(h: Host) -> str:
    return h.run(sys.executable, "-c", "import urllib.request as u;print(u.urlopen("
                 "'http://127.0.0.1:6782/metrics', timeout=5).read().decode())").stdout


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _tcpdump(host: Host, ifname: str, path: str, filt: str = "") -> subprocess.Popen[bytes]:
    args = ["tcpdump", "-n", "-U", "-s", "0", "-i", ifname, "-w", path]
    if filt:
        args.append(filt)
    p = host.popen(*args, stderr=subprocess.PIPE)
    assert p.stderr is not None
    line = p.stderr.readline()  # "listening on ..." once the capture is armed
    assert b"listening" in line, line
    return p


def test_underlay_carries_only_port_6783_and_no_plaintext(pair: Pair) -> None:
    pcap = f"/tmp/sleeve-test-{os.getpid()}-plain.pcap"
    cap = _tcpdump(pair.b, pair.if_b, pcap)
    try:
        pattern = "5a1eebee" * 4  # 16 bytes, the longest pattern ping accepts
        assert pair.a.run("ping", "-c", "5", "-i", "0.2", "-p", pattern, "-s", "200",
                          B_OV, check=False).returncode == 0
        time.sleep(0.3)
    finally:
        pair.b.stop(cap)
    with open(pcap, "rb") as f:
        data = f.read()
    assert len(data) > 1000, "capture is empty: the test would prove nothing"
    assert bytes.fromhex(pattern) not in data
    other = pair.b.run("tcpdump", "-n", "-r", pcap,
                       "ip and not (udp port 6783 or tcp port 6783)").stdout
    assert other.strip() == "", other
    sleeve_udp = pair.b.run("tcpdump", "-n", "-r", pcap, "udp port 6783").stdout
    assert len(sleeve_udp.splitlines()) >= 10
    os.unlink(pcap)


def test_wrong_password_is_named_on_both_sides_and_nothing_flows(pair: Pair) -> None:
    wd = workdir()
    rc = Router(pair.c, ["--ip", f"{C_OV}/24", B_UL], wd, "wrong password")
    try:
        rc.wait(lambda st: any(t["attempts"] >= 2 for t in st["targets"]), 30, "two retries")
        assert not pair.c.ping(B_OV, count=2)
        st = rc.status()
        assert st["connections"] == []
        assert st["targets"][0]["last_error"] == "rejected"
        assert "peer rejected the handshake: authentication failed: wrong password" in rc.log()
        assert "from 198.18.0.3" in pair.rb.log() and "wrong password" in pair.rb.log()
        assert rc.running and pair.rb.running
        assert pair.a.ping(B_OV, count=1)
    finally:
        rc.stop()


def _sleeve_payloads(pcap: str, dst: str) -> list[bytes]:
    from scapy.all import IP, UDP, rdpcap

    return [bytes(p[UDP].payload) for p in rdpcap(pcap)
            if UDP in p and p[IP].dst == dst and p[UDP].dport == 6783]


_SENDER = r"""
import socket, struct, sys, time
data = open(sys.argv[1], "rb").read(); off = 0; n = 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while off < len(data):
    (ln,) = struct.unpack_from("!H", data, off); off += 2
    s.sendto(data[off:off + ln], (sys.argv[2], 6783)); off += ln; n += 1
    if n % 200 == 0: time.sleep(0.01)   # stay under the receive buffer: we test parsing
print(n)
"""


def test_garbage_truncated_replayed_forged_datagrams_are_counted(pair: Pair) -> None:
    pcap = f"/tmp/sleeve-test-{os.getpid()}-real.pcap"
    cap = _tcpdump(pair.b, pair.if_b, pcap, f"udp and dst host {B_UL} and dst port 6783")
    try:
        pair.a.run("ping", "-c", "40", "-i", "0.05", B_OV, check=False)
        time.sleep(0.3)
    finally:
        pair.b.stop(cap)
    real = [p for p in _sleeve_payloads(pcap, B_UL) if len(p) > 32]
    os.unlink(pcap)
    assert len(real) >= 20
    rnd = random.Random(7)
    index = real[0][4:8]
    garbage = [rnd.randbytes(rnd.randrange(0, 1400)) for _ in range(1000)]
    truncated = [p[: rnd.randrange(0, 32)] for p in (rnd.choice(real) for _ in range(500))]
    replayed = [rnd.choice(real) for _ in range(1000)]
    forged = [b"\x01\x01\x00\x00" + index + rnd.randbytes(8)
              + rnd.randbytes(rnd.randrange(16, 1400)) for _ in range(1000)]
    flipped = []
    for _ in range(500):
        p = bytearray(rnd.choice(real))
        i = rnd.randrange(16, len(p))  # the header is checked by the tag too, but keep the index
        p[i] ^= 1 << rnd.randrange(8)
        flipped.append(bytes(p))
    before = pair.rb.status()["drops"]
    blob = b"".join(struct.pack("!H", len(p)) + p for p in
                    garbage + truncated + replayed + forged + flipped)
    path = f"/tmp/sleeve-test-{os.getpid()}-attack.bin"
    with open(path, "wb") as f:
        f.write(blob)
    try:
        out = pair.c.run(sys.executable, "-c", _SENDER, path, B_UL, timeout=60).stdout
    finally:
        os.unlink(path)
    assert int(out) == 4000
    time.sleep(0.5)
    st = pair.rb.status()
    drops = {k: v - before.get(k, 0) for k, v in st["drops"].items()}
    print("drops by reason:", drops)
    assert drops.get("auth", 0) == 1500  # forged + flipped
    assert drops.get("replay", 0) + drops.get("too_old", 0) == 1000
    # garbage and truncated: most fail the kernel's socket filter (type, version, length)
    assert drops.get("udp_kernel_drops", 0) + drops.get("short", 0) + drops.get("bad_type", 0) \
        + drops.get("bad_version", 0) + drops.get("unknown_session", 0) >= 1400
    assert sum(drops.values()) >= 4000 * 0.98
    assert pair.rb.running
    # /metrics tells the same story as status
    text = _metrics(pair.b)
    assert _sample(text, "sleeve_drops_total", reason="auth") == st["drops"]["auth"]
    assert _sample(text, "sleeve_drops_total", reason="replay") == st["drops"]["replay"]
    assert _sample(text, "sleeve_link_established", nickname="a") == 1
    # the attacker's address was never learnt as a's endpoint (learning needs authentication)
    (link,) = st["connections"]
    assert link["udp"].startswith(A_UL + ":"), link
    assert pair.a.ping(B_OV, count=2)


def test_pcap_mode_attaches_to_an_existing_bridge(pair: Pair) -> None:
    """b2's router attaches with --attach to a bridge port; a namespace on that bridge
    talks to a's TAP across the overlay."""
    lab = pair.lab
    b2, d = lab.host("b2"), lab.host("d")
    sw_if = lab.connect(b2, lab.switch("sw2"), "198.18.1.2/24")
    assert sw_if
    lab.link(pair.a, b2, "198.18.2.1/24", "198.18.2.2/24")
    # inside b2: bridge br0 <- veth att1/att0 (router attaches to att0) and a veth to d
    for cmd in (["link", "add", "br0", "type", "bridge"],
                ["link", "add", "att0", "type", "veth", "peer", "name", "att1"],
                ["link", "set", "att1", "master", "br0"],
                ["link", "add", "dv0", "type", "veth", "peer", "name", "eth0", "netns", d.netns],
                ["link", "set", "dv0", "master", "br0"]):
        b2.run("ip", *cmd)
    for ifc in ("br0", "att0", "att1", "dv0"):
        b2.run("ip", "link", "set", ifc, "up")
    d.addr("eth0", "198.19.0.4/24")
    # frames captured from a bridge port must be complete: no partial checksums, no GSO
    d.run("ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off")
    wd = workdir()
    r = Router(b2, ["--attach", "att0", "--port", "6783", "198.18.2.1"], wd, "correct horse")
    try:
        r.wait(established_with(1), 20, "b2 attached router connects to a")
        assert d.wait_ping(A_OV, timeout=15)
        assert pair.a.ping("198.19.0.4", count=3)
        n = 2_000_000
        got, digest, _ = tcp_transfer(d, pair.a, A_OV, n, port=5202)
        assert got == n and digest == expected_digest(n, "sleeve")
        # the router ignored the frames it injected itself (no echo, no MAC flapping)
        st = r.status()
        assert st["drops"].get("mac_conflict", 0) == 0, st["drops"]
    finally:
        r.stop()


def test_a_hung_peer_is_cut_off_after_20s_though_its_kernel_answers_keepalives(
        pair: Pair) -> None:
    """Idle, the control connection carries no heartbeats: the kernel's keepalive watches
    it (proto.liveness.control_heartbeat). A router that hangs (SIGSTOP) still has a kernel
    that answers keepalive probes, so only the silence rule (no UDP, no control message
    for 20 s) finds it: a closes the connection after ~20 s, and the link comes back once
    b runs again. Last in this module: the pair is whole again when it ends."""
    before = pair.ra.status()["counters"].get("control_silent", 0)
    assert pair.rb.proc is not None
    pair.rb.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        pair.ra.wait(lambda st: st["counters"].get("control_silent", 0) > before, 40,
                     "a closes the silent connection")
        took = time.monotonic() - t0
    finally:
        pair.rb.proc.send_signal(signal.SIGCONT)
    # UDP last heard <= 5 s before the stop: closed 15-21 s after it (1 s ticks)
    assert 14.0 <= took <= 26.0, took
    assert "nothing over UDP or TCP for 20s" in pair.ra.log()
    pair.ra.wait(established_with(1), 40, "link a-b again")
    pair.rb.wait(established_with(1), 40, "link b-a again")
