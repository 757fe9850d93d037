"""Frame-level probes run inside lab hosts: ARP storms, frame counters, multicast.

Each probe is a small script run with the lab's Python in the host's namespace, so
the tests count what the kernel really delivered on the overlay interface. Every
probe is bounded in count and time.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

from sleeve.lab.guard import check_ip
from sleeve.lab.netns import Host

# Count received frames on IFACE for SECONDS whose bytes contain the hex MARK; print it.
_COUNT = r"""
import socket, sys, time
iface, secs, mark = sys.argv[1], float(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0)); s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + secs; n = 0
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(65535)
    except TimeoutError:
        continue
    if addr[2] != socket.PACKET_OUTGOING and mark in data:
        n += 1
print(n, flush=True)
"""

# Print (hex, one a line) the ICMP / ICMPv6 frames arriving on IFACE for SECONDS, at most 50.
_ICMP_FRAMES = r"""
import socket, sys, time
iface, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0)); s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + secs; n = 0
while time.monotonic() < end and n < 50:
    try:
        data, addr = s.recvfrom(65535)
    except TimeoutError:
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(data) < 55:
        continue
    et = data[12:14]
    if et == b"\x08\x00" and data[23] == 1 or et == b"\x86\xdd" and data[20] == 58:
        print(data.hex(), flush=True); n += 1
"""

# Send N broadcast ARP requests "who has TARGET tell SENDER" out of IFACE, paced.
_ARP = r"""
import socket, struct, sys, time
iface, n, target, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((iface, 0))
mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
for i in range(n):
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(sender),
                      b"\0" * 6, socket.inet_aton(target))
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
    if i % 50 == 49:
        time.sleep(0.02)  # about 2,500 frames/s: a storm, not a test of our buffers
print(n, flush=True)
"""

# Join GROUP on the interface with address LOCAL, count datagrams on PORT for SECONDS;
# print "total distinct".
_MRECV = r"""
import socket, struct, sys, time
group, port, local, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton(local))
s.settimeout(0.2); print("ready", flush=True)
end = time.monotonic() + secs; total = 0; seen = set()
while time.monotonic() < end:
    try:
        data = s.recv(2048)
    except TimeoutError:
        continue
    total += 1; seen.add(data)
print(total, len(seen), flush=True)
"""

# Send N numbered datagrams to GROUP:PORT out of the interface with address LOCAL.
_MSEND = r"""
import socket, sys, time
group, port, local, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for i in range(n):
    s.sendto(b"sleeve-mcast-%06d" % i, (group, port))
    time.sleep(0.005)
print(n, flush=True)
"""


def _start(host: Host, script: str, *args: str) -> subprocess.Popen[bytes]:
    p = host.popen(sys.executable, "-c", script, *args,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != b"ready":
        err = p.stderr.read() if p.stderr else b""
        host.stop(p)
        raise RuntimeError(f"probe on {host.name} did not start: {err.decode()[-500:]}")
    return p


def _result(host: Host, p: subprocess.Popen[bytes], timeout: float) -> list[int]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        host.stop(p)
        raise RuntimeError(f"probe on {host.name} did not finish in {timeout}s") from None
    if p.returncode != 0:
        raise RuntimeError(f"probe on {host.name} failed: {err.decode()[-500:]}")
    return [int(x) for x in out.split()]


class FrameCounter:
    """Counts frames containing ``mark`` arriving on ``iface`` of ``host`` for ``seconds``."""

    def __init__(self, host: Host, iface: str, seconds: float, mark: bytes) -> None:
        self.host = host
        self.seconds = seconds
        self.proc = _start(host, _COUNT, iface, str(seconds), mark.hex())

    def result(self) -> int:
        return _result(self.host, self.proc, self.seconds + 15)[0]


def arp_storm(host: Host, iface: str, n: int, target_ip: str, sender_ip: str) -> None:
    """Send ``n`` broadcast ARP requests; returns when they are all sent."""
    if not 0 < n <= 100_000:
        raise ValueError("storm size must be 1..100000")
    r = host.run(sys.executable, "-c", _ARP, iface, str(n), check_ip(target_ip),
                 check_ip(sender_ip), timeout=120)
    assert int(r.stdout) == n


class McastReceiver:
    def __init__(self, host: Host, group: str, port: int, local_ip: str, seconds: float) -> None:
        self.host = host
        self.seconds = seconds
        self.proc = _start(host, _MRECV, group, str(port), check_ip(local_ip), str(seconds))

    def result(self) -> tuple[int, int]:
        """(datagrams received, distinct datagrams)."""
        total, distinct = _result(self.host, self.proc, self.seconds + 15)
        return total, distinct


def mcast_send(host: Host, group: str, port: int, local_ip: str, n: int) -> None:
    if not 0 < n <= 10_000:
        raise ValueError("count must be 1..10000")
    host.run(sys.executable, "-c", _MSEND, group, str(port), check_ip(local_ip), str(n),
             timeout=30 + n * 0.01)


class IcmpFrames:
    """The ICMP and ICMPv6 frames arriving on ``iface`` of ``host`` for ``seconds``."""

    def __init__(self, host: Host, iface: str, seconds: float) -> None:
        self.host = host
        self.seconds = seconds
        self.proc = _start(host, _ICMP_FRAMES, iface, str(seconds))

    def frames(self) -> list[bytes]:
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 15)
        except subprocess.TimeoutExpired:
            self.host.stop(self.proc)
            raise RuntimeError(f"capture on {self.host.name} did not finish") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"capture on {self.host.name} failed: {err.decode()[-500:]}")
        return [bytes.fromhex(x.decode()) for x in out.split()]


class Capture:
    """tcpdump on ``iface`` of ``host`` (at most ``limit`` packets); ``count()`` stops it.

    Writes one line per packet to ``path`` so nothing is lost if the capture is cut
    short; counts what the underlay really carried (e.g. direct vs relayed paths).
    """

    def __init__(self, host: Host, iface: str, bpf: str, path: pathlib.Path,
                 limit: int = 2000) -> None:
        self.host = host
        self.path = path
        with open(path, "wb") as out:
            self.proc = host.popen("tcpdump", "-n", "-i", iface, "-c", str(limit),
                                   "--immediate-mode", "-l", bpf,
                                   stdout=out, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # tcpdump needs a moment before it sees packets

    def count(self) -> int:
        time.sleep(0.3)
        if self.proc.poll() is None:
            self.host.stop(self.proc)
        return len(self.path.read_text().splitlines())
