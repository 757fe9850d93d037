"""Traffic generators run inside lab hosts: an integrity-checked TCP transfer."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from sleeve.lab.netns import Host

# Receiver: accept one connection, hash everything until EOF, print "bytes sha256 gap":
# gap is the longest time between two reads that returned data (a stalled flow shows it).
_RECV = r"""
import hashlib, socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3])); h = hashlib.sha256(); n = 0
gap = 0.0; last = None
while True:
    b = c.recv(1 << 16)
    if not b: break
    now = time.monotonic()
    if last is not None: gap = max(gap, now - last)
    last = now
    h.update(b); n += len(b)
print(n, h.hexdigest(), gap, flush=True)
"""
# Sender: deterministic pseudo-random data from a seed, so both ends can hash it.
_SEND = r"""
import hashlib, socket, sys, time
n, seed = int(sys.argv[3]), sys.argv[4].encode()
block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2048))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[5]))
t = time.monotonic(); left = n
while left:
    k = min(left, len(block)); s.sendall(block[:k]); left -= k
s.shutdown(socket.SHUT_WR); s.recv(1); print(time.monotonic() - t, flush=True)
"""


def expected_digest(nbytes: int, seed: str) -> str:
    block = b"".join(hashlib.sha256(seed.encode() + i.to_bytes(4, "big")).digest()
                     for i in range(2048))
    h = hashlib.sha256()
    left = nbytes
    while left:
        k = min(left, len(block))
        h.update(block[:k])
        left -= k
    return h.hexdigest()


def tcp_transfer(src: Host, dst: Host, dst_ip: str, nbytes: int, port: int = 5201,
                 timeout: float = 60.0, seed: str = "sleeve") -> tuple[int, str, float]:
    """Send ``nbytes`` from src to dst_ip:port; return (bytes received, sha256, seconds).

    Compare the digest with :func:`expected_digest` to prove the data arrived intact.
    """
    n, digest, secs, _ = tcp_transfer_gap(src, dst, dst_ip, nbytes, port, timeout, seed)
    return n, digest, secs


def tcp_transfer_gap(src: Host, dst: Host, dst_ip: str, nbytes: int, port: int = 5201,
                     timeout: float = 60.0, seed: str = "sleeve",
                     ) -> tuple[int, str, float, float]:
    """``tcp_transfer`` plus the longest pause between the receiver's reads, in seconds."""
    recv = dst.popen(sys.executable, "-c", _RECV, dst_ip, str(port), str(timeout),
                     stdout=subprocess.PIPE)
    assert recv.stdout is not None
    if recv.stdout.readline().strip() != b"ready":
        raise RuntimeError("transfer receiver failed to start")
    try:
        r = src.run(sys.executable, "-c", _SEND, dst_ip, str(port), str(nbytes), seed,
                    str(timeout), timeout=timeout + 5)
        secs = float(r.stdout.strip())
        out, _ = recv.communicate(timeout=timeout)
    finally:
        if recv.poll() is None:
            dst.stop(recv)
    n, digest, gap = out.decode().split()
    return int(n), digest, secs, float(gap)
