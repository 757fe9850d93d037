"""Where a flood's cost goes: goodput and CPU per flood component, interleaved.

Two routers (a, b) linked on one lab switch, a flooder on a third host c. Each round
runs, in order, an unflooded transfer and one transfer under each flood variant
(``MODES``); per transfer it records the goodput and the CPU time (from /proc) of
router a, router b and the flooder, and the machine's softirq and busy time
(/proc/stat, all CPUs: other load on the machine shows up here too). Medians and
ranges over the rounds. Needs root; run under the lab lock:

    flock /tmp/sleeve-lab.lock python3 -m bench.flood_cost --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

from sleeve.lab import Lab, flood
from sleeve.lab.netns import Host
from sleeve.lab.routers import Router, established_with, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

A, B, C = "198.18.50.1", "198.18.50.2", "198.18.50.3"
A_OV, B_OV = "198.19.50.1", "198.19.50.2"
HZ = os.sysconf("SC_CLK_TCK")

# name -> (junk datagrams/s, connects/s, slow handshakes held, connects at most, generator)
# "-elsewhere": the same flood at host d (no router; its firewall drops the junk), the
# control: what the flood costs the transfer when sleeve never sees it.
MODES: dict[str, tuple[float, float, int, int, str] | None] = {
    "none": None,
    "mixed-python": (20000, 100, 64, 1 << 30, "python"),
    "idle-python": (0, 0, 0, 0, "python"),
    "junk-python": (20000, 0, 0, 0, "python"),
    "connects-python": (0, 100, 0, 1 << 30, "python"),
    "slow-python": (0, 100, 64, 64, "python"),
    "mixed-cheap": (20000, 100, 64, 1 << 30, "cheap"),
    "idle-cheap": (0, 0, 0, 0, "cheap"),
    "junk-cheap": (20000, 0, 0, 0, "cheap"),
    "connects-cheap": (0, 100, 0, 1 << 30, "cheap"),
    "slow-cheap": (0, 100, 64, 64, "cheap"),
    "mixed-elsewhere": (20000, 100, 64, 1 << 30, "cheap"),
    "junk-elsewhere": (20000, 0, 0, 0, "cheap"),
}
D = "198.18.50.4"
_DROP_JUNK = """
table inet slv_fc {
  chain in { type filter hook input priority 0; policy accept; udp dport 6783 drop; }
}
"""


def machine() -> tuple[int, int, int]:
    """(busy, softirq, steal) jiffies over all CPUs."""
    f = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f[:8]) - f[3] - f[4], f[6], f[7]


def measure(a: Host, b: Host, pids: dict[str, int], n: int) -> dict[str, float]:
    t0 = {k: flood.cpu_seconds(p) for k, p in pids.items()}
    m0 = machine()
    w0 = time.monotonic()
    got, digest, secs = tcp_transfer(a, b, B_OV, n, timeout=60)
    wall = time.monotonic() - w0
    m1 = machine()
    assert (got, digest) == (n, expected_digest(n, "sleeve"))
    out = {k: (flood.cpu_seconds(p) - t0[k]) / wall * 100 for k, p in pids.items()}
    out["mbit"] = n * 8 / secs / 1e6
    out["busy"] = (m1[0] - m0[0]) / HZ / wall * 100
    out["steal"] = (m1[2] - m0[2]) / HZ / wall * 100
    out["softirq"] = (m1[1] - m0[1]) / HZ / wall * 100
    return out


def measure_quiet(pids: dict[str, int], secs: float) -> dict[str, float]:
    """CPU over ``secs`` with no transfer: what the flood alone costs each process."""
    t0 = {k: flood.cpu_seconds(p) for k, p in pids.items()}
    m0 = machine()
    time.sleep(secs)
    m1 = machine()
    out = {f"q{k}": (flood.cpu_seconds(p) - t0[k]) / secs * 100 for k, p in pids.items()}
    out["qsoftirq"] = (m1[1] - m0[1]) / HZ / secs * 100
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=100_000_000)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--quiet", type=float, default=2.0,
                    help="seconds of CPU sampling with the flood but no transfer")
    args = ap.parse_args()
    modes = args.modes.split(",")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with Lab() as lab:
        sw = lab.switch()
        a, b, c, d = (lab.host(x) for x in "abcd")
        for h, ip in ((a, A), (b, B), (c, C), (d, D)):
            lab.connect(h, sw, f"{ip}/24")
        d.nft(_DROP_JUNK)
        wd = workdir()
        rb = Router(b, ["--ip", f"{B_OV}/24"], wd, "flood pw")
        ra = Router(a, ["--ip", f"{A_OV}/24", B], wd, "flood pw")
        rb.wait(established_with(1), 20, "link")
        ra.wait(established_with(1), 20, "link")
        tcp_transfer(a, b, B_OV, args.bytes)  # warm up
        routers = {"a": ra.status()["pid"], "b": rb.status()["pid"]}
        for r in range(args.rounds):
            # rotated each round: no mode always follows the same one
            for m in modes[r % len(modes):] + modes[:r % len(modes)]:
                spec = MODES[m]
                if spec is None:
                    q = measure_quiet(routers, args.quiet)
                    rows[m].append({**measure(a, b, routers, args.bytes), **q})
                    continue
                udp, conn, slow, cmax, gen = spec
                p = flood.start(c, D if m.endswith("-elsewhere") else B, 30, udp, conn, slow,
                                cmax, gen)
                try:
                    time.sleep(2.0)  # slow handshakes in place, flood at its rate
                    pids = {**routers, "flooder": p.pid}
                    q = measure_quiet(pids, args.quiet)
                    rows[m].append({**measure(a, b, pids, args.bytes), **q})
                finally:
                    c.stop(p)
            print(f"round {r + 1} done", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    base = statistics.median(x["mbit"] for x in rows[modes[0]])
    keys = ["mbit", "a", "b", "flooder", "softirq", "busy", "steal", "qb", "qflooder",
            "qsoftirq"]
    print(f"\n{'mode':16}{'ratio':>7}" + "".join(f"{k:>20}" for k in keys))
    for m in modes:
        cells = []
        for k in keys:
            v = [x.get(k, 0.0) for x in rows[m]]
            cells.append(f"{statistics.median(v):6.1f} [{min(v):4.0f}-{max(v):4.0f}]")
        ratio = statistics.median(x["mbit"] for x in rows[m]) / base
        print(f"{m:16}{ratio:7.2f}" + "".join(f"{c:>20}" for c in cells))
    print("\nmbit: goodput, Mbit/s; a, b, flooder: process CPU % during the transfer; "
          "softirq, busy: % of one CPU, whole machine; q*: the same over --quiet seconds "
          "of flood without a transfer; median [min-max] over the rounds")


if __name__ == "__main__":
    main()
