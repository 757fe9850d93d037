"""Where one ping's round trip goes through two sleeve routers: ``python3 -m bench.ping_trace``.

    flock /tmp/sleeve-lab.lock python3 -m bench.ping_trace --out /tmp/ping-trace

Builds bench.e2e's two-host lab with encrypted sleeve, pings 300 times untraced, then
50 times while ``perf trace`` records both routers' data-path system calls (one perf
process for both, so one clock), then 300 times untraced again. The trace is cut into
the steps of each ping (a: TAP read -> sendto; b: recvmsg -> TAP writev -> TAP read ->
sendto; a: recvmsg -> TAP writev) and the median of each step is printed. Tracing
costs ~10-20 us per system call, so the traced round trip is longer than the untraced
one; the steps between system calls (Python) are what it is for.

``--pieces`` times the lone-frame egress path's pieces (read, MAC lookup, link checks,
learn, frame record, seal, sendto, the EAGAIN read) one by one on a cold CPU, no lab.

``--cold`` instead times, without a lab, the Python of one frame's whole path (classify,
pack, seal, open) back to back and after 10 ms asleep: the cost of a lone packet on a
cold CPU, which is what an idle router pays per ping. ``--ticks`` times the same after
10 ms in which a timer kept rehearsing it (or only its AEAD, or other Python) every
1, 2 or 5 ms: how fast the path goes cold, and what keeps it warm.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SYSCALLS = "epoll_wait,epoll_pwait,read,write,readv,writev,recvmsg,recvfrom,sendto,sendmsg"
_LINE = re.compile(r"^\s*([\d.]+) \(\s*([\d.]*) ms\): \S+?/(\d+) (?:\.\.\. \[continued\]: )?"
                   r"(\w+)\(.*?\)\s+= (\S+)")
# The ping's path after a's TAP read of the request (frame 108 bytes with the virtio
# header, datagram 134 bytes): (router, call, return value, step name).
CHAIN = (("a", "sendto", "134", "a_send"), ("b", "recvmsg", "134", "b_recv"),
         ("b", "writev", "108", "b_write"), ("b", "read", "108", "b_read"),
         ("b", "sendto", "134", "b_send"), ("a", "recvmsg", "134", "a_recv"),
         ("a", "writev", "108", "a_write"))
STEPS = (
    ("a: TAP read -> sendto (classify, seal)", "a_read", "a_send"),
    ("a: sendto (kernel path up to b's socket)", "a_send", "a_send_end"),
    ("wake b", "a_send_end", "b_recv"),
    ("b: recvmsg end -> TAP writev (open, deliver)", "b_recv_end", "b_write"),
    ("b: TAP writev (the echo reply is made inside)", "b_write", "b_write_end"),
    ("b: writev end -> TAP read", "b_write_end", "b_read"),
    ("b: TAP read -> sendto (classify, seal)", "b_read", "b_send"),
    ("b: sendto", "b_send", "b_send_end"),
    ("wake a", "b_send_end", "a_recv"),
    ("a: recvmsg end -> TAP writev (open, deliver)", "a_recv_end", "a_write"),
    ("a: TAP writev", "a_write", "a_write_end"),
    ("round trip inside the routers (traced)", "a_read", "a_write_end"),
)


def parse(text: str, pid_a: int, pid_b: int) -> list[dict[str, float]]:
    """Each complete ping's step times (ms, the trace's clock) from ``perf trace`` output."""
    who = {str(pid_a): "a", str(pid_b): "b"}
    ev = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(2) and m.group(3) in who:
            ev.append((float(m.group(1)), float(m.group(2)), who[m.group(3)], m.group(4),
                       m.group(5)))
    ev.sort()
    pings = []
    for i, (t, _d, r, call, ret) in enumerate(ev):
        if (r, call, ret) != ("a", "read", "108"):
            continue
        marks = {"a_read": t}
        j = i + 1
        for wr, wc, wret, name in CHAIN:
            while j < len(ev) and ev[j][2:] != (wr, wc, wret):
                j += 1
            if j >= len(ev):
                break
            marks[name], marks[name + "_end"] = ev[j][0], ev[j][0] + ev[j][1]
            j += 1
        else:
            if marks["a_write_end"] - t < 5.0:  # one ping, not two glued together
                pings.append(marks)
    return pings


def report(pings: list[dict[str, float]]) -> list[str]:
    lines = [f"{len(pings)} pings traced; median (p10..p90) per step, us", "",
             "| step | median | p10..p90 |", "|---|---:|---|"]
    for label, a, b in STEPS:
        v = sorted((m[b] - m[a]) * 1000 for m in pings)
        lines.append(f"| {label} | {statistics.median(v):.0f} | {v[len(v) // 10]:.0f}.."
                     f"{v[9 * len(v) // 10]:.0f} |")
    return lines


def lab(out: pathlib.Path) -> list[str]:
    from bench import e2e
    from bench.e2e_measure import measure_ping
    from sleeve.lab import Lab
    from sleeve.lab.routers import workdir

    wd = workdir("sleeve-ping-trace-")
    res: dict[str, Any] = {}
    with Lab() as lb:
        sw = lb.switch()
        a, b = lb.host("a"), lb.host("b")
        ifs = (lb.connect(a, sw, f"{e2e.A_UL}/24"), lb.connect(b, sw, f"{e2e.B_UL}/24"))
        run = e2e.setup_subject("sleeve", a, b, ifs, wd, None)
        try:
            if not a.wait_ping(e2e.B_OV, timeout=20):
                raise RuntimeError("no ping through sleeve")
            res["untraced_before"] = measure_ping(a, e2e.B_OV, 300)
            pids = dict(run.daemons)
            trace = out / "trace.txt"
            perf = subprocess.Popen(["perf", "trace", "-p", f"{pids['a']},{pids['b']}", "-o",
                                     str(trace), "-e", SYSCALLS])
            try:
                time.sleep(1.0)  # perf attaches
                res["traced"] = measure_ping(a, e2e.B_OV, 50)
                time.sleep(0.3)
            finally:
                perf.terminate()
                perf.wait(10)
            res["untraced_after"] = measure_ping(a, e2e.B_OV, 300)
        finally:
            e2e.teardown_subject(run)
    (out / "pings.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"ping avg/p50/p99 ms: {k} " + "/".join(str(res[k][f]) for f in
                                                      ("avg_ms", "p50_ms", "p99_ms"))
             for k in ("untraced_before", "traced", "untraced_after")]
    return [*lines, "", *report(parse(trace.read_text(), pids["a"], pids["b"]))]


def _frame_path() -> tuple[Callable[[Any, Any], None], tuple[Any, Any], tuple[Any, Any]]:
    """One 98-byte frame's classify + pack + seal + open as a call, with the session pair
    it runs on and a second pair under other keys (a rehearsal's, in ``ticks``)."""
    from bench.test_micro import K1, K2, MAX_BODY, _classify, _setup_node
    from sleeve.forward.batcher import pack
    from sleeve.proto import datagram as dg
    from sleeve.proto.session import DataSession

    frames, macs, links = _setup_node(98)

    def one(tx: Any, rx: Any) -> None:
        for link in _classify(frames[:1], macs, links):
            records, link.pending = link.pending, []
            for body in pack(records, MAX_BODY)[0]:
                d = tx.seal(body)
                rx.open(dg.decode_header(d)[1], d)

    return (one, (DataSession(7, 9, K1, K2, True), DataSession(9, 7, K2, K1, True)),
            (DataSession(7, 9, K2, K1, True), DataSession(9, 7, K1, K2, True)))


def cold() -> list[str]:
    """One 98-byte frame's classify + pack + seal + open, warm and after 10 ms asleep."""
    one, (tx, rx), _ = _frame_path()
    lines = []
    for gap in (0.0, 0.01, 0.0, 0.01):
        took = []
        for _ in range(200):
            if gap:
                time.sleep(gap)
            t = time.perf_counter_ns()
            one(tx, rx)
            took.append(time.perf_counter_ns() - t)
        took.sort()
        lines.append(f"asleep {gap * 1000:4.0f} ms before each: median {took[100] / 1000:6.1f}"
                     f" us, p90 {took[180] / 1000:6.1f} us")
    return lines


def ticks(rounds: int = 3, frames: int = 200) -> list[str]:
    """What keeps the frame path warm over the 10 ms between pings: the same frame's
    Python timed after 10 ms in which a timer every 1, 2 or 5 ms rehearsed it (other
    keys), only its AEAD, or unrelated Python, or nothing (asleep). Modes interleaved
    per round (results/issue23/warm-notes.md)."""
    from sleeve.proto import datagram as dg

    one, (tx, rx), (wtx, wrx) = _frame_path()

    def aead() -> None:
        d = wtx.seal(b"x" * 120)
        wrx.open(dg.decode_header(d)[1], d)

    def other() -> None:
        sum(i for i in range(300))
        str(12345).encode()

    modes: dict[str, tuple[float, Callable[[], None] | None]] = {
        "asleep 10 ms": (0.01, None),
        "rehearsal every 1 ms": (0.001, lambda: one(wtx, wrx)),
        "rehearsal every 2 ms": (0.002, lambda: one(wtx, wrx)),
        "rehearsal every 5 ms": (0.005, lambda: one(wtx, wrx)),
        "its AEAD every 1 ms": (0.001, aead),
        "other Python every 1 ms": (0.001, other),
    }
    got: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, (every, rehearse) in modes.items():
            took = []
            for _ in range(frames):
                end = time.monotonic() + 0.01
                while (left := end - time.monotonic()) > 0:
                    time.sleep(min(every, left))
                    if rehearse is not None and end - time.monotonic() > 0:
                        rehearse()
                t = time.perf_counter_ns()
                one(tx, rx)
                took.append(time.perf_counter_ns() - t)
            got[mode].append(statistics.median(took) / 1000)
    return [f"{mode:24s} median us per frame, per round: "
            + ", ".join(f"{v:.1f}" for v in vals) for mode, vals in got.items()]


def pieces(rounds: int = 300) -> list[str]:
    """The lone-frame egress path (``Egress._lone``) cut into its pieces, each timed on a
    cold CPU: a 6 MB write (other work evicting the caches) and 5 ms asleep before each
    round, as a router woken by one ping every 10 ms meets it. A floor for one Python
    step of a ping: whatever the code around it, these calls remain."""
    import os
    import socket

    from sleeve.links.fake import fake_link
    from sleeve.proto import datagram as dg
    from sleeve.proto.mactable import MacTable

    pc = time.perf_counter_ns
    link = fake_link(b"\x09" * 8)
    link.usable = True
    links = {link.peer: link}
    macs = MacTable()
    dst, src = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")
    macs.learn_remote(dst, link.peer, time.monotonic())
    frame = dst + src + b"\x08\x00" + bytes(84)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    os.set_blocking(r, False)
    junk = [bytearray(1 << 20) for _ in range(6)]
    names = ("read", "MAC lookup", "link checks", "learn source MAC", "frame record", "seal",
             "sendto", "EAGAIN read")
    took: dict[str, list[int]] = {n: [] for n in names}
    try:
        for _ in range(rounds):
            os.write(w, frame)
            for j in junk:
                j[::64] = bytes(len(j) // 64)
            time.sleep(0.005)
            t = [pc()]
            raw = os.read(r, 2000)
            t.append(pc())
            now = time.monotonic()
            owner = macs.lookup(raw[0:6], now)
            t.append(pc())
            lk = links[owner] if owner is not None else link
            assert lk.usable and not lk.over_tcp and not lk.pending
            assert len(raw) + dg.DATAGRAM_OVERHEAD <= lk.pmtu.current
            t.append(pc())
            macs.learn_local(raw[6:12], now)
            t.append(pc())
            body = dg.frame_record(raw)
            t.append(pc())
            data = lk.session.seal(body)
            t.append(pc())
            tx.send(data)
            t.append(pc())
            try:
                os.read(r, 2000)
            except BlockingIOError:
                pass
            t.append(pc())
            rx.recv(2000)
            for i, n in enumerate(names):
                took[n].append(t[i + 1] - t[i])
    finally:
        for fd in (r, w):
            os.close(fd)
        tx.close()
        rx.close()
    lines, total = [], 0.0
    for n in names:
        v = sorted(took[n])
        total += v[len(v) // 2] / 1000
        lines.append(f"{n:18s} cold median {v[len(v) // 2] / 1000:6.1f} us, "
                     f"p75 {v[3 * len(v) // 4] / 1000:6.1f} us")
    lines.append(f"sum of medians {total:.1f} us")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.ping_trace",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/sleeve-ping-trace"))
    p.add_argument("--cold", action="store_true", help="the cold-CPU timing only (no lab)")
    p.add_argument("--ticks", action="store_true",
                   help="what keeps the frame path warm between pings (no lab)")
    p.add_argument("--pieces", action="store_true",
                   help="the lone-frame egress path's pieces, each timed cold (no lab)")
    args = p.parse_args(argv)
    if args.pieces:
        print("\n".join(pieces()))
        return 0
    if args.cold:
        print("\n".join(cold()))
        return 0
    if args.ticks:
        print("\n".join(ticks()))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    print("\n".join(lab(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
