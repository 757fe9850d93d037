"""A paced, bounded flood from a lab host at a router: junk datagrams, connects, slow handshakes.

Used by tests/test_lab_flood.py and bench/flood_cost.py. It runs as its own process in
a lab host (``start``) and prints "datagrams connects" when it ends.

Two generators, the same traffic:

- ``cheap`` (the default): wakes ``TICK`` times a second and hands each tick's junk
  datagrams to the kernel in one ``sendmmsg`` of pre-built messages on a connected
  socket: no Python per datagram, ~50 wake-ups a second.
- ``python``: the generator the flood test used first, one ``sendto`` per datagram from
  a loop that sleeps 1 ms (1,000 wake-ups a second).

Why it matters on the two-core lab box: the flood's own process shares the two cores
with both routers and the TCP endpoints whose goodput is measured, so every wake-up and
Python loop of the flooder is CPU the transfer loses, although sleeve spends nothing on
it (bench/flood_cost.py measures both, per component).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

from sleeve.lab.netns import Host

TICK = 0.02

_FLOOD = r"""
import ctypes, os, signal, socket, sys, time
stop = []  # SIGTERM (flood.stop): end early, and still print the counts
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
udp_rate, conn_rate = float(sys.argv[4]), float(sys.argv[5])
slow_max, conn_max, gen, tick = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8], float(sys.argv[9])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((host, port))
junk = [os.urandom(n) for n in (32, 100, 600, 1400)]
if gen == "cheap":
    # sendmmsg(2) of N pre-built messages: the kernel walks the array, Python does not.
    class Iov(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class Msg(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(Iov)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int), ("len", ctypes.c_uint)]
    N = 1024
    bufs = [ctypes.create_string_buffer(j, len(j)) for j in junk]
    iovs = (Iov * N)(*[Iov(ctypes.addressof(bufs[i % 4]), len(junk[i % 4])) for i in range(N)])
    msgs = (Msg * N)()
    for i in range(N):
        msgs[i].iov = ctypes.pointer(iovs[i]); msgs[i].iovlen = 1
    libc = ctypes.CDLL(None, use_errno=True)
    def send_junk(k):
        done = 0
        while done < k:
            r = libc.sendmmsg(u.fileno(), msgs, min(N, k - done), 0)
            if r <= 0:
                return done + (k - done)  # buffer full (ENOBUFS/EAGAIN): count them as tried
            done += r
        return done
else:
    tick = 0.001
    def send_junk(k):
        for i in range(k):
            try:
                u.send(junk[i % 4])
            except OSError:
                pass
        return k
slow, t0 = [], time.monotonic()
sent = conns = 0; next_drip = t0
def connect():
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    except OSError:
        s.close(); return None
    return s
while (now := time.monotonic()) < t0 + secs and sent < 5_000_000 and not stop:
    due = int((now - t0) * udp_rate) - sent
    if due > 0:
        sent += send_junk(due)
    while conns < min(conn_max, (now - t0) * conn_rate):
        conns += 1
        s = connect()
        if s is None:
            continue
        if len(slow) < slow_max:
            slow.append(s)  # kept open, a byte a second below: a handshake never finishing
        else:
            try:
                s.send(os.urandom(32))
            except OSError:
                pass
            s.close()
    if now >= next_drip:
        next_drip = now + 1.0
        for s in slow:
            try:
                s.send(b"\x00")
            except OSError:
                pass
    time.sleep(tick)
for s in slow:
    s.close()
print(sent, conns, flush=True)
"""


def start(host: Host, dst: str, secs: float, udp_rate: float, conn_rate: float,
          slow_max: int, conn_max: int = 1 << 30, gen: str = "cheap",
          port: int = 6783) -> subprocess.Popen[bytes]:
    """Start the flood from ``host`` at ``dst``:``port`` for at most ``secs`` seconds.

    ``udp_rate`` junk datagrams/s; ``conn_rate`` TCP connects/s, the first ``slow_max``
    held open and dripping a byte a second, the others sending 32 junk bytes and closing;
    at most ``conn_max`` connects. Runs at nice 19. Read "datagrams connects" from stdout.
    """
    if gen not in ("cheap", "python"):
        raise ValueError(f"flood generator must be cheap or python, not {gen!r}")
    return host.popen("nice", "-n", "19", sys.executable, "-c", _FLOOD, dst, str(port),
                      str(secs), str(udp_rate), str(conn_rate), str(slow_max), str(conn_max),
                      gen, str(TICK), stdout=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a flood ``start`` began before its time is up; it still prints its counts."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat), in seconds."""
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
